"""Standard FL base model, client side (FedAvg local update), as plain functions of state and data.

Two modes (method-facts "Standard FL"):

- ``full``: full fine-tuning of backbone and head; with ``freeze_embeddings`` the embedding
  tables stay frozen and are not sent (for e5-small that is 96M of its 118M parameters).
- ``lora``: a LoRA adapter (rank, alpha, dropout) on all linear layers plus the head; the
  server averages adapter and head, and the final adapter is merged into the base weights.

``client_update(model, global_state, task, hp)`` loads the global state into a fresh copy of
the base model, trains locally and returns ``(new_state, num_examples, metrics)`` with the same
keys, so the server never sees a torch module.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from .base import ClientTask
from .training import linear_module_names, predict, train_classifier


@dataclass(frozen=True)
class FedAvgHP:
    mode: str = "full"  # "full" | "lora"
    epochs: int = 1
    batch_size: int = 32
    lr: float = 5e-5
    freeze_embeddings: bool = False
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    seed: int = 0


def build_trainable(base: nn.Module, hp: FedAvgHP) -> nn.Module:
    """A fresh copy of ``base`` with exactly the federated parameters trainable."""
    model = copy.deepcopy(base)
    if hp.mode == "lora":
        cfg = LoraConfig(r=hp.lora_rank, lora_alpha=hp.lora_alpha, lora_dropout=hp.lora_dropout,
                         target_modules=linear_module_names(base), modules_to_save=["head"])
        return get_peft_model(model, cfg)
    for name, p in model.named_parameters():
        p.requires_grad_(not (hp.freeze_embeddings and ".embeddings." in f".{name}"))
    return model


def federated_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable tensors: what travels between server and clients."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def initial_state(base: nn.Module, hp: FedAvgHP) -> dict[str, torch.Tensor]:
    torch.manual_seed(hp.seed)
    return federated_state(build_trainable(base, hp))


def load_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = [k for k in state if k not in params]
    if missing:
        raise KeyError(f"state has unknown parameters {missing[:3]}")
    with torch.no_grad():
        for k, v in state.items():
            params[k].copy_(v)


def client_update(base: nn.Module, global_state: dict[str, torch.Tensor], task: ClientTask, hp: FedAvgHP):
    torch.manual_seed(hp.seed)  # dropout: the update depends only on (state, data, seed), not on history
    model = build_trainable(base, hp)
    load_state(model, global_state)
    params = [p for p in model.parameters() if p.requires_grad]
    losses = train_classifier(model, [{"params": params, "lr": hp.lr}], task.train, hp.epochs, hp.batch_size, hp.seed)
    metrics = {"train_loss": sum(losses) / max(len(losses), 1)}
    return federated_state(model), len(task.train), metrics


def evaluate_state(base: nn.Module, state: dict[str, torch.Tensor], task: ClientTask, hp: FedAvgHP) -> tuple[int, int]:
    """``(correct, n)`` of the global model on the client's test split."""
    model = build_trainable(base, hp)
    load_state(model, state)
    preds = predict(model, task.test)
    return sum(int(p == y) for p, y in zip(preds, task.test.labels)), len(preds)


def final_model(base: nn.Module, state: dict[str, torch.Tensor], hp: FedAvgHP) -> nn.Module:
    """The base model after federated training (LoRA merged into the weights)."""
    model = build_trainable(base, hp)
    load_state(model, state)
    if hp.mode == "lora":
        model = model.merge_and_unload()
    for p in model.parameters():
        p.requires_grad_(True)
    return model.eval()
