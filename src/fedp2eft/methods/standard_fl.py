"""Standard FL base model, client side (FedAvg local update), as plain functions of state and data.

Two modes (method-facts "Standard FL"):

- ``full``: full fine-tuning of backbone and head; with ``freeze_embeddings`` the embedding
  tables stay frozen and are not sent (for e5-small that is 96M of its 118M parameters).
- ``lora``: a LoRA adapter (rank, alpha, dropout) on all linear layers plus the head; the
  server averages adapter and head, and the final adapter is merged into the base weights.

``client_update(model, global_state, task, hp, seed)`` loads the global state into a fresh copy of
the base model, trains locally and returns ``(new_state, num_examples, metrics)`` with the same
keys, so the server never sees a torch module.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from ..errors import require
from ..tasks import Task
from ..training import copy_sharing_embeddings, proximal_term, train_model
from .interface import ClientTask
from .registry import FederatedStage, StageContext, register_base_kind, register_section


@dataclass(frozen=True)
class BaseModelConfig:
    """``[base_model]``: how the base model that personalisation starts from is obtained."""

    # "off-the-shelf" | "standard-fl" | the personalised-FL bases "feddpa-t", "dept", "pf2lora" | a folder
    # written by a previous run (a personalised base's folder holds each trained client's part in clients/)
    kind: str = "off-the-shelf"
    mode: str = "full"  # standard-fl: "full" (FedAvg of full fine-tuning) | "lora" (FedAvg of LoRA, merged)
    rounds: int = 100
    local_epochs: int = 2
    batch_size: int = 32
    lr: float = 5e-5
    freeze_embeddings: bool = False  # full mode: embedding tables stay frozen and are never sent
    lora_rank: int = 16  # standard-fl lora; feddpa-t's global LoRA (authors 8); pf2lora's level 1 (authors 8)
    lora_alpha: int = 32  # standard-fl lora; feddpa-t's both LoRAs (authors 8)
    lora_dropout: float = 0.05
    local_rank: int = 0  # feddpa-t's local LoRA (0 = lora_rank); pf2lora's level 2 is [pf2lora] local_rank
    seed: int = 0  # the base model is one artefact shared by every experiment seed (the stage's seed)
    snapshot_every: int = 0  # > 0: keep the global state of every k-th round in base_model/snapshots/ (a curve)

    def __post_init__(self) -> None:
        require(bool(self.kind), "kind", "must not be empty")
        require(self.mode in ("full", "lora"), "mode", "must be 'full' or 'lora'")
        for k in ("rounds", "local_epochs", "batch_size", "lora_rank", "lora_alpha"):
            require(getattr(self, k) >= 1, k, "must be >= 1")
        require(self.lr > 0, "lr", "must be > 0")
        require(0 <= self.lora_dropout < 1, "lora_dropout", "must be in [0, 1)")
        require(self.local_rank >= 0, "local_rank", "must be >= 0 (0 = lora_rank)")
        require(self.snapshot_every >= 0, "snapshot_every", "must be >= 0 (0 = none)")


def build_trainable(base: nn.Module, hp: BaseModelConfig, problem: Task) -> nn.Module:
    """A fresh copy of ``base`` with exactly the federated parameters trainable (embedding tables shared
    with ``base``, not copied, wherever they stay frozen: LoRA mode, or ``freeze_embeddings``)."""
    model = copy_sharing_embeddings(base) if hp.mode == "lora" or hp.freeze_embeddings else copy.deepcopy(base)
    if hp.mode == "lora":  # a classifier's head trains and travels; a causal LM has none (its lm_head stays)
        saved = problem.saved_modules("train") if isinstance(getattr(base, "head", None), nn.Linear) else None
        cfg = LoraConfig(r=hp.lora_rank, lora_alpha=hp.lora_alpha, lora_dropout=hp.lora_dropout,
                         target_modules=problem.adapted_modules(base, "train"), modules_to_save=saved)
        return get_peft_model(model, cfg)
    for name, p in model.named_parameters():
        p.requires_grad_(not (hp.freeze_embeddings and ".embeddings." in f".{name}"))
    return model


def federated_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable tensors: what travels between server and clients."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def initial_state(base: nn.Module, hp: BaseModelConfig, ctx: StageContext) -> dict[str, torch.Tensor]:
    torch.manual_seed(ctx.seed)
    return federated_state(build_trainable(base, hp, ctx.problem))


def load_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = [k for k in state if k not in params]
    if missing:
        raise KeyError(f"state has unknown parameters {missing[:3]}")
    with torch.no_grad():
        for k, v in state.items():
            params[k].copy_(v)


def client_update(base: nn.Module, global_state: dict[str, torch.Tensor], task: ClientTask, hp: BaseModelConfig,
                  seed: int, proximal_mu: float = 0.0):
    torch.manual_seed(seed)  # dropout: the update depends only on (state, data, seed), not on history
    model = build_trainable(base, hp, task.problem)
    load_state(model, global_state)
    params = [p for p in model.parameters() if p.requires_grad]
    with proximal_term(proximal_mu, params):  # every trained parameter is shared
        losses = train_model(model, [{"params": params, "lr": hp.lr}], task.train, hp.local_epochs, hp.batch_size,
                             seed, loss=task.problem.loss)
    metrics = {"train_loss": sum(losses) / max(len(losses), 1)}
    return federated_state(model), len(task.train), metrics


def evaluate_state(base: nn.Module, state: dict[str, torch.Tensor], task: ClientTask,
                   hp: BaseModelConfig) -> tuple[dict[str, float], int]:
    """``({metric: score sum}, rows)`` of the global model on the client's test split, every metric the
    task scores (accuracy; METEOR, ROUGE-1, ROUGE-L)."""
    model = build_trainable(base, hp, task.problem)
    load_state(model, state)
    scores = task.problem.score(task.problem.predict(model, task.test), task.test)
    return {m: float(sum(v)) for m, v in scores.items()}, len(task.test)


def final_model(base: nn.Module, state: dict[str, torch.Tensor], hp: BaseModelConfig, problem: Task) -> nn.Module:
    """The base model after federated training (LoRA merged into the weights)."""
    model = build_trainable(base, hp, problem)
    load_state(model, state)
    if hp.mode == "lora":
        model = model.merge_and_unload()
    for p in model.parameters():
        p.requires_grad_(True)
    return model.eval()


STANDARD_FL_STAGE = register_base_kind('standard-fl', FederatedStage(
    name="base_model", section="base_model", per_budget=False,
    client_settings=lambda cfg: cfg.base_model, settings_type=BaseModelConfig, initial_state=initial_state,
    client_update=lambda base, state, task, hp, ctx: client_update(base, state, task, hp, ctx.seed,
                                                                          ctx.proximal_mu),
    finalize=lambda base, state, hp, folder, ctx: final_model(base, state, hp, ctx.problem), evaluate=evaluate_state,
))
"""Standard FL's federated training of the base model (FedAvg from the off-the-shelf model): the stage
of base source ``standard-fl``. Its seed is ``base_model.seed``, not the experiment's."""

register_section("base_model", BaseModelConfig)
