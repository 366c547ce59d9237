"""PF2LoRA (seed 002) as a federated method: shared level-1 LoRA (A, B) plus a per-client level-2
LoRA (C_k, D_k) on every linear layer of the backbone (``adapters.two_level``).

Federated round on client k (``pf2lora_client_update``): load the server's (A, B, head) and the
client's own (C_k, D_k) — kept in client-local storage between rounds, never sent — or a fresh
level 2 seeded by the client id; run ``steps`` upper steps of the first-order bilevel scheme of
``bilevel`` (lower level SGD on (C_k, D_k), upper level AdamW on (A, B) and the head);
store (C_k, D_k) locally; return (A, B, head) for FedAvg.

Rank budget r: level 1 has rank r; level 2 has rank ``local_rank`` (0 = ⌈r/4⌉, the authors'
8 / 2 ratio), so a client's effective update has rank in [r − r̃, r + r̃].

Personalisation (``PF2LoRAMethod``): the budget's trained level 1 (frozen); a client with stored
level-2 state (a seen client that trained) starts from it, any other client (unseen, or never
sampled) from a fresh one; level 2 and the head are fine-tuned with the same AdamW settings as every
other method, both levels merged, test split predicted.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from ...adapters.two_level import TwoLevelLinear, attach_two_level, level_state, load_level_state, merge_two_level
from ...atomic import save_tensors
from ...errors import UserError, require
from ...schema import inline
from ...training import adapted_modules, copy_sharing_embeddings, device_of, model_inputs, proximal_term, to_device
from ...training.batches import EncodedData
from ..interface import ClientTask, PersonaliseConfig
from ..registry import FederatedStage, MethodSpec, StageContext, register_method
from .bilevel import bilevel_local_steps


@dataclass(frozen=True)
class PF2LoRATraining:
    """One client's bilevel round (its keys sit in ``[pf2lora]``)."""

    local_rank: int = 0  # level-2 rank r̃; 0 = ceil(r / 4) (authors: r = 8, r̃ = 2)
    lr: float = 1e-4  # level 1 (A, B), AdamW
    head_lr: float = 1e-4
    lower_lr: float = 1e-2  # level 2 (C_k, D_k), SGD; 0 keeps a client's level 2 as it is
    steps: int = 10  # upper steps per round (the authors communicate every 10 local steps)
    inner_steps: int = 1  # lower steps before each upper step
    batch_size: int = 32

    def __post_init__(self) -> None:
        for k in ("steps", "inner_steps", "batch_size"):
            require(getattr(self, k) >= 1, k, "must be >= 1")
        require(self.local_rank >= 0, "local_rank", "must be >= 0 (0 = ceil(budget / 4))")
        for k in ("lr", "head_lr"):
            require(getattr(self, k) > 0, k, "must be > 0")
        require(self.lower_lr >= 0, "lower_lr", "must be >= 0 (0: level 2 stays as it is)")

    def r_local(self, rank: int) -> int:
        """The level-2 rank for level-1 rank ``rank``."""
        return self.local_rank or max(1, math.ceil(rank / 4))


@dataclass(frozen=True)
class PF2LoRAConfig:
    """``[pf2lora]``: PF2LoRA's federated bilevel training (one training per budget; level-1 rank = the
    budget)."""

    rounds: int = 150
    training: PF2LoRATraining = inline(PF2LoRATraining)

    def __post_init__(self) -> None:
        require(self.rounds >= 1, "rounds", "must be >= 1")


@dataclass(frozen=True)
class PF2LoRASettings:
    """What a PF2LoRA client round gets (the rank and seed come from the runner)."""

    training: PF2LoRATraining = field(default_factory=PF2LoRATraining)
    head: str = "train"  # "adapter": the head gets a two-level adapter too and its weights stay frozen


def client_seed(cid: str, seed: int) -> int:
    return (zlib.crc32(cid.encode()) + 7919 * seed) % 2**31


def two_level_model(base: nn.Module, budget: int, r_local: int, seed: int,
                    head: str = "train") -> tuple[nn.Module, dict[str, TwoLevelLinear]]:
    """A copy of ``base`` with both levels on every adapted linear layer (A, C random; B, D zero);
    the head's weights train only in ``head = "train"`` mode."""
    torch.manual_seed(seed)
    model = copy_sharing_embeddings(base)
    for p in model.parameters():
        p.requires_grad_(False)
    layers = attach_two_level(model, adapted_modules(base, head), budget, r_local)
    if head == "train":
        for p in model.head.parameters():
            p.requires_grad_(True)
    return model, layers


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The head's trainable weights (none when the head carries an adapter instead)."""
    return [] if isinstance(model.head, TwoLevelLinear) else [p for p in model.head.parameters() if p.requires_grad]


def shared_state(model: nn.Module, layers: dict[str, TwoLevelLinear]) -> dict[str, torch.Tensor]:
    """Level 1 of every layer, plus the head's weights when the head itself is trained."""
    head = {} if isinstance(model.head, TwoLevelLinear) else {f"head.{k}": v.detach().clone()
                                                                for k, v in model.head.state_dict().items()}
    return {**level_state(layers, "shared"), **head}


