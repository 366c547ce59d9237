"""BT-LoRA training steps shared by FedP²EFT and the per-client BT-LoRA baseline.

- ``train_lambdas``: stage 1, eq. (1): BT-LoRA with r_init ranks on every adapted module, λ
  initialised from a given value (1e-4, or the PSG's λ̂), trained with cross-entropy plus the
  priors of eq. (4)-(5) (AdamW, lr_λ 0.01, lr_AB 1e-4, 2 epochs); returns the trained λ, clamped
  to [1e-4, 1000] (the range the priors and the PSG use; the authors meant to clamp here too, but
  their clamp writes into a copy and does nothing).
- ``finetune_pruned``: inference (Alg. 2): keep the global top-(r·L) λ, build BT-LoRA only where
  a module keeps ranks (per-module rank via ``rank_pattern``), A fresh (or, with ``lora_a_seed``,
  the kept rows of the fixed A that λ was learned on) and B = 0, the kept λ frozen; fine-tune on
  cross-entropy only; merge. Each module's scaling is ``lora_alpha / r_init`` (the authors keep
  64 / 32 = 2 for every pruned module), so λ alone carries the learned per-rank scale.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

import torch
from peft import get_peft_model
from torch import nn

from ...adapters import apply_fixed_a, bt_penalty, select_ranks
from ...adapters.bt_lora import bt_lora_config, lambdas_by_module, set_lambdas
from ...adapters.priors import LAMBDA_MAX, LAMBDA_MIN
from ...errors import require
from ...tasks import Task
from ...training import Recipe, copy_sharing_embeddings, train_model
from ...training.batches import EncodedData


@dataclass(frozen=True)
class BTPrior:
    """BT-LoRA's layer and priors (its keys sit in ``[fedp2eft]``; defaults the authors')."""

    r_init: int = 32  # ranks per module in stage 1; one PSG serves every budget <= r_init
    lora_alpha: int = 64  # BT-LoRA scaling alpha / r_init (kept for pruned modules)
    alpha_s: float = 100.0  # significance prior weight (eq. 4)
    alpha_p: float = 0.01  # λ prior weight (eq. 5)
    lambda_lr: float = 0.01  # λ's AdamW rate in stage 1

    def __post_init__(self) -> None:
        for k in ("r_init", "lora_alpha"):
            require(getattr(self, k) >= 1, k, "must be >= 1")
        require(self.lambda_lr > 0, "lambda_lr", "must be > 0")
        for k in ("alpha_s", "alpha_p"):
            require(getattr(self, k) >= 0, k, "must be >= 0")


@dataclass(frozen=True)
class BTSettings:
    """A BT-LoRA training: its layer and priors, and the recipe it fine-tunes with — stage 1's (eq. 1: the
    ``[fedp2eft]`` rates, epochs and batch) in the PSG's and the per-client baseline's λ training, the
    personalisation's (``[personalise]``) in ``finetune_pruned`` (``personalisation_settings``)."""

    prior: BTPrior = field(default_factory=BTPrior)
    recipe: Recipe = field(default_factory=Recipe)


def _split_params(model: nn.Module) -> tuple[list, list, list]:
    lam, ab, head = [], [], []
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (lam if "lora_lambda" in n else ab if "lora_" in n else head).append(p)
    return lam, ab, head


def stage1_model(base: nn.Module, init: dict[str, torch.Tensor] | float, s: BTSettings, seed: int,
                 problem: Task) -> nn.Module:
    """BT-LoRA with r_init ranks on every adapted module: λ from ``init``, B = 0, A fresh (seeded by
    ``seed``) or the fixed A of the recipe's ``lora_a_seed`` (the same in every round and on every client)."""
    torch.manual_seed(seed)
    r = s.recipe
    targets = problem.adapted_modules(base, r.head)
    init_value = init if isinstance(init, float) else 1e-4
    cfg = bt_lora_config(targets, r=s.prior.r_init, lora_alpha=s.prior.lora_alpha, init_lambda=init_value,
                         modules_to_save=problem.saved_modules(r.head))
    model = get_peft_model(copy_sharing_embeddings(base), cfg)
    if r.lora_a_seed >= 0:
        apply_fixed_a(model, r.lora_a_seed)
    if isinstance(init, dict):
        set_lambdas(model, init)
    return model


