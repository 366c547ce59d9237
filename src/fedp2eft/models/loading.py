"""Model loading by packaged short name, local folder or hub id, for classification or causal LM."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from . import packaged
from .classifier import SequenceClassifier
from .memory_saving import ReleasableTokenizer
from .tiny import TINY, build_tiny


def _quiet_transformers() -> None:
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from: ``kind`` is ``tiny``, ``packaged``, ``folder`` or ``hub``."""

    kind: str
    ref: str


def resolve(spec: str) -> ModelSource:
    if spec in TINY:
        return ModelSource("tiny", spec)
    if spec in packaged.BUILDERS:
        if not packaged.is_prepared(spec):
            raise UserError(f"packaged model {spec!r} is not prepared; run: fedp2eft prepare-models {spec}")
        return ModelSource("packaged", str(packaged.packaged_path(spec)))
    p = Path(spec).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise UserError(f"model folder {p} has no config.json")
        return ModelSource("folder", str(p))
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise UserError(f"model folder not found: {spec}")
    if spec.count("/") != 1:
        raise UserError(
            f"unknown model {spec!r}: not a packaged model {sorted(packaged.BUILDERS)}, "
            f"a tiny test model {list(TINY)}, a local folder, or a hub id of the form owner/name"
        )
    return ModelSource("hub", spec)


def _from_pretrained(loader, ref: str, **kwargs):
    try:
        return loader.from_pretrained(ref, **kwargs)
    except OSError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot load model {ref!r}: {first}") from None


def is_decoder(config) -> bool:
    archs = getattr(config, "architectures", None) or []
    return bool(getattr(config, "is_decoder", False)) or any("CausalLM" in a for a in archs) or config.model_type in (
        "llama", "gemma", "gemma2", "gemma3", "gemma3_text", "mistral", "qwen2", "gpt2", "phi3",
    )


def load_tokenizer(spec: str):
    """The model's tokenizer: the tiny test models' cached one, else a ``ReleasableTokenizer`` that loads
    the hub or folder tokenizer when used (``models.memory_saving``)."""
    _quiet_transformers()
    src = resolve(spec)
    if src.kind == "tiny":
        return packaged.xlmr_tokenizer()
    folder = Path(src.ref).expanduser()
    return ReleasableTokenizer(lambda: _hub_tokenizer(src.ref), key=str(src.ref),
                               folder=folder if folder.is_dir() else None)


def _hub_tokenizer(ref: str):
    from transformers import AutoTokenizer

    tok = _from_pretrained(AutoTokenizer, ref)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_backbone(spec: str):
    """Return ``(backbone, tokenizer)``: the bare transformer without any task head."""
    _quiet_transformers()
    src = resolve(spec)
    if src.kind == "tiny":
        return build_tiny(spec)
    from transformers import AutoConfig, AutoModel

    config = _from_pretrained(AutoConfig, src.ref)
    kwargs = {"add_pooling_layer": False} if config.model_type in ("bert", "xlm-roberta", "roberta") else {}
    model = _from_pretrained(AutoModel, src.ref, **kwargs)
    return model, load_tokenizer(spec)


def load_classifier(spec: str, num_labels: int, pooling: str | None = None):
    """Return ``(SequenceClassifier, tokenizer)`` with a fresh ``num_labels``-way head."""
    if num_labels < 2:
        raise UserError(f"a classifier needs at least 2 labels, got {num_labels}")
    backbone, tok = load_backbone(spec)
    saved = Path(spec).expanduser() / "fedp2eft_classifier.json"
    if saved.is_file():  # a base model written by fedp2eft (e.g. Standard FL): its trained head
        import json

        from safetensors.torch import load_file

        meta = json.loads(saved.read_text())
        if meta["num_labels"] != num_labels:
            raise UserError(f"base model {spec} has {meta['num_labels']} labels, the dataset {num_labels}")
        model = SequenceClassifier(backbone, num_labels, pooling=pooling or meta["pooling"])
        model.head.load_state_dict(load_file(str(saved.parent / "head.safetensors")))
        return model, tok
    if pooling is None:
        pooling = "last" if is_decoder(backbone.config) else "mean"
    return SequenceClassifier(backbone, num_labels, pooling=pooling), tok


def load_causal_lm(spec: str):
    """Return ``(AutoModelForCausalLM, tokenizer)``."""
    _quiet_transformers()
    src = resolve(spec)
    if src.kind == "tiny":
        if spec != "tiny-llama":
            raise UserError(f"{spec!r} is an encoder; a causal LM needs a decoder such as tiny-llama")
        return build_tiny(spec, causal_lm=True)
    from transformers import AutoModelForCausalLM

    model = _from_pretrained(AutoModelForCausalLM, src.ref)
    return model, load_tokenizer(spec)
