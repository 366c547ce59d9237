"""FedL2P (Lee et al. 2023) as a baseline: a federatedly meta-learned per-matrix learning rate.

One client's federated round (``fedl2p_client_update``), for a fixed rank budget r:
  1. features = meta_features(base, D_train)     (the PSG's features, FedP²EFT eq. 6)
  2. 20 % of D_train is held out as validation (seeded split)
  3. for each of ``outer_steps`` (authors 3) outer steps:
       η = LRGenerator(features)                  (one rate per LoRA matrix × learnable base rate)
       fine-tune a fresh rank-r LoRA on the rest of D_train with AdamW at the rates η
       dL_V/dη by the implicit function theorem with a Neumann-series inverse
         (``hypergrad.lr_hypergradient``: 3 terms), averaged over up to 16 train/val
         batch pairs, then chained into the generator: Adam 1e-4 (MLP) and 1e-6 (base rates)
  4. only the generator's weights are returned; the server averages them (FedAvg).

Neumann step: the proximal reading of fine-tuning adds diag(1/η) to the Hessian, so the authors'
step α = 0.1 would diverge for η ≪ 1; the step is scaled to α = neumann_lr · min η (the series
then contracts by 1 − neumann_lr along the proximal term). Double backward needs the eager attention
kernel (PyTorch's CPU flash attention has no second derivative): the hypergradient copy of the
model switches to it.

Personalisation (``FedL2PMethod``): η from the budget's trained generator, fine-tune rank-r LoRA
with those rates (the head at ``head_lr``), merge, predict. One federated training per budget.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from ...errors import UserError, require
from ...psg import feature_modules, meta_features
from ...psg.rate_report import rates_by_type, write_rate_report
from ...schema import inline
from ...tasks import Task
from ...training import Recipe, device_of, model_inputs, proximal_term, to_device
from ...training.batches import EncodedData
from ..interface import ClientTask, PersonaliseConfig
from ..lora import lora_model, split_trainable
from ..registry import FederatedStage, MethodSpec, StageContext, register_method
from .generator import PARAMETERISATIONS, LRGenerator
from .hypergrad import lr_hypergradient


@dataclass(frozen=True)
class FedL2PMeta:
    """FedL2P's meta-learning of the rates (its keys sit in ``[fedl2p]``; the authors' settings)."""

    # "linear" (authors): multiplier × base rate, Adam on both; "log": log-multiplier + log base rate, so
    # Adam's steps are relative and the rate can move by constant factors (fedl2p/generator.py)
    parameterisation: str = "linear"
    base_lr: float = 0.0  # initial per-matrix base rate; 0 = personalise.lr
    outer_steps: int = 3  # hypergradient steps per client round
    batch_pairs: int = 16  # (train, val) batch pairs per hypergradient
    neumann_terms: int = 3
    neumann_lr: float = 0.1
    net_lr: float = 1e-4  # the generator MLP's Adam rate (authors 1e-4; "log": a rate for log-multipliers)
    base_lr_lr: float = 1e-6  # the base rates' Adam rate (authors 1e-6; "log": on log η_base, e.g. 0.1)
    val_fraction: float = 0.2  # of each client's train split held out for the hypergradient

    def __post_init__(self) -> None:
        for k in ("outer_steps", "batch_pairs", "neumann_terms"):
            require(getattr(self, k) >= 1, k, "must be >= 1")
        for k in ("neumann_lr", "net_lr", "base_lr_lr"):
            require(getattr(self, k) > 0, k, "must be > 0")
        require(self.base_lr >= 0, "base_lr", "must be >= 0 (0 = personalise.lr)")
        require(0 < self.val_fraction < 1, "val_fraction", "must be in (0, 1)")
        require(self.parameterisation in PARAMETERISATIONS, "parameterisation",
                f"must be one of {list(PARAMETERISATIONS)}")


@dataclass(frozen=True)
class FedL2PConfig:
    """``[fedl2p]``: FedL2P's federated learning-rate generator (one training per budget). Its inner
    fine-tuning is ``[personalise]``'s recipe (epochs, batch size, head rate, …): it learns the rates of
    exactly the fine-tuning it is evaluated with."""

    rounds: int = 150
    meta: FedL2PMeta = inline(FedL2PMeta)

    def __post_init__(self) -> None:
        require(self.rounds >= 1, "rounds", "must be >= 1")


@dataclass(frozen=True)
class FedL2PSettings:
    """What a FedL2P client round gets: the meta settings (base rate resolved) and the inner fine-tuning's
    recipe, whose adapter rates come from the generator (the budget and seed come from the runner)."""

    meta: FedL2PMeta = field(default_factory=FedL2PMeta)
    recipe: Recipe = field(default_factory=Recipe)


def fedl2p_settings(section: FedL2PConfig, p: PersonaliseConfig) -> FedL2PSettings:
    return FedL2PSettings(replace(section.meta, base_lr=section.meta.base_lr or p.recipe.lr), p.recipe)


def new_lr_generator(base: nn.Module, base_lr: float, seed: int = 0, head: str = "train",
                     parameterisation: str = "linear") -> LRGenerator:
    torch.manual_seed(seed)
    n = len(feature_modules(base, head))
    return LRGenerator(2 * n, 2 * n, base_lr=base_lr, parameterisation=parameterisation)


def settings_generator(base: nn.Module, s: FedL2PSettings, state: dict[str, torch.Tensor] | None = None,
                       seed: int = 0) -> LRGenerator:
    """The generator ``s`` describes (initialised from ``seed``), loaded with ``state`` when given."""
    generator = new_lr_generator(base, s.meta.base_lr, seed, s.recipe.head, s.meta.parameterisation)
    if state is not None:
        generator.load_state_dict(state)
    return generator


def meta_optimisers(generator: LRGenerator, s: FedL2PMeta) -> list[torch.optim.Optimizer]:
    """Adam on the MLP at ``net_lr`` and on the base rates at ``base_lr_lr`` (a round's client starts both afresh)."""
    return [torch.optim.Adam(generator.net.parameters(), lr=s.net_lr),
            torch.optim.Adam(generator.base_parameters(), lr=s.base_lr_lr)]


def meta_step(rates: torch.Tensor, hyper: torch.Tensor, optimisers: list[torch.optim.Optimizer]) -> None:
    """One outer step: the hypergradient dL_V/dη chained into the generator that made ``rates``."""
    for opt in optimisers:
        opt.zero_grad(set_to_none=True)
    rates.backward(hyper)
    for opt in optimisers:
        opt.step()


def matrix_labels(base: nn.Module, head: str) -> list[str]:
    """The generator's outputs by name: ``<module>#A``, ``<module>#B`` per adapted module."""
    return [f"{n}#{m}" for n in feature_modules(base, head) for m in ("A", "B")]


def lora_matrices(model: nn.Module, names: list[str]) -> list[nn.Parameter]:
    """The LoRA matrices of a peft model in the generator's order ``[m0.A, m0.B, m1.A, …]``."""
    out = []
    for n in names:
        layer = model.base_model.model.get_submodule(n)
        out += [layer.lora_A["default"].weight, layer.lora_B["default"].weight]
    return out


def finetune_with_rates(base: nn.Module, data: EncodedData, rates: torch.Tensor, budget: int, recipe: Recipe,
                        seed: int, problem: Task) -> tuple[nn.Module, list[nn.Parameter], list[torch.Tensor]]:
    """A fresh rank-``budget`` LoRA trained with one AdamW rate per matrix (the recipe's other settings);
    returns (model, matrices, init)."""
    torch.manual_seed(seed)
    model = lora_model(base, budget, recipe, problem)
    matrices = lora_matrices(model, feature_modules(base, recipe.head))
    init = [p.detach().clone() for p in matrices]
    _, head = split_trainable(model)
    groups = [{"params": [p], "lr": float(r)} for p, r in zip(matrices, rates.detach().tolist(), strict=True)]
    recipe.train(model, [*groups, {"params": head, "lr": recipe.head_lr}], data, seed, loss=problem.loss)
    return model, matrices, init


def _use_eager_attention(model: nn.Module) -> None:
    backbone = model.base_model.model.backbone
    if hasattr(backbone, "set_attn_implementation"):
        backbone.set_attn_implementation("eager")


def rate_hypergradient(model: nn.Module, matrices: list[nn.Parameter], init: list[torch.Tensor], rates: torch.Tensor,
                       train: EncodedData, val: EncodedData, s: FedL2PSettings, seed: int,
                       problem: Task) -> tuple[torch.Tensor, float]:
    """dL_V/dη averaged over up to ``batch_pairs`` (train batch, val batch) pairs; also the mean val loss."""
    _use_eager_attention(model)
    model.eval()
    device = device_of(model)
    gen = torch.Generator().manual_seed(seed)
    train_batches = list(train.batches(s.recipe.batch_size, generator=gen, shuffle=True))
    val_batches = list(val.batches(s.recipe.batch_size, generator=gen, shuffle=True))
    pairs = min(s.meta.batch_pairs, max(len(train_batches), len(val_batches)))

    def loss_on(batch):
        batch = to_device(batch, device)
        return lambda _params: problem.loss(model(**model_inputs(batch)), batch)

    rates = rates.detach()
    alpha = s.meta.neumann_lr * float(rates.min().clamp_min(1e-12))
    total, val_loss = torch.zeros_like(rates), 0.0
    for i in range(pairs):
        tb, vb = train_batches[i % len(train_batches)], val_batches[i % len(val_batches)]
        seen: list[float] = []
        val = loss_on(vb)

        def val_recorded(params, val=val, seen=seen):
            loss = val(params)
            seen.append(float(loss.detach()))
            return loss

        total += lr_hypergradient(loss_on(tb), val_recorded, matrices, init, rates, alpha, s.meta.neumann_terms)
        val_loss += seen[0]
    return total / pairs, val_loss / pairs


def fedl2p_client_update(base: nn.Module, state: dict[str, torch.Tensor], task: ClientTask, s: FedL2PSettings,
                         budget: int, seed: int, proximal_mu: float = 0.0):
    """One client's FedL2P round at rank ``budget``; returns ``(generator_state, num_examples, metrics)``."""
    if len(task.train) < 2:
        raise ValueError(f"client {task.client_id}: FedL2P needs at least 2 training rows (train/val split)")
    feats = meta_features(base, task.train, head=s.recipe.head)
    generator = settings_generator(base, s, state)
    optimisers = meta_optimisers(generator, s.meta)
    train, val = task.train.split(s.meta.val_fraction, seed)
    val_losses = []
    with proximal_term(proximal_mu, list(generator.parameters())):  # the generator is what travels
        for step in range(s.meta.outer_steps):
            rates = generator(feats)
            model, matrices, init = finetune_with_rates(base, train, rates, budget, s.recipe, seed + step,
                                                        task.problem)
            hyper, val_loss = rate_hypergradient(model, matrices, init, rates, train, val, s, seed + step,
                                                 task.problem)
            if not torch.isfinite(hyper).all():
                raise FloatingPointError(f"client {task.client_id}: non-finite FedL2P hypergradient")
            meta_step(rates, hyper, optimisers)
            val_losses.append(val_loss)
            del model
    with torch.no_grad():
        rates = generator(feats)
    metrics = {"val_loss": sum(val_losses) / len(val_losses), "lr_mean": float(rates.mean()),
               "lr_min": float(rates.min()), "lr_max": float(rates.max())}
    return {k: v.detach().clone() for k, v in generator.state_dict().items()}, len(task.train), metrics


class FedL2PMethod:
    """Personalisation with the generator trained for the budget (``generators[budget]``)."""

    name = "fedl2p"
    uses_budget = True

    def __init__(self, generators: dict[int, LRGenerator] | None = None, name: str = "fedl2p"):
        self.generators = generators or {}
        self.name = name

    def personalise(self, base: nn.Module, task: ClientTask, budget: int | None, p: PersonaliseConfig,
                    seed: int) -> list:
        if budget not in self.generators:
            raise UserError(f"{self.name} has no trained learning-rate generator for budget {budget}")
        with torch.no_grad():
            rates = self.generators[budget](meta_features(base, task.train, head=p.recipe.head))
        model, _, _ = finetune_with_rates(base, task.train, rates, budget, p.recipe, seed, task.problem)
        return task.problem.predict(model.merge_and_unload(), task.test, p.eval_batch_size)


def _initial_generator(base: nn.Module, s: FedL2PSettings, ctx: StageContext) -> dict[str, torch.Tensor]:
    return dict(settings_generator(base, s, seed=ctx.seed).state_dict())


def _trained_generator(base: nn.Module, state, s: FedL2PSettings, folder: Path, ctx: StageContext) -> LRGenerator:
    return settings_generator(base, s, state, ctx.seed)


def write_fedl2p_rates(base, generator: LRGenerator, tasks: dict, folder: Path, head: str) -> dict:
    """Every client's generated rates by module type and matrix (``psg.rate_report``)."""
    own = (lambda cid: base.for_client(cid)) if hasattr(base, "for_client") else (lambda cid: base)  # noqa: E731
    labels = matrix_labels(own(""), head)
    pools = {}
    for pool, pool_tasks in tasks.items():
        with torch.no_grad():
            pools[pool] = {t.client_id: rates_by_type(labels, generator(meta_features(own(t.client_id), t.train, head=head)))
                           for t in pool_tasks}
    return write_rate_report(folder, pools, "FedL2P per-matrix rates (geometric mean per module type and matrix)")


def fedl2p_stage(name: str, section: str) -> FederatedStage:
    """FedL2P's federated generator training (one per budget) with the settings of ``section``."""
    return FederatedStage(
        name=name, section=section, per_budget=True, artifact="generator.safetensors",
        client_settings=lambda cfg: fedl2p_settings(getattr(cfg, section), cfg.personalise),
        settings_type=FedL2PSettings, initial_state=_initial_generator,
        client_update=lambda base, state, task, s, ctx: fedl2p_client_update(base, state, task, s, ctx.budget,
                                                                             ctx.seed, ctx.proximal_mu),
        finalize=_trained_generator,
        unrecorded=("lr",),  # the inner fine-tuning's adapter rates come from the generator, not personalise.lr
        report=lambda base, generator, tasks, folder, cfg: write_fedl2p_rates(base, generator, tasks, folder,
                                                                              cfg.personalise.recipe.head),
        round_metrics=("val_loss", "lr_mean"),
    )


FEDL2P_STAGE = fedl2p_stage("fedl2p", "fedl2p")
FEDL2P_PAPER_STAGE = fedl2p_stage("fedl2p-paper", "fedl2p_paper")

register_method(MethodSpec(
    "fedl2p", lambda cfg, resources, seed: FedL2PMethod(resources), section="fedl2p", settings=FedL2PConfig,
    stage=FEDL2P_STAGE, recorded=True, summary="LoRA with per-matrix rates from FedL2P's federated generator"))
register_method(MethodSpec(
    "fedl2p-paper", lambda cfg, resources, seed: FedL2PMethod(resources, name="fedl2p-paper"), section="fedl2p_paper",
    settings=FedL2PConfig, stage=FEDL2P_PAPER_STAGE, recorded=True,
    summary="FedL2P with a second generator trained with [fedl2p_paper] (defaults: the authors' settings)"))
