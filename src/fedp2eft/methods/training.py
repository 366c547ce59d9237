"""Local supervised fine-tuning and prediction for classifiers (shared by every method)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from .batches import EncodedData

ExtraLoss = Callable[[nn.Module], torch.Tensor]


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in batch.items() if k != "labels"}


def device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def train_classifier(
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
) -> list[float]:
    """AdamW on cross-entropy (+ ``extra_loss(model)``) for ``epochs`` passes; returns the step losses.

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
            logits = model(**model_inputs(batch))
            loss = F.cross_entropy(logits, batch["labels"])
            if extra_loss is not None:
                loss = loss + extra_loss(model)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite training loss {loss.item()}")
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            if max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(trained, max_grad_norm)
            optimiser.step()
            losses.append(float(loss.detach()))
            if on_step is not None:
                on_step(len(losses), losses[-1])
    model.eval()
    return losses


@torch.no_grad()
def predict(model: nn.Module, data: EncodedData, batch_size: int = 64) -> list[int]:
    model.eval()
    device = device_of(model)
    preds: list[int] = []
    for batch in data.batches(batch_size):
        batch = to_device(batch, device)
        preds.extend(model(**model_inputs(batch)).argmax(-1).tolist())
    return preds


def linear_module_names(model: nn.Module, under: str = "backbone") -> list[str]:
    """Full names of every ``nn.Linear`` inside ``model.<under>``."""
    prefix = under + "."
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.startswith(prefix)]


HEAD_MODES = ("train", "adapter")


def adapted_modules(model: nn.Module, head: str = "train") -> list[str]:
    """The modules every adapter method targets (the paper's "all-linear").

    ``head = "train"``: every linear layer of the backbone; the classifier head is trained itself
    (peft ``modules_to_save``). ``head = "adapter"`` (the authors' code): the head is adapted like
    every other linear layer and its weights stay frozen, so only adapters train."""
    if head not in HEAD_MODES:
        raise ValueError(f"head must be one of {HEAD_MODES}, got {head!r}")
    names = linear_module_names(model)
    return [*names, "head"] if head == "adapter" else names


def saved_modules(head: str = "train") -> list[str] | None:
    """peft ``modules_to_save`` for a head mode: the head is a trained copy only in ``"train"`` mode."""
    return ["head"] if head == "train" else None
