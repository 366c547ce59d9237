"""Two ways a process keeps less in memory while it trains, neither changing what it computes.

- ``ReleasableTokenizer``: a hub or folder tokenizer loaded when first used and dropped by ``release``.
  XLM-R's fast tokenizer (e5-small's; 250,002 Unigram pieces) holds ~250 MiB, most of it the piece trie,
  and a client's training needs none of it once the client's rows are encoded
  (``setup.federation.client_task`` encodes each client once per process, then releases it). Loading
  it again costs ~0.6 s on 2 cores. Decoding does not load it: ``decode`` on a released tokenizer uses a
  decode-only tokenizer built from the folder's ``tokenizer.json`` without its BPE merges (Gemma-3's:
  ~64 MiB held instead of ~580 MiB, measured by hand; the merges only matter to encoding), where the folder has one.
- ``set_gradient_checkpointing``: the transformer's layers recompute their activations in the backward
  pass instead of keeping them (Hugging Face's gradient checkpointing, non-reentrant, dropout's random
  state replayed), so a training step holds one layer's activations instead of all of them, for one
  more forward pass per step (``experiment.gradient_checkpointing``).

Measured in ``benchmarks/memory.py``.
"""

from __future__ import annotations

import contextlib
import gc
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

# what a tokenizer folder holds (Hugging Face's file names), copied by ``ReleasableTokenizer.save_pretrained``
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "chat_template.jinja", "chat_template.json", "vocab.txt", "vocab.json", "merges.txt",
                   "sentencepiece.bpe.model", "spiece.model", "tokenizer.model")


class ReleasableTokenizer:
    """A tokenizer made by ``load()`` on first use; every attribute and call is the loaded tokenizer's.
    ``release()`` drops it (and gives its memory back) unless a ``held`` block is using it. ``folder``:
    the local folder it loads from, if any (``save_pretrained`` then copies its files, loading nothing)."""

    def __init__(self, load: Callable[[], Any], key: str, folder: str | Path | None = None):
        self._load, self.key, self._tokenizer, self._holds = load, key, None, 0
        self._folder = Path(folder) if folder is not None else None
        self._decoder: Any = None  # the decode-only tokenizer (False: the folder cannot give one)

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        """The loaded tokenizer's ``decode``; while released, the same text from a decode-only tokenizer
        (``decoder``), where the folder gives one."""
        if self._tokenizer is None and self.decoder() is not None:
            return self._decoder.decode(list(ids), skip_special_tokens=skip_special_tokens)
        return self.loaded.decode(ids, skip_special_tokens=skip_special_tokens)

    def decoder(self):
        """A ``tokenizers.Tokenizer`` with the folder's vocabulary, special tokens and decoder but no BPE
        merges, or None: no folder ``tokenizer.json``, a model other than BPE, or one whose decoded text
        transformers cleans up afterwards (``clean_up_tokenization_spaces``)."""
        if self._decoder is None:
            self._decoder = False
            path = self._folder / "tokenizer.json" if self._folder is not None else None
            config = self._folder / "tokenizer_config.json" if self._folder is not None else None
            if path is not None and path.is_file() and config.is_file() and \
                    not json.loads(config.read_text()).get("clean_up_tokenization_spaces", False):
                spec = json.loads(path.read_text())
                if spec.get("model", {}).get("type") == "BPE":
                    from tokenizers import Tokenizer

                    spec["model"]["merges"] = []
                    self._decoder = Tokenizer.from_str(json.dumps(spec))
                del spec
                _give_back()  # the parsed JSON's objects
        return self._decoder or None

    def save_pretrained(self, dest: str | Path) -> None:
        """The tokenizer's files in ``dest``: copied from its folder while it is not loaded (a base model
        written after training needs no 250 MiB load for it), else the loaded tokenizer's own save."""
        files = [self._folder / n for n in TOKENIZER_FILES] if self._folder is not None else []
        files = [f for f in files if f.is_file()]
        if self._tokenizer is not None or not any(f.name == "tokenizer_config.json" for f in files):
            self.loaded.save_pretrained(dest)
            return
        for f in files:
            shutil.copyfile(f, Path(dest) / f.name)

    @property
    def loaded(self):
        if self._tokenizer is None:
            self._tokenizer = self._load()
        return self._tokenizer

    def __call__(self, *args, **kwargs):
        return self.loaded(*args, **kwargs)

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.loaded, name)

    def __len__(self) -> int:
        return len(self.loaded)

    def release(self) -> None:
        if self._tokenizer is not None and self._holds == 0:
            self._tokenizer = None
            _give_back()

    def __repr__(self) -> str:
        return f"ReleasableTokenizer({self.key!r}, {'loaded' if self._tokenizer is not None else 'released'})"