def train_lambdas(base: nn.Module, data: EncodedData, init: dict[str, torch.Tensor] | float,
                  s: BTSettings, seed: int, problem: Task) -> tuple[dict[str, torch.Tensor], list[float]]:
    """Stage 1: learn λ (and A, B, a trained head) on one client; returns (λ by module, step losses)."""
    model = stage1_model(base, init, s, seed, problem)
    lam, ab, head = _split_params(model)
    n, r, prior = len(data), s.recipe, s.prior
    losses = train_model(
        model,
        [{"params": lam, "lr": prior.lambda_lr}, {"params": ab, "lr": r.lr}, {"params": head, "lr": r.head_lr}],
        data, r.epochs, r.batch_size, seed, r.weight_decay,
        extra_loss=lambda m: bt_penalty(m, n, prior.alpha_s, prior.alpha_p), max_grad_norm=r.max_grad_norm,
        loss=problem.loss,
    )
    return {k: v.clamp(LAMBDA_MIN, LAMBDA_MAX).cpu() for k, v in lambdas_by_module(model).items()}, losses


def pruned_model(base: nn.Module, lambdas: dict[str, torch.Tensor], budget: int, s: BTSettings,
                 problem: Task, select_by: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """BT-LoRA at the budget: the kept λ frozen, B = 0, A fresh or the kept rows of the fixed A,
    only on modules that keep ranks; scaling lora_alpha / r_init everywhere. ``select_by`` (default λ):
    the scores whose global top-(r·L) decide which ranks are kept (e.g. ``width_free_scores``)."""
    index = select_ranks(lambdas if select_by is None else select_by, budget)
    kept = {n: lambdas[n].detach().flatten().cpu()[ids] for n, ids in index.items()}
    ranks = {n: int(v.numel()) for n, v in kept.items()}
    scaling = s.prior.lora_alpha / s.prior.r_init
    r_max = max(ranks.values())
    cfg = bt_lora_config(
        list(kept), r=r_max, lora_alpha=scaling * r_max,
        rank_pattern={re.escape(n): r for n, r in ranks.items()},
        alpha_pattern={re.escape(n): scaling * r for n, r in ranks.items()},
        modules_to_save=problem.saved_modules(s.recipe.head),
    )
    model = get_peft_model(copy_sharing_embeddings(base), cfg)
    if s.recipe.lora_a_seed >= 0:
        apply_fixed_a(model, s.recipe.lora_a_seed, index)
    set_lambdas(model, kept, requires_grad=False)
    return model


def finetune_pruned_model(base: nn.Module, train: EncodedData, lambdas: dict[str, torch.Tensor], budget: int,
                          s: BTSettings, seed: int, problem: Task,
                          select_by: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """Alg. 2 steps 2-3: prune λ to the budget and fine-tune the resulting LoRA (unmerged peft model)."""
    torch.manual_seed(seed)
    model = pruned_model(base, lambdas, budget, s, problem, select_by)
    _, ab, head = _split_params(model)
    r = s.recipe
    train_model(model, [{"params": ab, "lr": r.lr}, {"params": head, "lr": r.head_lr}],
                train, r.epochs, r.batch_size, seed, r.weight_decay, max_grad_norm=r.max_grad_norm, loss=problem.loss)
    return model


def finetune_pruned(base: nn.Module, train: EncodedData, test: EncodedData, lambdas: dict[str, torch.Tensor],
                    budget: int, s: BTSettings, seed: int, eval_batch_size: int, problem: Task,
                    select_by: dict[str, torch.Tensor] | None = None) -> list:
    """Fine-tune at the budget, merge, and predict the test split."""
    model = finetune_pruned_model(base, train, lambdas, budget, s, seed, problem, select_by)
    return problem.predict(model.merge_and_unload(), test, eval_batch_size)


def module_widths(base: nn.Module, names: list[str]) -> dict[str, int]:
    """Each adapted module's output width d_out."""
    return {n: int(base.get_submodule(n).weight.shape[0]) for n in names}


def width_free_scores(lambdas: dict[str, torch.Tensor], widths: dict[str, int]) -> dict[str, torch.Tensor]:
    """λ_l · √(d̄ / d_out,l): λ's fixed point grows like √d_out (method-facts, "λ dynamics": ||B_i||_1 grows
    with the output width under Adam), so this score ranks ranks by what λ says beyond the module's width;
    a module of the mean width d̄ keeps its λ."""
    mean = sum(widths.values()) / len(widths)
    return {n: v * (mean / widths[n]) ** 0.5 for n, v in lambdas.items()}


def personalisation_settings(bt: BTSettings, recipe: Recipe) -> BTSettings:
    """``bt`` fine-tuning with the personalisation's ``recipe``."""
    return replace(bt, recipe=recipe)
