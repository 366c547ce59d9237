"""Local supervised fine-tuning and prediction (shared by every method, the PSG's features and the
federated stages)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .batches import EncodedData

ExtraLoss = Callable[[nn.Module], torch.Tensor]
Loss = Callable[[torch.Tensor, dict[str, torch.Tensor]], torch.Tensor]  # (model outputs, batch) -> loss


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in batch.items() if k != "labels"}


def device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def train_model(
    model: nn.Module,
    param_groups: list[dict],
    data: EncodedData,
    epochs: int,
    batch_size: int,
    seed: int,
    weight_decay: float = 0.0,
    extra_loss: ExtraLoss | None = None,
    on_step: Callable[[int, float], None] | None = None,
    max_grad_norm: float = 0.0,
    *,
    loss: Loss,
) -> list[float]:
    """AdamW on the task's ``loss(outputs, batch)`` (+ ``extra_loss(model)``) for ``epochs`` passes; returns the step losses.

    ``max_grad_norm`` > 0 clips the global gradient norm of all trained parameters before each
    step (the Hugging Face Trainer's default of 1.0 is what the authors' personalisation uses)."""
    groups = [g for g in param_groups if g["params"]]
    if not groups:
        return []
    optimiser = torch.optim.AdamW(groups, weight_decay=weight_decay)
    trained = [p for g in groups for p in g["params"]]
    gen = torch.Generator().manual_seed(seed)
    device = device_of(model)
    model.train()
    losses: list[float] = []
    for _ in range(epochs):
        for batch in data.batches(batch_size, generator=gen, shuffle=True):
            batch = to_device(batch, device)
            value = loss(model(**model_inputs(batch)), batch)
            if extra_loss is not None:
                value = value + extra_loss(model)
            if not torch.isfinite(value):
                raise FloatingPointError(f"non-finite training loss {value.item()}")
            optimiser.zero_grad(set_to_none=True)
            value.backward()
            if max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(trained, max_grad_norm)
            optimiser.step()
            losses.append(float(value.detach()))
            if on_step is not None:
                on_step(len(losses), losses[-1])
    model.eval()
    return losses
