"""PF2LoRA as a base model that differs per client (base source ``pf2lora``): the federated bilevel
training of ``pf2lora`` with level-1 rank ``base_model.lora_rank`` and ``base_model.rounds`` rounds,
every other setting from ``[pf2lora]``. A client's base model is pretrained + level 1 (A, B) + the head
trained with it + its own level 2 (C_k, D_k), both merged; a client with no level 2 (unseen, or a seen
client never sampled) gets a fresh level 2, which adds nothing (D = 0): pretrained + level 1."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from ...adapters.client_part import client_part_file
from ...adapters.two_level import default_local_scaling, local_part, shared_level_model
from ...atomic import save_tensors
from ..registry import BaseWithParts, FederatedStage, StageContext, register_base_kind
from .method import (
    PF2LoRASettings,
    PF2LoRATraining,
    initial_shared_state,
    load_shared_state,
    local_state_path,
    pf2lora_client_update,
    two_level_model,
)

UNSEEN = "pretrained + level 1 (a fresh level 2 has D = 0)"


@dataclass(frozen=True)
class PF2LoRABaseSettings:
    """PF2LoRA as a base: ``[pf2lora]``'s round at level-1 rank ``base_model.lora_rank``, the head trained."""

    training: PF2LoRATraining = field(default_factory=PF2LoRATraining)
    rank: int = 8

    @property
    def client(self) -> PF2LoRASettings:
        return PF2LoRASettings(self.training, head="train")


def pf2lora_base_settings(cfg) -> PF2LoRABaseSettings:
    return PF2LoRABaseSettings(cfg.pf2lora.training, cfg.base_model.lora_rank)


def pf2lora_base_update(base: nn.Module, state, task, s: PF2LoRABaseSettings, seed: int, local_dir,
                        proximal_mu: float = 0.0):
    """A PF2LoRA round (``pf2lora_client_update``), then the client's level 2 written as its part."""
    out = pf2lora_client_update(base, state, task, s.client, s.rank, seed, local_dir, proximal_mu)
    stored = load_file(str(local_state_path(local_dir, task.client_id)))
    save_tensors(client_part_file(local_dir, task.client_id), local_part(stored, default_local_scaling()))
    return out


def pf2lora_base(base: nn.Module, state: dict[str, torch.Tensor], s: PF2LoRABaseSettings, folder: Path,
                 ctx: StageContext) -> BaseWithParts:
    model, layers = two_level_model(base, s.rank, s.training.r_local(s.rank), ctx.seed, "train")
    load_shared_state(model, layers, state)
    return BaseWithParts(shared_level_model(model, layers), Path(folder) / "clients", UNSEEN)


PF2LORA_BASE_STAGE = register_base_kind('pf2lora', FederatedStage(
    name="base_pf2lora", section="base_model", per_budget=False, client_state=True, artifact="shared.safetensors",
    client_settings=pf2lora_base_settings, settings_type=PF2LoRABaseSettings,
    initial_state=lambda base, s, ctx: initial_shared_state(base, s.client, s.rank, ctx.seed),
    client_update=lambda base, state, task, s, ctx: pf2lora_base_update(base, state, task, s, ctx.seed,
                                                                        ctx.client_state_dir, ctx.proximal_mu),
    finalize=pf2lora_base,
), sections=("pf2lora",))
"""PF2LoRA's federated training as a base source's stage; seeded by ``base_model.seed``."""
