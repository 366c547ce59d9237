"""Export a personalised BT-LoRA model as a plain peft LoRA adapter folder.

λ is folded into B (B' = B · diag(λ)), so ΔW = scaling · B' A is unchanged; per-module ranks
go into ``rank_pattern`` and per-module alphas into ``alpha_pattern`` (keeping each module's
scaling); modules without ranks are simply not targeted. ``PeftModel.from_pretrained(base,
folder)`` loads the result with no fedp2eft import and reproduces the outputs.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from ..atomic import atomic_folder
from .bt_lora import bt_modules


def plain_lora_state(model: nn.Module, adapter: str = "default") -> dict[str, dict]:
    """Per module: ``{"A", "B" (λ folded in), "r", "alpha"}``."""
    out = {}
    for name, m in bt_modules(model).items():
        a = m.lora_A[adapter].weight.detach()
        b = m.lora_B[adapter].weight.detach() * m.lora_lambda[adapter].detach()[None, :]
        r = a.shape[0]
        out[name] = {"A": a.clone(), "B": b.clone(), "r": r, "alpha": float(m.scaling[adapter]) * r}
    return out


def export_plain_lora(model: nn.Module, base: nn.Module, folder: str | os.PathLike,
                      modules_to_save: list[str] | None = None, adapter: str = "default") -> Path:
    """Write ``folder`` (atomically) as a plain peft LoRA adapter equivalent to ``model``."""
    parts = plain_lora_state(model, adapter)
    if not parts:
        raise ValueError("the model has no BT-LoRA module to export")
    r_max = max(p["r"] for p in parts.values())
    pattern = {re.escape(n): p["r"] for n, p in parts.items()}
    alpha = {re.escape(n): p["alpha"] for n, p in parts.items()}
    cfg = LoraConfig(r=r_max, lora_alpha=r_max, target_modules=list(parts), rank_pattern=pattern,
                     alpha_pattern=alpha, modules_to_save=modules_to_save, lora_dropout=0.0, bias="none")
    plain = get_peft_model(copy.deepcopy(base), cfg)
    named = dict(plain.named_modules())
    with torch.no_grad():
        for n, p in parts.items():
            target = named[f"base_model.model.{n}"]
            target.lora_A[adapter].weight.copy_(p["A"])
            target.lora_B[adapter].weight.copy_(p["B"])
        if modules_to_save:
            src = dict(model.named_parameters())
            for k, v in plain.named_parameters():
                if ".modules_to_save." in k and k in src:
                    v.copy_(src[k])
    folder = Path(folder)
    with atomic_folder(folder) as tmp:
        plain.save_pretrained(tmp, safe_serialization=True)
    return folder
