"""``fedp2eft-step``: FedP²EFT whose generator also gives each client its fine-tuning step.

The PSG's λ (eq. 6) fixes which ranks a client keeps and scales them; the rate those ranks are then
fine-tuned at is the one thing a validated sweep (``lora-tuned``) chooses that FedP²EFT does not learn.
Here a second head on the same client features, the *step head*, outputs a log rate per module type
(``psg.module_types``: query, key, value, attention out, FFN up, FFN down, pooler, classifier):

    log η_t = StepHead(features)_t,    η for the A and B of every kept module of type t.

Federated training (one per budget r, after the PSG: the stage ``needs`` it and keeps it frozen), one
client's round — a short local sweep, made cheap by linearising it, then a regression onto its best
rate, as stage 2 regresses the PSG onto stage 1's λ:

  1. λ = PSG(features) pruned to the budget; the client's train rows split into fit and a held-out
     ``val_fraction`` (validation from train rows only, never test);
  2. fine-tune the pruned BT-LoRA on fit at the head's rates η (the personalisation's epochs, batch,
     clipping): Δ = w_T − w_0 for the adapter weights;
  3. the sweep: the held-out loss of w_0 + c·Δ for every c in ``grid`` (to first order, fine-tuning at
     rate c·η moves the weights by c·Δ), c* the best; then per module type t, w_0 + c*·m·Δ_t for every m
     in ``type_grid`` with the other types at c*·Δ, m*_t the best. Each candidate costs one forward pass
     over the held-out rows, not a fine-tuning;
  4. targets log η_t + log(c*·m*_t) for the types that kept ranks (the others keep their prediction);
     ``regress_steps`` Adam steps of the head onto them (L1 in log space);
  5. the head's weights return; the server averages them (FedAvg) and keeps the PSG as it was.

Personalisation fine-tunes once: λ and η from the client's features, the pruned BT-LoRA trained on
the whole train split at η, merged, predicted (``lora-tuned`` fine-tunes once per candidate rate and
once more).

``fedp2eft-sweep`` is the same head regressed onto a *real* sweep (``sweep = "finetune"``): step 2-3 become
one fine-tuning on fit at each rate c·η for c in ``finetune_grid`` (default ½ and 2), scored by held-out
loss, c* the best (every type at c*; no per-type refinement). It costs one fine-tuning per multiplier
instead of one in all, and it exists because the linearisation undervalues larger rates: on federation 0's
bf16 base, w_0 + 3·Δ(1e-3) scored a held-out loss of 1.376 where fine-tuning at 3e-3 scored 0.699, so the
linearised sweep stops at 1e-3 while the real one (and ``lora-tuned``) picks 3e-3
(``benchmarks/step_targets.py``, ``step_targets.json``).

``lora-step`` is the same step head on plain LoRA (rank r on every adapted module, no PSG, no λ): it asks
whether a learned per-client rate helps where the structure is LoRA's own. Its stage needs no PSG.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from ...errors import UserError, require
from ...psg import feature_modules, meta_features
from ...psg.module_types import MODULE_TYPES, module_type
from ...psg.rate_report import write_rate_report
from ...schema import inline
from ...tasks import Task
from ...training import Recipe, model_inputs, proximal_term, to_device
from ...training.batches import EncodedData
from ..interface import ClientTask, PersonaliseConfig
from ..lora import lora_model
from ..registry import FederatedStage, MethodSpec, StageContext, register_method, split_prior
from .method import PSG_STAGE, new_psg
from .training import BTSettings, personalisation_settings, pruned_model

LOG_RATE_RANGE = (math.log(1e-7), math.log(1.0))


class StepHead(nn.Module):
    """log η per module type from the client features: Linear(in, hidden) → PReLU → Linear(hidden, T), the
    last layer zero with bias log(step_init), so every client starts at ``step_init``."""

    def __init__(self, num_features: int, step_init: float, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(num_features, hidden), nn.PReLU(), nn.Linear(hidden, len(MODULE_TYPES)))
        nn.init.zeros_(self.net[2].weight)
        nn.init.constant_(self.net[2].bias, math.log(step_init))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``features`` [2L] → log η [T] (``MODULE_TYPES`` order), clamped to [1e-7, 1] straight-through."""
        out = self.net(features)
        return out + (out.clamp(*LOG_RATE_RANGE) - out).detach()

    def rates(self, features: torch.Tensor) -> dict[str, float]:
        with torch.no_grad():
            return {t: math.exp(float(v)) for t, v in zip(MODULE_TYPES, self(features), strict=True)}


