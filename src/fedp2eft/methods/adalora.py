"""AdaLoRA personalisation (baseline, Zhang et al. 2023) through peft, with the paper's settings:
init_r / target_r = 3r/2 / r (24/16, 12/8, 6/4, 3/2), tinit 10 % and tfinal 30 % of the total
steps, deltaT 1, orthogonal regularisation 0.1, lr 1e-3 (``[adalora] lr``), and
``update_and_allocate(step)`` after every optimiser step. The classifier wrapper returns logits,
not a loss, so the orthogonal regulariser that peft adds to ``outputs.loss`` is added here as an
extra loss term with peft's formula. After training the adapter is merged and the test split
predicted (merging uses the final, masked rank pattern).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from peft import AdaLoraConfig, get_peft_model
from torch import nn

from ..errors import UserError, require
from ..training import copy_sharing_embeddings
from .interface import ClientTask, PersonaliseConfig
from .lora import split_trainable
from .registry import MethodSpec, register_method, register_moved_key
from .tuned import tuned_spec


@dataclass(frozen=True)
class AdaLoRAConfig:
    """``[adalora]``: AdaLoRA's own settings (the rest of its fine-tuning is ``[personalise]``'s recipe)."""

    lr: float = 1e-3  # AdaLoRA's adapter rate (paper)
    alpha: int = 0  # 0 = 2 · budget, as LoRA; the authors' AdaLoRA leaves peft's default 8

    def __post_init__(self) -> None:
        require(self.lr > 0, "lr", "must be > 0")
        require(self.alpha >= 0, "alpha", "must be >= 0 (0 = 2 · budget)")


def adalora_schedule(num_examples: int, batch_size: int, epochs: int) -> tuple[int, int, int]:
    """``(total_step, tinit, tfinal)`` with a non-empty budgeting phase."""
    total = max(1, epochs * math.ceil(num_examples / batch_size))
    tinit, tfinal = int(0.1 * total), int(0.3 * total)
    if tinit >= total - tfinal:
        tinit, tfinal = 0, 0
    return total, tinit, tfinal


def orthogonal_regulariser(model: nn.Module) -> torch.Tensor:
    """peft's AdaLoRA regulariser: mean over A and B matrices of ||P Pᵀ − I||_F (A) / ||PᵀP − I||_F (B)."""
    total, count = 0.0, 0
    for n, p in model.named_parameters():
        if p.requires_grad and ("lora_A" in n or "lora_B" in n):
            cov = p @ p.T if "lora_A" in n else p.T @ p
            total = total + torch.norm(cov - torch.eye(*cov.shape, device=cov.device, dtype=cov.dtype), p="fro")
            count += 1
    return total / max(count, 1)


class AdaLoRAMethod:
    name = "adalora"
    uses_budget = True

    def __init__(self, lr: float = 1e-3, orth_reg_weight: float = 0.1, alpha: int = 0):
        self.lr, self.orth_reg_weight = lr, orth_reg_weight
        self.alpha = alpha  # 0 = 2 · budget (as LoRA); the authors' AdaLoRA leaves peft's default 8

    def with_rate(self, lr: float) -> AdaLoRAMethod:
        """This method at adapter rate ``lr`` (``adalora-tuned``'s sweep: AdaLoRA's rate is its own setting)."""
        return AdaLoRAMethod(lr=lr, orth_reg_weight=self.orth_reg_weight, alpha=self.alpha)

    def personalise(self, base: nn.Module, task: ClientTask, budget: int | None, p: PersonaliseConfig,
                    seed: int) -> list:
        if budget is None or budget < 1:
            raise UserError(f"adalora needs a rank budget >= 1, got {budget}")
        recipe = p.recipe
        total, tinit, tfinal = adalora_schedule(len(task.train), recipe.batch_size, recipe.epochs)
        cfg = AdaLoraConfig(
            init_r=max(budget + 1, 3 * budget // 2), target_r=budget, tinit=tinit, tfinal=tfinal, deltaT=1,
            orth_reg_weight=self.orth_reg_weight, total_step=total, lora_alpha=self.alpha or 2 * budget,
            lora_dropout=0.0, target_modules=task.problem.adapted_modules(base, recipe.head),
            modules_to_save=task.problem.saved_modules(recipe.head),
        )
        torch.manual_seed(seed)
        model = get_peft_model(copy_sharing_embeddings(base), cfg)
        adapter, head = split_trainable(model)
        recipe.train(
            model, recipe.param_groups(adapter, head, adapter_lr=self.lr), task.train, seed, loss=task.problem.loss,
            extra_loss=lambda m: self.orth_reg_weight * orthogonal_regulariser(m),
            on_step=lambda step, _loss: model.base_model.update_and_allocate(step - 1),
        )
        return task.problem.predict(model.merge_and_unload(), task.test, p.eval_batch_size)


ADALORA = register_method(MethodSpec(
    "adalora", lambda cfg, resources, seed: AdaLoRAMethod(lr=cfg.adalora.lr, alpha=cfg.adalora.alpha),
    section="adalora", settings=AdaLoRAConfig, summary="AdaLoRA from 3r/2 to r ranks per module (peft)"))
register_method(tuned_spec(ADALORA))
register_moved_key("personalise.adalora_lr", "adalora.lr")
register_moved_key("personalise.adalora_alpha", "adalora.alpha")
