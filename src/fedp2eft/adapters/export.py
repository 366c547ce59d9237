"""Export a personalised BT-LoRA model as a plain peft LoRA adapter folder (``export_plain_lora``: onto
fedp2eft's classifier), or as a folder stock transformers + peft load (``export_for_transformers``).

λ is folded into B (B' = B · diag(λ)), so ΔW = scaling · B' A is unchanged; per-module ranks
go into ``rank_pattern`` and per-module alphas into ``alpha_pattern`` (keeping each module's
scaling); modules without ranks are simply not targeted. ``PeftModel.from_pretrained(base,
folder)`` loads the result with no fedp2eft import and reproduces the outputs.
"""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from ..atomic import atomic_folder
from .bt_lora import bt_modules


def lora_modules(model: nn.Module, adapter: str = "default") -> dict[str, nn.Module]:
    """A peft model's adapted modules (BT-LoRA or plain LoRA) by their name in the base model."""
    out = dict(bt_modules(model))
    for name, m in model.named_modules():
        if hasattr(m, "lora_A") and adapter in getattr(m, "lora_A", {}) and not hasattr(m, "lora_lambda"):
            out[name.removeprefix("base_model.model.")] = m
    return out


def plain_lora_state(model: nn.Module, adapter: str = "default") -> dict[str, dict]:
    """Per module: ``{"A", "B" (BT-LoRA's λ folded in; plain LoRA's as it is), "r", "alpha"}``."""
    out = {}
    for name, m in lora_modules(model, adapter).items():
        a = m.lora_A[adapter].weight.detach()
        b = m.lora_B[adapter].weight.detach()
        if hasattr(m, "lora_lambda"):
            b = b * m.lora_lambda[adapter].detach()[None, :]
        r = a.shape[0]
        out[name] = {"A": a.clone(), "B": b.clone(), "r": r, "alpha": float(m.scaling[adapter]) * r}
    return out


def plain_peft_model(base: nn.Module, parts: dict[str, dict], modules_to_save: list[str] | None = None,
                     adapter: str = "default") -> nn.Module:
    """A peft LoRA model on a copy of ``base`` holding ``parts`` (``plain_lora_state``'s, keyed by module
    names inside ``base``): one rank and alpha per module through ``rank_pattern`` / ``alpha_pattern``."""
    r_max = max(p["r"] for p in parts.values())
    cfg = LoraConfig(r=r_max, lora_alpha=r_max, target_modules=list(parts),
                     rank_pattern={re.escape(n): p["r"] for n, p in parts.items()},
                     alpha_pattern={re.escape(n): p["alpha"] for n, p in parts.items()},
                     modules_to_save=modules_to_save, lora_dropout=0.0, bias="none")
    plain = get_peft_model(copy.deepcopy(base), cfg)
    named = dict(plain.named_modules())
    with torch.no_grad():
        for n, p in parts.items():
            target = named[f"base_model.model.{n}"]
            target.lora_A[adapter].weight.copy_(p["A"])
            target.lora_B[adapter].weight.copy_(p["B"])
    return plain


def export_plain_lora(model: nn.Module, base: nn.Module, folder: str | os.PathLike,
                      modules_to_save: list[str] | None = None, adapter: str = "default") -> Path:
    """Write ``folder`` (atomically) as a plain peft LoRA adapter equivalent to ``model``."""
    parts = plain_lora_state(model, adapter)
    if not parts:
        raise ValueError("the model has no LoRA module to export")
    plain = plain_peft_model(base, parts, modules_to_save, adapter)
    with torch.no_grad():
        if modules_to_save:
            src = dict(model.named_parameters())
            for k, v in plain.named_parameters():
                if ".modules_to_save." in k and k in src:
                    v.copy_(src[k])
    folder = Path(folder)
    with atomic_folder(folder) as tmp:
        plain.save_pretrained(tmp, safe_serialization=True)
    return folder


LOADING = '''\
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModel, AutoTokenizer

folder = "{folder}"
tok = AutoTokenizer.from_pretrained(f"{{folder}}/base")
base = AutoModel.from_pretrained(f"{{folder}}/base"{base_kwargs})
model = PeftModel.from_pretrained(base, f"{{folder}}/adapter").eval()
head = load_file(f"{{folder}}/head.safetensors")
batch = tok(["a text to classify"], return_tensors="pt", padding=True, truncation=True, max_length={max_length})
with torch.no_grad():
    hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = {pool}
    logits = pooled @ head["weight"].T + head["bias"]
'''
POOL_CODE = {
    "mean": "(hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)",
    "cls": "hidden[:, 0]",
    "last": "hidden[torch.arange(hidden.size(0)), batch['attention_mask'].long().cumsum(1).argmax(1)]",
}


def export_for_transformers(model: nn.Module, base: nn.Module, tokenizer, folder: str | os.PathLike,
                            labels: list[str], max_length: int, adapter: str = "default") -> Path:
    """Write ``folder`` (atomically) so that stock transformers + peft load the personalised classifier:
    ``base/`` (the client's base backbone and tokenizer: ``AutoModel.from_pretrained``), ``adapter/`` (a
    plain LoRA adapter on the backbone's own module names, λ folded into B, each module's rank and alpha in
    ``rank_pattern`` / ``alpha_pattern``: ``PeftModel.from_pretrained``), ``head.safetensors`` (the
    personalised head, any adapter on it merged) with ``head.json`` (pooling, labels), and ``LOAD.md``
    (the exact lines). A stock ``AutoModelForSequenceClassification`` would pool through BERT's
    CLS pooler, which multilingual-e5 never trained, so the head is applied after the pooling the
    model was personalised with."""
    parts = plain_lora_state(model, adapter)
    inner = {n[len("backbone."):]: p for n, p in parts.items() if n.startswith("backbone.")}
    if not inner:
        raise ValueError("the model has no LoRA module on its backbone to export")
    plain = plain_peft_model(base.backbone, inner, None, adapter)
    merged = copy.deepcopy(model).merge_and_unload()  # the head as personalised (trained or adapted)
    head = {"weight": merged.head.weight.detach().clone(), "bias": merged.head.bias.detach().clone()}
    from ..atomic import save_tensors

    folder = Path(folder)
    with atomic_folder(folder) as tmp:
        base.backbone.save_pretrained(tmp / "base", safe_serialization=True)
        tokenizer.save_pretrained(tmp / "base")
        plain.save_pretrained(tmp / "adapter", safe_serialization=True)
        save_tensors(tmp / "head.safetensors", head)
        (tmp / "head.json").write_text(json.dumps({"pooling": base.pooling, "labels": list(labels)}, indent=1))
        # a BERT backbone saved without its pooler (e5 has none) must be built without one too
        kwargs = ", add_pooling_layer=False" if getattr(base.backbone, "pooler", "n/a") is None else ""
        code = LOADING.format(folder=folder.resolve(), pool=POOL_CODE[base.pooling], max_length=max_length,
                              base_kwargs=kwargs)
        (tmp / "LOAD.md").write_text(f"# Loading this personalised classifier (no fedp2eft needed)\n\n```python\n{code}```\n")
    return folder
