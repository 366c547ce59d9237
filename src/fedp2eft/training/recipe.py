"""The fine-tuning recipe: the one declaration of how a client fine-tunes (rate, epochs, batch, clipping,
weight decay, head mode, fixed A), composed into every section that fine-tunes (``schema.inline``).

Paper defaults: AdamW at 1e-4 for adapters and head, 2 epochs of batch 32, no weight decay. The authors'
recipe (the paper protocol) adds ``head = "adapter"``, ``max_grad_norm = 1.0`` (the HF Trainer default) and
``lora_a_seed = 42``. The run's seed is not part of it: the stage runner or the pipeline passes it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..errors import require
from .loop import Loss, train_model
from .modules import HEAD_MODES


@dataclass(frozen=True)
class Recipe:
    """How a model is fine-tuned locally (one declaration; sections compose it)."""

    epochs: int = 2
    batch_size: int = 32
    lr: float = 1e-4  # the adapter's AdamW rate
    head_lr: float = 1e-4  # a trained head's rate (head = "train")
    weight_decay: float = 0.0
    max_grad_norm: float = 0.0  # > 0: clip the gradient norm (authors: 1.0, the HF Trainer default)
    head: str = "train"  # "train": the head is trained at head_lr; "adapter": adapted like every linear layer, frozen
    lora_a_seed: int = -1  # >= 0: one fixed LoRA A per module for every round, client and personalisation

    def __post_init__(self) -> None:
        for k in ("epochs", "batch_size"):
            require(getattr(self, k) >= 1, k, "must be >= 1")
        for k in ("lr", "head_lr"):
            require(getattr(self, k) > 0, k, "must be > 0")
        require(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        require(self.max_grad_norm >= 0, "max_grad_norm", "must be >= 0 (0 = no clipping)")
        require(self.head in HEAD_MODES, "head", f"must be one of {list(HEAD_MODES)}")
        require(self.lora_a_seed >= -1, "lora_a_seed", "must be >= 0, or -1 for a fresh random A")

    def with_lr(self, lr: float) -> Recipe:
        """The same recipe at adapter rate ``lr`` (a rate sweep's candidate, a learned rate)."""
        return dataclasses.replace(self, lr=lr)

    def param_groups(self, adapter: list, head: list, adapter_lr: float | None = None) -> list[dict]:
        """AdamW groups: the adapter at ``adapter_lr`` (default ``lr``), a trained head at ``head_lr``."""
        return [{"params": adapter, "lr": self.lr if adapter_lr is None else adapter_lr},
                {"params": head, "lr": self.head_lr}]

    def train(self, model, param_groups: list[dict], data, seed: int, *, loss: Loss, **kwargs) -> list[float]:
        """``train_model`` with this recipe's epochs, batch size, weight decay and clipping."""
        return train_model(model, param_groups, data, self.epochs, self.batch_size, seed, self.weight_decay,
                           max_grad_norm=self.max_grad_norm, loss=loss, **kwargs)