@dataclass(frozen=True)
class StepTraining:
    """One client's round of the step head (its keys sit in ``[fedp2eft_step]`` / ``[lora_step]``)."""

    step_init: float = 0.0  # the head's first rate for every type; 0 = personalise.lr
    grid: list[float] = field(default_factory=lambda: [0.25, 0.5, 1.0, 2.0, 4.0, 8.0])  # global multipliers
    type_grid: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])  # per-type refinement ([] = none)
    regress_steps: int = 10  # Adam steps of the head onto the sweep's log rates
    regress_lr: float = 0.01  # (Adam steps are ~this in log η per parameter; 0.05 oscillated between clients)
    val_fraction: float = 0.2  # of each client's train rows held out for the sweep
    hidden: int = 64
    sweep: str = "linearised"  # "linearised": w_0 + c·Δ of one fine-tuning; "finetune": one fine-tuning per c
    finetune_grid: list[float] = field(default_factory=lambda: [0.5, 2.0])  # the real sweep's multipliers

    def __post_init__(self) -> None:
        require(self.sweep in ("linearised", "finetune"), "sweep", "must be 'linearised' or 'finetune'")
        require(len(self.finetune_grid) > 0 and all(c > 0 for c in self.finetune_grid), "finetune_grid",
                "needs multipliers > 0")
        for k in ("regress_steps", "hidden"):
            require(getattr(self, k) >= 1, k, "must be >= 1")
        require(self.step_init >= 0, "step_init", "must be >= 0 (0 = personalise.lr)")
        require(len(self.grid) > 0 and all(c > 0 for c in self.grid), "grid", "needs multipliers > 0")
        require(all(c > 0 for c in self.type_grid), "type_grid", "multipliers must be > 0")
        require(self.regress_lr > 0, "regress_lr", "must be > 0")
        require(0 < self.val_fraction < 1, "val_fraction", "must be in (0, 1)")


@dataclass(frozen=True)
class FedP2EFTStepConfig:
    """``[fedp2eft_step]`` / ``[lora_step]``: the step head's federated training (one per budget; for
    ``fedp2eft-step`` after the ``[fedp2eft]`` PSG, which it uses frozen). Fine-tuning itself follows
    ``[personalise]``'s recipe (epochs, batch, clipping, head)."""

    rounds: int = 30
    training: StepTraining = inline(StepTraining)
    snapshot_every: int = 0

    def __post_init__(self) -> None:
        require(self.rounds >= 1, "rounds", "must be >= 1")
        require(self.snapshot_every >= 0, "snapshot_every", "must be >= 0 (0 = none)")


@dataclass(frozen=True)
class FedP2EFTSweepConfig(FedP2EFTStepConfig):
    """``[fedp2eft_sweep]``: ``[fedp2eft_step]``'s keys, the head regressed onto a real sweep by default."""

    training: StepTraining = inline(StepTraining, sweep="finetune")


@dataclass(frozen=True)
class StepSettings:
    """What a step-head client round gets (the budget and seed come from the runner)."""

    training: StepTraining = field(default_factory=StepTraining)  # step_init resolved
    bt: BTSettings = field(default_factory=BTSettings)  # the personalisation's fine-tuning (rates: the head's)
    structure: str = "psg"  # "psg": the PSG's pruned BT-LoRA (fedp2eft-step); "lora": rank r everywhere (lora-step)


def step_settings(section: str, structure: str):
    """``client_settings`` of a step stage from config section ``section``."""
    def settings(cfg) -> StepSettings:
        q, p = getattr(cfg, section).training, cfg.personalise
        bt = personalisation_settings(cfg.fedp2eft.bt_settings(p), p.recipe)
        return StepSettings(replace(q, step_init=q.step_init or p.recipe.lr), bt, structure)
    return settings


def adapter_model(base: nn.Module, s: StepSettings, budget: int, seed: int, lambdas: dict[str, torch.Tensor] | None,
                  problem: Task) -> nn.Module:
    """The adapter the step is learned for, before training: the PSG's pruned BT-LoRA, or plain LoRA."""
    torch.manual_seed(seed)
    if s.structure == "lora":
        return lora_model(base, budget, s.bt.recipe, problem)
    return pruned_model(base, lambdas, budget, s.bt, problem)


