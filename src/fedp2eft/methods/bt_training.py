"""BT-LoRA training steps shared by FedP²EFT and the per-client BT-LoRA baseline.

- ``train_lambdas``: stage 1, eq. (1): BT-LoRA with r_init ranks on all linear layers, λ
  initialised from a given value (1e-4, or the PSG's λ̂), trained with cross-entropy plus the
  priors of eq. (4)-(5) (AdamW, lr_λ 0.01, lr_AB 1e-4, 2 epochs); returns the trained λ.
- ``finetune_pruned``: inference (Alg. 2): keep the global top-(r·L) λ, build BT-LoRA only where
  a module keeps ranks (per-module rank via ``rank_pattern``), fresh A (random) and B (= 0), the
  kept λ frozen; fine-tune on cross-entropy only; merge. Each module's scaling is 2 (alpha = 2·r_l,
  as the LoRA baseline's alpha 2r), so λ alone carries the learned per-rank scale.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass

import torch
from peft import get_peft_model
from torch import nn

from ..adapters import bt_penalty, prune_to_budget
from ..adapters.bt_lora import bt_lora_config, lambdas_by_module, set_lambdas
from .batches import EncodedData
from .training import linear_module_names, predict, train_classifier


@dataclass(frozen=True)
class BTSettings:
    r_init: int = 32
    lora_alpha: int = 64
    alpha_s: float = 100.0
    alpha_p: float = 0.01
    lambda_lr: float = 0.01
    lr: float = 1e-4
    head_lr: float = 1e-4
    epochs: int = 2
    batch_size: int = 32
    seed: int = 0


def _split_params(model: nn.Module) -> tuple[list, list, list]:
    lam, ab, head = [], [], []
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (lam if "lora_lambda" in n else ab if "lora_" in n else head).append(p)
    return lam, ab, head


def train_lambdas(base: nn.Module, data: EncodedData, init: dict[str, torch.Tensor] | float,
                  s: BTSettings) -> tuple[dict[str, torch.Tensor], list[float]]:
    """Stage 1: learn λ (and A, B, head) on one client; returns (λ by module, step losses)."""
    torch.manual_seed(s.seed)
    targets = linear_module_names(base)
    init_value = init if isinstance(init, float) else 1e-4
    cfg = bt_lora_config(targets, r=s.r_init, lora_alpha=s.lora_alpha, init_lambda=init_value,
                         modules_to_save=["head"])
    model = get_peft_model(copy.deepcopy(base), cfg)
    if isinstance(init, dict):
        set_lambdas(model, init)
    lam, ab, head = _split_params(model)
    n = len(data)
    losses = train_classifier(
        model,
        [{"params": lam, "lr": s.lambda_lr}, {"params": ab, "lr": s.lr}, {"params": head, "lr": s.head_lr}],
        data, s.epochs, s.batch_size, s.seed,
        extra_loss=lambda m: bt_penalty(m, n, s.alpha_s, s.alpha_p),
    )
    return lambdas_by_module(model), losses


def pruned_model(base: nn.Module, kept: dict[str, torch.Tensor]) -> nn.Module:
    """BT-LoRA with the kept λ frozen, fresh A/B, only on modules that keep ranks."""
    ranks = {n: int(v.numel()) for n, v in kept.items()}
    r_max = max(ranks.values())
    cfg = bt_lora_config(
        list(kept), r=r_max, lora_alpha=2 * r_max,
        rank_pattern={re.escape(n): r for n, r in ranks.items()},
        alpha_pattern={re.escape(n): 2 * r for n, r in ranks.items()},
        modules_to_save=["head"],
    )
    model = get_peft_model(copy.deepcopy(base), cfg)
    set_lambdas(model, kept, requires_grad=False)
    return model


def finetune_pruned_model(base: nn.Module, train: EncodedData, lambdas: dict[str, torch.Tensor], budget: int,
                          s: BTSettings) -> nn.Module:
    """Alg. 2 steps 2-3: prune λ to the budget and fine-tune the resulting LoRA (unmerged peft model)."""
    torch.manual_seed(s.seed)
    model = pruned_model(base, prune_to_budget(lambdas, budget))
    _, ab, head = _split_params(model)
    train_classifier(model, [{"params": ab, "lr": s.lr}, {"params": head, "lr": s.head_lr}],
                     train, s.epochs, s.batch_size, s.seed)
    return model


def finetune_pruned(base: nn.Module, train: EncodedData, test: EncodedData, lambdas: dict[str, torch.Tensor],
                    budget: int, s: BTSettings, eval_batch_size: int = 64) -> list[int]:
    """Fine-tune at the budget, merge, and predict the test split."""
    model = finetune_pruned_model(base, train, lambdas, budget, s)
    return predict(model.merge_and_unload(), test, eval_batch_size)
