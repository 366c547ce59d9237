"""LoRA personalisation (baseline): rank r on all linear layers, alpha 2r, dropout 0.

The classifier head is trained too (peft ``modules_to_save``) at ``head_lr``; after local
fine-tuning the adapter is merged into the weights and the client's test split predicted.
"""

from __future__ import annotations

import copy

from peft import LoraConfig, get_peft_model
from torch import nn

from ..errors import UserError
from .base import ClientTask, TrainSettings
from .training import linear_module_names, predict, train_classifier


def lora_config(model: nn.Module, rank: int, dropout: float = 0.0) -> LoraConfig:
    return LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        lora_dropout=dropout,
        target_modules=linear_module_names(model),
        modules_to_save=["head"],
        bias="none",
    )


class LoRAMethod:
    name = "lora"
    uses_budget = True

    def personalise(self, base: nn.Module, task: ClientTask, budget: int | None, settings: TrainSettings) -> list[int]:
        if budget is None or budget < 1:
            raise UserError(f"lora needs a rank budget >= 1, got {budget}")
        model = get_peft_model(copy.deepcopy(base), lora_config(base, budget))
        adapter = [p for n, p in model.named_parameters() if p.requires_grad and "lora_" in n]
        head = [p for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n]
        train_classifier(
            model,
            [{"params": adapter, "lr": settings.lr}, {"params": head, "lr": settings.head_lr}],
            task.train,
            settings.epochs,
            settings.batch_size,
            settings.seed,
            settings.weight_decay,
        )
        merged = model.merge_and_unload()
        return predict(merged, task.test, settings.eval_batch_size)