def load_psg(base: nn.Module, s: StepSettings, state: dict[str, torch.Tensor]) -> nn.Module | None:
    """The frozen PSG travelling in a step stage's state (None for ``lora-step``)."""
    psg_state, _ = split_prior(state, PSG_STAGE.name)
    if s.structure == "lora":
        return None
    psg = new_psg(base, s.bt.prior.r_init, 0, s.bt.recipe.head)
    psg.load_state_dict(psg_state)
    return psg


def load_head(base: nn.Module, s: StepSettings, state: dict[str, torch.Tensor]) -> StepHead:
    head = new_step_head(base, s)
    head.load_state_dict({k.removeprefix("step."): v for k, v in state.items() if k.startswith("step.")})
    return head


def new_step_head(base: nn.Module, s: StepSettings, seed: int = 0) -> StepHead:
    torch.manual_seed(seed)
    return StepHead(2 * len(feature_modules(base, s.bt.recipe.head)), s.training.step_init, s.training.hidden)


def adapter_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """The trainable LoRA matrices of a peft model by module type."""
    groups: dict[str, list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad and ("lora_A" in name or "lora_B" in name):
            groups.setdefault(module_type(name.split(".lora_")[0].removeprefix("base_model.model.")), []).append(p)
    return groups


def train_at_rates(model: nn.Module, train: EncodedData, rates: dict[str, float], recipe: Recipe, seed: int,
                   problem: Task) -> nn.Module:
    """AdamW at each module type's rate (a trained head at ``head_lr``; the recipe's other settings), in
    place; returns ``model``."""
    head = [p for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n]
    groups = [{"params": ps, "lr": rates[t]} for t, ps in adapter_groups(model).items()]
    recipe.train(model, [*groups, {"params": head, "lr": recipe.head_lr}], train, seed, loss=problem.loss)
    return model


@torch.no_grad()
def held_out_loss(model: nn.Module, data: EncodedData, problem: Task, batch_size: int) -> float:
    device = next(model.parameters()).device
    total, n = 0.0, 0
    for batch in data.batches(batch_size):
        batch = to_device(batch, device)
        rows = len(batch["input_ids"])
        total += float(problem.loss(model(**model_inputs(batch)), batch)) * rows
        n += rows
    return total / max(n, 1)


@torch.no_grad()
def linearised_sweep(model: nn.Module, init: dict[str, list[torch.Tensor]], val: EncodedData, problem: Task,
                     grid: tuple[float, ...], type_grid: tuple[float, ...], batch_size: int) -> tuple[dict[str, float], dict]:
    """Steps 3-4: the multiplier of each module type's rate whose linearised update w_0 + c·Δ gives the
    lowest held-out loss (global c first, then a per-type factor); also the losses it saw."""
    groups = adapter_groups(model)
    trained = {t: [p.detach().clone() for p in ps] for t, ps in groups.items()}

    def place(scale: dict[str, float]) -> float:
        for t, ps in groups.items():
            for p, w0, w in zip(ps, init[t], trained[t], strict=True):
                p.copy_(w0 + scale[t] * (w - w0))
        return held_out_loss(model, val, problem, batch_size)

    model.eval()
    losses = {c: place(dict.fromkeys(groups, c)) for c in grid}
    best = min(grid, key=lambda c: (losses[c], abs(math.log(c))))
    scale = dict.fromkeys(groups, best)
    for t in groups:
        tried = {m: place({**scale, t: best * m}) for m in type_grid}
        if tried:
            scale[t] = best * min(type_grid, key=lambda m: (tried[m], abs(math.log(m))))
    place(dict.fromkeys(groups, 1.0))  # the trained weights back
    return scale, {"val_loss": losses.get(1.0, float("nan")), "val_loss_best": losses[best], "multiplier": best}


def finetuned_sweep(base: nn.Module, s: StepSettings, budget: int, seed: int, lambdas, rates: dict[str, float],
                    fit: EncodedData, val: EncodedData, problem: Task) -> tuple[dict[str, float], dict]:
    """``sweep = "finetune"``: the adapter fine-tuned on fit at c·η for every c in ``finetune_grid``, the
    multiplier of the lowest held-out loss (the one nearer 1 on a tie) for every module type that kept ranks;
    also the losses it saw."""
    losses, types = {}, []
    for c in s.training.finetune_grid:
        model = adapter_model(base, s, budget, seed, lambdas, problem)
        types = list(adapter_groups(model))
        train_at_rates(model, fit, {t: rates[t] * c for t in rates}, s.bt.recipe, seed, problem)
        model.eval()
        losses[c] = held_out_loss(model, val, problem, s.bt.recipe.batch_size)
        del model
    best = min(losses, key=lambda c: (losses[c], abs(math.log(c))))
    return dict.fromkeys(types, best), {"val_loss": losses.get(1.0, float("nan")), "val_loss_best": losses[best],
                                        "multiplier": best}


def regress_head(head: StepHead, feats: torch.Tensor, targets: dict[str, float], steps: int, lr: float) -> float:
    """Adam steps of the L1 loss between the head's log η and the target log η of the types given; returns
    the last mean absolute error (in log η)."""
    idx = torch.tensor([MODULE_TYPES.index(t) for t in targets])
    goal = torch.tensor([math.log(v) for v in targets.values()]).clamp(*LOG_RATE_RANGE)
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    err = torch.zeros(())
    for _ in range(steps):
        err = (head(feats)[idx] - goal).abs()
        opt.zero_grad(set_to_none=True)
        err.sum().backward()
        opt.step()
    return float(err.detach().mean())


def step_client_update(base: nn.Module, state: dict[str, torch.Tensor], task: ClientTask, s: StepSettings,
                       budget: int, seed: int, proximal_mu: float = 0.0):
    """One client's round (steps 1-5 above) at rank budget ``budget``; returns ``(state, num_examples,
    metrics)``."""
    if len(task.train) < 2:
        raise ValueError(f"client {task.client_id}: the step head needs at least 2 training rows (fit/held-out)")
    t, mode = s.training, s.bt.recipe.head
    psg, head = load_psg(base, s, state), load_head(base, s, state)
    feats = meta_features(base, task.train, head=mode)
    lambdas = psg.lambdas(feats, feature_modules(base, mode)) if psg is not None else None
    fit, val = task.train.split(t.val_fraction, seed)
    rates = head.rates(feats)
    if t.sweep == "finetune":
        scale, seen = finetuned_sweep(base, s, budget, seed, lambdas, rates, fit, val, task.problem)
    else:
        model = adapter_model(base, s, budget, seed, lambdas, task.problem)
        init = {k: [p.detach().clone() for p in ps] for k, ps in adapter_groups(model).items()}
        train_at_rates(model, fit, rates, s.bt.recipe, seed, task.problem)
        scale, seen = linearised_sweep(model, init, val, task.problem, tuple(t.grid), tuple(t.type_grid),
                                       s.bt.recipe.batch_size)
        del model
    targets = {k: rates[k] * scale[k] for k in scale}
    with proximal_term(proximal_mu, list(head.parameters())):  # the step head is what travels (not the PSG)
        err = regress_head(head, feats, targets, t.regress_steps, t.regress_lr)
    kept = list(scale)
    metrics = {**seen, "l1": err, "lr_mean": math.exp(sum(math.log(rates[k]) for k in kept) / max(len(kept), 1)),
               "target_lr_mean": math.exp(sum(math.log(targets[k]) for k in kept) / max(len(kept), 1))}
    prior, _ = split_prior(state, PSG_STAGE.name)
    new_state = {**{f"{PSG_STAGE.name}.{k}": v for k, v in prior.items()},
                 **{f"step.{k}": v.detach().clone() for k, v in head.state_dict().items()}}
    return new_state, len(task.train), metrics


@dataclass
class StepResource:
    """A trained step stage: the PSG it used (frozen; None for ``lora-step``) and the step head."""

    psg: nn.Module | None
    head: StepHead
    settings: StepSettings


class FedP2EFTStepMethod:
    """Alg. 2 with the rate from the step head: one fine-tuning per client."""

    name = "fedp2eft-step"
    uses_budget = True

    def __init__(self, resources: dict[int, StepResource] | None = None, bt: BTSettings | None = None,
                 name: str = "fedp2eft-step"):
        self.resources = resources or {}
        self.bt = bt or BTSettings()
        self.name = name

    def personalise(self, base: nn.Module, task: ClientTask, budget: int | None, p: PersonaliseConfig,
                    seed: int) -> list:
        if budget not in self.resources:
            raise UserError(f"{self.name} has no trained step head for budget {budget}")
        r = self.resources[budget]
        head = p.recipe.head
        s = replace(r.settings, bt=personalisation_settings(self.bt, p.recipe))
        feats = meta_features(base, task.train, head=head)
        lambdas = r.psg.lambdas(feats, feature_modules(base, head)) if r.psg is not None else None
        model = train_at_rates(adapter_model(base, s, budget, seed, lambdas, task.problem), task.train,
                               r.head.rates(feats), p.recipe, seed, task.problem)
        return task.problem.predict(model.merge_and_unload(), task.test, p.eval_batch_size)


def _initial_head(base: nn.Module, s: StepSettings, ctx: StageContext) -> dict[str, torch.Tensor]:
    return {f"step.{k}": v for k, v in new_step_head(base, s).state_dict().items()}


def _trained(base: nn.Module, state, s: StepSettings, folder: Path, ctx: StageContext) -> StepResource:
    return StepResource(load_psg(base, s, state), load_head(base, s, state), s)


def write_step_rates(base, resource: StepResource, tasks: dict, folder: Path, head_mode: str) -> dict:
    """Every client's rate per module type from the trained head (``psg.rate_report``)."""
    own = (lambda cid: base.for_client(cid)) if hasattr(base, "for_client") else (lambda cid: base)  # noqa: E731
    pools = {pool: {t.client_id: resource.head.rates(meta_features(own(t.client_id), t.train, head=head_mode))
                    for t in pool_tasks} for pool, pool_tasks in tasks.items()}
    return write_rate_report(folder, pools, "step head: rate per module type (types without kept ranks unused)")


def step_stage(name: str, section: str, structure: str) -> FederatedStage:
    """A step head's federated training (per budget) with the settings of ``section``; on the PSG's
    structure it needs the PSG stage."""
    on_psg = structure == "psg"
    return FederatedStage(
        name=name, section=section, per_budget=True, artifact="step.safetensors",
        client_settings=step_settings(section, structure), settings_type=StepSettings, initial_state=_initial_head,
        client_update=lambda base, state, task, s, ctx: step_client_update(base, state, task, s, ctx.budget,
                                                                           ctx.seed, ctx.proximal_mu),
        finalize=_trained,
        needs=PSG_STAGE.name if on_psg else None,
        report=lambda base, resource, tasks, folder, cfg: write_step_rates(base, resource, tasks, folder,
                                                                           cfg.personalise.recipe.head),
        round_metrics=("l1", "val_loss", "lr_mean"),
        added_keys={"sweep": "linearised", "finetune_grid": [0.5, 2.0]},  # (issue 26) earlier folders: linearised
    )


def _step_method(name: str):
    return lambda cfg, resources, seed: FedP2EFTStepMethod(
        resources, cfg.fedp2eft.bt_settings(cfg.personalise), name=name)


STEP_STAGE = step_stage("fedp2eft-step", "fedp2eft_step", "psg")
SWEEP_STAGE = step_stage("fedp2eft-sweep", "fedp2eft_sweep", "psg")
LORA_STEP_STAGE = step_stage("lora-step", "lora_step", "lora")

register_method(MethodSpec(
    "fedp2eft-step", _step_method("fedp2eft-step"), section="fedp2eft_step", settings=FedP2EFTStepConfig,
    stage=STEP_STAGE, recorded=True, max_budget=lambda cfg: ("fedp2eft.r_init", cfg.fedp2eft.prior.r_init),
    summary="FedP²EFT with a per-client rate per module type from a federated step head; one fine-tuning"))
register_method(MethodSpec(
    "fedp2eft-sweep", _step_method("fedp2eft-sweep"), section="fedp2eft_sweep", settings=FedP2EFTSweepConfig,
    stage=SWEEP_STAGE, recorded=True, max_budget=lambda cfg: ("fedp2eft.r_init", cfg.fedp2eft.prior.r_init),
    summary="FedP²EFT with its rate from a step head regressed onto real local sweeps; one fine-tuning"))
register_method(MethodSpec(
    "lora-step", _step_method("lora-step"), section="lora_step", settings=FedP2EFTStepConfig, stage=LORA_STEP_STAGE,
    recorded=True, summary="LoRA with a per-client rate per module type from a federated step head; one fine-tuning"))
