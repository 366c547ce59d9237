"""LoRA personalisation (baseline): rank r on all linear layers, alpha 2r, dropout 0.

With ``head = "train"`` the classifier head is trained too (peft ``modules_to_save``) at
``head_lr``; with ``head = "adapter"`` (the authors') it is one more LoRA-adapted linear layer with
frozen weights. With ``lora_a_seed >= 0`` every module's A is the fixed A of that seed
(``adapters.fixed_a``). After local fine-tuning the adapter is merged into the weights and the
client's test split predicted.
"""

from __future__ import annotations

import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from ..adapters import apply_fixed_a
from ..errors import UserError
from ..tasks import Task
from ..training import Recipe, copy_sharing_embeddings
from .interface import ClientTask, PersonaliseConfig
from .registry import MethodSpec, register_method
from .tuned import tuned_spec


def lora_config(model: nn.Module, rank: int, dropout: float = 0.0, head: str = "train", *,
                problem: Task) -> LoraConfig:
    return LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        lora_dropout=dropout,
        target_modules=problem.adapted_modules(model, head),
        modules_to_save=problem.saved_modules(head),
        bias="none",
    )


def lora_model(base: nn.Module, rank: int, recipe: Recipe, problem: Task) -> nn.Module:
    """A fresh copy of ``base`` with LoRA of ``rank`` on the recipe's modules (fixed A when
    ``recipe.lora_a_seed >= 0``)."""
    model = get_peft_model(copy_sharing_embeddings(base), lora_config(base, rank, head=recipe.head, problem=problem))
    if recipe.lora_a_seed >= 0:
        apply_fixed_a(model, recipe.lora_a_seed)
    return model


def split_trainable(model: nn.Module) -> tuple[list, list]:
    """(adapter parameters, other trainable parameters — the head copy when it is trained)."""
    adapter = [p for n, p in model.named_parameters() if p.requires_grad and "lora_" in n]
    head = [p for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n]
    return adapter, head


def trained_lora(base: nn.Module, task: ClientTask, rank: int, recipe: Recipe, seed: int) -> nn.Module:
    """LoRA fine-tuning of one client; returns the peft model (unmerged). The fresh A is drawn from the
    client's seed, so the result never depends on what ran before in the process."""
    torch.manual_seed(seed)
    model = lora_model(base, rank, recipe, task.problem)
    adapter, head = split_trainable(model)
    recipe.train(model, recipe.param_groups(adapter, head), task.train, seed, loss=task.problem.loss)
    return model


def finetune_lora(base: nn.Module, task: ClientTask, rank: int, recipe: Recipe, seed: int) -> nn.Module:
    """``trained_lora``, merged."""
    return trained_lora(base, task, rank, recipe, seed).merge_and_unload()


class LoRAMethod:
    name = "lora"
    uses_budget = True

    def personalised_model(self, base: nn.Module, task: ClientTask, budget: int | None, p: PersonaliseConfig,
                           seed: int) -> nn.Module:
        """The client's personalised peft model, unmerged (what ``fedp2eft export`` writes)."""
        if budget is None or budget < 1:
            raise UserError(f"lora needs a rank budget >= 1, got {budget}")
        return trained_lora(base, task, budget, p.recipe, seed)

    def personalise(self, base: nn.Module, task: ClientTask, budget: int | None, p: PersonaliseConfig,
                    seed: int) -> list:
        model = self.personalised_model(base, task, budget, p, seed).merge_and_unload()
        return task.problem.predict(model, task.test, p.eval_batch_size)


LORA = register_method(MethodSpec("lora", lambda cfg, resources, seed: LoRAMethod(),
                                  summary="LoRA of rank r on every adapted module"))
register_method(tuned_spec(LORA))
register_method(tuned_spec(LORA, per_client=True))