def _give_back() -> None:
    from ..memory import trim_freed_memory

    gc.collect()
    trim_freed_memory()


@contextlib.contextmanager
def held(tokenizer):
    """Keep ``tokenizer`` loaded for the block (nested blocks share one load); a ``ReleasableTokenizer``
    is released when the outermost block ends. Any other tokenizer is used as it is."""
    if not isinstance(tokenizer, ReleasableTokenizer):
        yield tokenizer
        return
    tokenizer._holds += 1
    try:
        yield tokenizer
    finally:
        tokenizer._holds -= 1
        tokenizer.release()


def tokenizer_key(tokenizer) -> str:
    """What identifies a tokenizer's encodings (a memo's key)."""
    if isinstance(tokenizer, ReleasableTokenizer):
        return tokenizer.key
    return f"{type(tokenizer).__name__}:{getattr(tokenizer, 'name_or_path', '')}:{id(tokenizer)}"


def _transformer(model: nn.Module) -> nn.Module:
    """The transformers model inside ``model``: its ``backbone`` (the task wrappers) or itself, unwrapped
    from a peft wrapper."""
    hf = getattr(model, "backbone", model)
    return hf.get_base_model() if hasattr(hf, "get_base_model") else hf


def set_gradient_checkpointing(model: nn.Module, on: bool) -> bool:
    """Switch gradient checkpointing of ``model``'s transformer (``model.backbone``, or ``model``) on or
    off; copies made afterwards (``copy.deepcopy``) inherit it. Returns whether the transformer supports
    it (a model that does not trains as before)."""
    hf = _transformer(model)
    if not getattr(hf, "supports_gradient_checkpointing", False):
        return False
    if hasattr(hf, "activation_checkpointing_enable"):  # transformers >= 5.2x names it so
        active, enable, disable = hf.is_activation_checkpointing, hf.activation_checkpointing_enable, \
            hf.activation_checkpointing_disable
        kwargs = {"activation_checkpointing_kwargs": {"use_reentrant": False}}
    else:
        active, enable, disable = hf.is_gradient_checkpointing, hf.gradient_checkpointing_enable, \
            hf.gradient_checkpointing_disable
        kwargs = {"gradient_checkpointing_kwargs": {"use_reentrant": False}}
    if on and not active:
        enable(**kwargs)
    elif not on and active:
        disable()
    return True


def row_read_tables(model: nn.Module) -> list[torch.Tensor]:
    """The tensors a client reads only rows of: the input embedding table (e5-small's 250,037 rows are 384 MB,
    a client's rows touch a few thousand), unless the output projection shares it (a tied causal LM reads
    all of it every step). Their file pages are given back after each personalised client
    (``memory.release_file_pages``), so the rows of a pool's clients never accumulate."""
    hf = _transformer(model)
    inputs = hf.get_input_embeddings() if hasattr(hf, "get_input_embeddings") else None
    if inputs is None or not isinstance(getattr(inputs, "weight", None), torch.Tensor):
        return []
    outputs = hf.get_output_embeddings() if hasattr(hf, "get_output_embeddings") else None
    if outputs is not None and getattr(outputs, "weight", None) is not None and \
            outputs.weight.data_ptr() == inputs.weight.data_ptr():
        return []
    return [inputs.weight]