def load_shared_state(model: nn.Module, layers: dict[str, TwoLevelLinear], state: dict[str, torch.Tensor]) -> None:
    level = {k: v for k, v in state.items() if k.rpartition(".")[0] in layers}
    load_level_state(layers, level)
    head = {k[len("head."):]: v for k, v in state.items() if k not in level and k.startswith("head.")}
    if head:
        model.head.load_state_dict(head)


def initial_shared_state(base: nn.Module, s: PF2LoRASettings, rank: int, seed: int) -> dict[str, torch.Tensor]:
    model, layers = two_level_model(base, rank, s.training.r_local(rank), seed, s.head)
    return shared_state(model, layers)


def local_state_path(folder: str | Path, cid: str) -> Path:
    return Path(folder) / f"{cid}.safetensors"


def _cycle(data: EncodedData, batch_size: int, seed: int, device: torch.device):
    gen = torch.Generator().manual_seed(seed)
    while True:
        for batch in data.batches(batch_size, generator=gen, shuffle=True):
            yield to_device(batch, device)


def pf2lora_client_update(base: nn.Module, state: dict[str, torch.Tensor], task: ClientTask, s: PF2LoRASettings,
                          rank: int, seed: int, local_dir: str | Path, proximal_mu: float = 0.0):
    """One client's PF2LoRA round at level-1 rank ``rank``; returns ``(shared_state, num_examples, metrics)``
    and stores level 2."""
    if len(task.train) == 0:
        raise ValueError(f"client {task.client_id} has no training data")
    t = s.training
    model, layers = two_level_model(base, rank, t.r_local(rank), client_seed(task.client_id, seed), s.head)
    load_shared_state(model, layers, state)
    path = local_state_path(local_dir, task.client_id)
    if path.is_file():
        load_level_state(layers, load_file(str(path)))
    shared = [p for layer in layers.values() for p in layer.shared_parameters()]
    local = [p for layer in layers.values() for p in layer.local_parameters()]
    head = head_parameters(model)
    upper = torch.optim.AdamW([{"params": shared, "lr": t.lr}, {"params": head, "lr": t.head_lr}], weight_decay=0.0)

    def loss_fn(batch):
        return task.problem.loss(model(**model_inputs(batch)), batch)

    model.train()
    with proximal_term(proximal_mu, shared + head):  # level 1 and the head travel; level 2 is the client's
        losses = bilevel_local_steps(shared + head, local, loss_fn,
                                     _cycle(task.train, t.batch_size, seed, device_of(model)), t.steps, t.inner_steps,
                                     upper, t.lower_lr)
    if not all(math.isfinite(x) for x in losses):
        raise FloatingPointError(f"client {task.client_id}: non-finite PF2LoRA loss")
    save_tensors(path, level_state(layers, "local"))
    return shared_state(model, layers), len(task.train), {"train_loss": sum(losses) / len(losses)}


class PF2LoRAMethod:
    """``trained[budget] = (shared_state, local_dir)`` from the budget's federated training."""

    name = "pf2lora"
    uses_budget = True

    def __init__(self, trained: dict[int, tuple[dict[str, torch.Tensor], str | None]] | None = None,
                 training: PF2LoRATraining | None = None):
        self.trained = trained or {}
        self.training = training or PF2LoRATraining()

    def personalise(self, base: nn.Module, task: ClientTask, budget: int | None, p: PersonaliseConfig,
                    seed: int) -> list:
        if budget not in self.trained:
            raise UserError(f"pf2lora has no trained shared adapter for budget {budget}")
        recipe = p.recipe
        state, local_dir = self.trained[budget]
        r_local = self.training.r_local(budget)
        model, layers = two_level_model(base, budget, r_local, client_seed(task.client_id, seed), recipe.head)
        load_shared_state(model, layers, state)
        own = local_state_path(local_dir, task.client_id) if local_dir is not None else None
        if own is not None and own.is_file():
            load_level_state(layers, load_file(str(own)))
        local = [w for layer in layers.values() for w in layer.local_parameters()]
        for w in (w for layer in layers.values() for w in layer.shared_parameters()):
            w.requires_grad_(False)
        recipe.train(model, recipe.param_groups(local, head_parameters(model)), task.train, seed, loss=task.problem.loss)
        merge_two_level(layers)
        return task.problem.predict(model, task.test, p.eval_batch_size)


def _trained_pf2lora(base: nn.Module, state, s: PF2LoRASettings, folder: Path, ctx: StageContext):
    return state, str(Path(folder) / "clients")


PF2LORA_STAGE = FederatedStage(
    name="pf2lora", section="pf2lora", per_budget=True, artifact="shared.safetensors", client_state=True,
    client_settings=lambda cfg: PF2LoRASettings(cfg.pf2lora.training, cfg.personalise.recipe.head),
    settings_type=PF2LoRASettings,
    initial_state=lambda base, s, ctx: initial_shared_state(base, s, ctx.budget, ctx.seed),
    client_update=lambda base, state, task, s, ctx: pf2lora_client_update(base, state, task, s, ctx.budget, ctx.seed,
                                                                          ctx.client_state_dir, ctx.proximal_mu),
    finalize=_trained_pf2lora,
)

register_method(MethodSpec(
    "pf2lora", lambda cfg, resources, seed: PF2LoRAMethod(resources, cfg.pf2lora.training),
    section="pf2lora", settings=PF2LoRAConfig, stage=PF2LORA_STAGE, recorded=True,
    summary="PF2LoRA: a federated level-1 LoRA plus each client's own level 2"))
