"""FedDPA-T (Yang et al., 2024, "dual-personalising adapter", the sequential variant) as a base model
that differs per client: a global LoRA averaged by FedAvg plus a local LoRA per client (method-facts:
global r 8, alpha 8, dropout 0.05; the local adapter the same unless ``base_model.local_rank``).

One round on client k (``feddpa_client_update``), on the two-level layer of ``adapters.two_level``
(W0 + s·B A + s·D_k C_k):

1. the server's global adapter (A, B) and head are loaded, and the client's own local adapter (C_k, D_k)
   from its storage (a fresh one — C random, D = 0 — on its first round);
2. the global adapter and the head train for ``local_epochs`` with the local adapter switched off;
3. the local adapter trains for ``local_epochs`` on top, the global adapter and head frozen;
4. (C_k, D_k) is stored on the client; only (A, B) and the head are returned for FedAvg.

The client's base model is pretrained + global + its own local adapter (both merged). A client with no
local adapter — an unseen client, or a seen client that was never sampled — gets pretrained + global:
the authors' code (``get_seq_class_feddpa_peft_llm_model``) loads ``{cid}.pt`` for every client it
serves and runs FedDPA-T on the seen pool only, so it defines no unseen client; a fresh local adapter
(D = 0) adds nothing, and this is what one amounts to.
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from ..adapters.client_part import client_part_file
from ..adapters.two_level import (
    TwoLevelLinear,
    attach_two_level,
    level_state,
    load_level_state,
    local_part,
    shared_level_model,
)
from ..atomic import save_tensors
from ..training import adapted_modules, copy_sharing_embeddings, proximal_term, train_model
from .interface import ClientTask
from .registry import BaseWithParts, FederatedStage, StageContext, register_base_kind
from .standard_fl import BaseModelConfig

UNSEEN = "pretrained + global adapter (no local adapter: a fresh one has D = 0)"


def local_rank(b: BaseModelConfig) -> int:
    """The local adapter's rank: ``base_model.local_rank``, 0 = ``lora_rank`` (the global adapter's)."""
    return b.local_rank or b.lora_rank


def dpa_model(base: nn.Module, s: BaseModelConfig, seed: int) -> tuple[nn.Module, dict[str, TwoLevelLinear]]:
    """A copy of ``base`` with a global and a local adapter on every adapted linear layer; the head (a
    classifier's) stays a plain layer that trains with the global adapter."""
    torch.manual_seed(seed)
    model = copy_sharing_embeddings(base)
    for p in model.parameters():
        p.requires_grad_(False)
    alpha = float(s.lora_alpha)  # both adapters' lora_alpha (authors 8)
    layers = attach_two_level(model, adapted_modules(base, "train"), s.lora_rank, local_rank(s), alpha, alpha,
                              s.lora_dropout)
    return model, layers


def _head(model: nn.Module) -> list[nn.Parameter]:
    head = getattr(model, "head", None)
    return list(head.parameters()) if isinstance(head, nn.Linear) else []


def global_state(model: nn.Module, layers: dict[str, TwoLevelLinear]) -> dict[str, torch.Tensor]:
    """What travels: the global adapter of every layer and the head's weights."""
    head = {f"head.{k}": v.detach().clone() for k, v in model.head.state_dict().items()} if _head(model) else {}
    return {**level_state(layers, "shared"), **head}


def load_global_state(model: nn.Module, layers: dict[str, TwoLevelLinear], state: dict[str, torch.Tensor]) -> None:
    load_level_state(layers, {k: v for k, v in state.items() if not k.startswith("head.")})
    head = {k[len("head."):]: v for k, v in state.items() if k.startswith("head.")}
    if head:
        model.head.load_state_dict(head)


def initial_global_state(base: nn.Module, s: BaseModelConfig, ctx: StageContext) -> dict[str, torch.Tensor]:
    model, layers = dpa_model(base, s, ctx.seed)
    return global_state(model, layers)


def local_adapter_path(folder: str | Path, cid: str) -> Path:
    return Path(folder) / f"{cid}.safetensors"


def _client_seed(cid: str, seed: int) -> int:
    return (zlib.crc32(cid.encode()) + 7919 * seed) % 2**31


def feddpa_client_update(base: nn.Module, state: dict[str, torch.Tensor], task: ClientTask, s: BaseModelConfig,
                         seed: int, local_dir: str | Path, proximal_mu: float = 0.0):
    """One client's FedDPA-T round; returns ``(global state, num_examples, metrics)``, stores the local adapter."""
    if len(task.train) == 0:
        raise ValueError(f"client {task.client_id} has no training data")
    model, layers = dpa_model(base, s, _client_seed(task.client_id, seed))  # a fresh local C per client
    load_global_state(model, layers, state)
    path = local_adapter_path(local_dir, task.client_id)
    if path.is_file():
        load_level_state(layers, load_file(str(path)))
    shared = [p for layer in layers.values() for p in layer.shared_parameters()] + _head(model)
    local = [p for layer in layers.values() for p in layer.local_parameters()]
    losses = {}
    for step, (train, frozen, use_local) in {"global": (shared, local, False), "local": (local, shared, True)}.items():
        for p in frozen:
            p.requires_grad_(False)
        for p in train:
            p.requires_grad_(True)
        for layer in layers.values():
            layer.use_local = use_local
        with proximal_term(proximal_mu if step == "global" else 0.0, train):  # the local adapter has none
            out = train_model(model, [{"params": train, "lr": s.lr}], task.train, s.local_epochs, s.batch_size,
                              seed, loss=task.problem.loss)
        if not all(math.isfinite(x) for x in out):
            raise FloatingPointError(f"client {task.client_id}: non-finite FedDPA-T {step} loss")
        losses[f"{step}_loss"] = sum(out) / max(len(out), 1)
    local_state = level_state(layers, "local")
    save_tensors(path, local_state)
    save_tensors(client_part_file(local_dir, task.client_id), local_part(local_state, float(s.lora_alpha) / local_rank(s)))
    return global_state(model, layers), len(task.train), {"train_loss": losses["global_loss"], **losses}


def feddpa_base(base: nn.Module, state: dict[str, torch.Tensor], s: BaseModelConfig, folder: Path,
                ctx: StageContext) -> BaseWithParts:
    """Pretrained + the global adapter merged (the head trained with it); each trained client's local
    adapter is its part, in its own storage."""
    model, layers = dpa_model(base, s, ctx.seed)
    load_global_state(model, layers, state)
    return BaseWithParts(shared_level_model(model, layers), Path(folder) / "clients", UNSEEN)


FEDDPA_STAGE = register_base_kind('feddpa-t', FederatedStage(
    name="base_feddpa_t", section="base_model", per_budget=False, client_state=True, artifact="global.safetensors",
    client_settings=lambda cfg: cfg.base_model, settings_type=BaseModelConfig, initial_state=initial_global_state,
    client_update=lambda base, state, task, s, ctx: feddpa_client_update(base, state, task, s, ctx.seed,
                                                                         ctx.client_state_dir, ctx.proximal_mu),
    finalize=feddpa_base,
))
"""FedDPA-T's federated training (the stage of base source ``feddpa-t``); seeded by ``base_model.seed``."""
