"""FedP²EFT (Lee et al. 2025), as plain functions of state and client data.

Federated training of the PSG (Alg. 1), one client's round:
  1. features = meta_features(base, D_train)                    (eq. 6)
  2. λ̂ = PSG(φ; features)
  3. BT-LoRA from λ̂ trained with eq. (1) for the local epochs   (stage 1) → trained λ
  4. PSG regressed onto the trained λ with an L1 loss            (stage 2; 10 Adam steps, lr 1e-4,
                                                                 summed over outputs as the authors do)
  5. only φ (the PSG weights) is returned; the server averages φ weighted by |D_train|.

Personalisation of any client, seen or unseen (Alg. 2): features → PSG → λ; keep the global
top-(r·L); frozen λ on fresh LoRA where a module keeps ranks; fine-tune; merge; evaluate.
One trained PSG serves every budget r with r·L ≤ L·r_init.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ...errors import require
from ...psg import client_lambdas, feature_modules, meta_features
from ...psg.module_types import lambda_statistics
from ...schema import inline
from ...training import Recipe, proximal_term
from ..interface import ClientTask, PersonaliseConfig
from ..registry import FederatedStage, MethodSpec, StageContext, register_method
from ..tuned import tuned_spec
from .generator import PSG
from .report import write_lambda_report, write_lambda_trajectory
from .training import (
    BTPrior,
    BTSettings,
    finetune_pruned_model,
    module_widths,
    personalisation_settings,
    train_lambdas,
    width_free_scores,
)

REGRESS_LOSSES = ("sum", "mean")


@dataclass(frozen=True)
class PSGRegression:
    """Stage 2 (the PSG regressed onto the trained λ) and the untrained PSG's output (keys in ``[fedp2eft]``)."""

    regress_steps: int = 10  # Adam steps of the PSG onto the trained λ
    regress_lr: float = 1e-4
    regress_loss: str = "sum"  # L1 over the PSG outputs: "sum" (authors: sum(|λ̂ − λ|) over every output) or "mean"
    psg_init: float = 1e-4  # the untrained PSG's λ̂ (authors: 1e-4, BT-LoRA's initial λ)

    def __post_init__(self) -> None:
        require(self.regress_steps >= 1, "regress_steps", "must be >= 1")
        require(self.regress_lr > 0, "regress_lr", "must be > 0")
        require(self.regress_loss in REGRESS_LOSSES, "regress_loss", f"must be one of {list(REGRESS_LOSSES)}")
        require(1e-4 <= self.psg_init <= 1000, "psg_init", "must be in [1e-4, 1000] (λ's range)")


@dataclass(frozen=True)
class PSGSettings:
    """What a PSG client round gets (the seed comes from the runner)."""

    bt: BTSettings = field(default_factory=BTSettings)  # stage 1
    regression: PSGRegression = field(default_factory=PSGRegression)


@dataclass(frozen=True)
class FedP2EFTConfig:
    """``[fedp2eft]`` (and ``[fedp2eft_paper]``, method ``fedp2eft-paper``): federated PSG training
    (Alg. 1) and BT-LoRA's stage 1 (eq. 1); defaults are the authors'. Stage 1 fine-tunes with this
    section's rates, epochs and batch size and ``[personalise]``'s head mode and fixed A."""

    rounds: int = 150  # PSG federated rounds
    prior: BTPrior = inline(BTPrior)  # r_init, lora_alpha, alpha_s, alpha_p, lambda_lr
    lr: float = 1e-4  # stage 1: A, B
    head_lr: float = 1e-4  # stage 1: a trained head
    local_epochs: int = 2  # stage 1
    batch_size: int = 32  # stage 1
    regression: PSGRegression = inline(PSGRegression)  # regress_steps, regress_lr, regress_loss, psg_init
    snapshot_every: int = 0  # > 0: keep the PSG of every k-th round in psg/seed<S>/snapshots/

    def __post_init__(self) -> None:
        for k in ("rounds", "local_epochs", "batch_size"):
            require(getattr(self, k) >= 1, k, "must be >= 1")
        for k in ("lr", "head_lr"):
            require(getattr(self, k) > 0, k, "must be > 0")
        require(self.snapshot_every >= 0, "snapshot_every", "must be >= 0 (0 = none)")

    def bt_settings(self, personalise: PersonaliseConfig) -> BTSettings:
        """Stage 1's settings; the adapter recipe (head mode, fixed A) comes from ``[personalise]``."""
        p = personalise.recipe
        stage1 = Recipe(lr=self.lr, head_lr=self.head_lr, epochs=self.local_epochs, batch_size=self.batch_size,
                        head=p.head, lora_a_seed=p.lora_a_seed)
        return BTSettings(self.prior, stage1)

    def psg_settings(self, personalise: PersonaliseConfig) -> PSGSettings:
        return PSGSettings(self.bt_settings(personalise), self.regression)


def new_psg(base: nn.Module, r_init: int, seed: int = 0, head: str = "train", psg_init: float = 1e-4) -> PSG:
    torch.manual_seed(seed)
    n = len(feature_modules(base, head))
    return PSG(2 * n, n, r_init, init_bias=psg_init)


def settings_psg(base: nn.Module, s: PSGSettings, seed: int, state: dict[str, torch.Tensor] | None = None) -> PSG:
    """The PSG ``s`` describes (outputs for every adapted module of ``base``, initialised from ``seed``),
    loaded with ``state`` when given: the one place a PSG is built from settings."""
    psg = new_psg(base, s.bt.prior.r_init, seed, s.bt.recipe.head, s.regression.psg_init)
    if state is not None:
        psg.load_state_dict(state)
    return psg


def psg_client_update(base: nn.Module, psg_state: dict[str, torch.Tensor], task: ClientTask, s: PSGSettings,
                      seed: int, proximal_mu: float = 0.0):
    """One client's FedP²EFT round (``seed``: the round's); returns ``(psg_state, num_examples, metrics)``."""
    head = s.bt.recipe.head
    names = feature_modules(base, head)
    feats = meta_features(base, task.train, head=head)
    psg = settings_psg(base, s, seed, psg_state)
    lam_hat = psg.lambdas(feats, names)
    trained, losses = train_lambdas(base, task.train, lam_hat, s.bt, seed, task.problem)
    target = torch.stack([trained[n] for n in names]).float()
    g = s.regression
    with proximal_term(proximal_mu, list(psg.parameters())):  # the PSG is what travels
        l1 = regress_psg(psg, feats, target, g.regress_steps, g.regress_lr, g.regress_loss)
    metrics = {"train_loss": sum(losses) / max(len(losses), 1), "l1": l1,
               "lambda_hat_mean": float(torch.stack(list(lam_hat.values())).mean()),
               **lambda_statistics(names, target)}
    return {k: v.detach().clone() for k, v in psg.state_dict().items()}, len(task.train), metrics


def regress_psg(psg: PSG, feats: torch.Tensor, target: torch.Tensor, steps: int, lr: float,
                loss: str = "sum") -> float:
    """Stage 2: ``steps`` Adam steps of the L1 loss between PSG(features) and the trained λ (summed
    over every output, as the authors do, or averaged); returns the last mean absolute error."""
    opt = torch.optim.Adam(psg.parameters(), lr=lr)
    diff = torch.zeros(())
    for _ in range(steps):
        diff = (psg(feats) - target).abs()
        l1 = diff.sum() if loss == "sum" else diff.mean()
        opt.zero_grad(set_to_none=True)
        l1.backward()
        opt.step()
    return float(diff.detach().mean())


def rescale_to_mean_one(lambdas: dict[str, torch.Tensor], budget: int) -> dict[str, torch.Tensor]:
    """Divide every λ by the mean of the λ a budget keeps (their relative sizes and the selection stay)."""
    from ...adapters import prune_to_budget

    kept = torch.cat(list(prune_to_budget(lambdas, budget).values()))
    scale = kept.mean().clamp_min(1e-12)
    return {n: v / scale for n, v in lambdas.items()}


class FedP2EFTMethod:
    """Personalisation with a trained PSG (Alg. 2).

    ``fedp2eft-mean1`` is a diagnostic variant, not the paper's method: the PSG's λ are rescaled
    so the kept ones average 1, which keeps the learned rank selection and relative scales but
    removes the global scale of λ (with frozen λ ≪ 1 the LoRA update is scaled down by λ).
    ``fedp2eft-widthfree`` keeps the ranks with the largest λ·√(d̄/d_out) instead of the largest λ
    (``width_free_scores``: module width taken out of the selection); the kept ranks keep their λ.
    """

    name = "fedp2eft"
    uses_budget = True

    def __init__(self, psg: PSG | None = None, bt: BTSettings | None = None, mean_one: bool = False,
                 width_free: bool = False):
        self.psg = psg
        self.bt = bt or BTSettings()
        self.mean_one = mean_one
        self.width_free = width_free
        if mean_one:
            self.name = "fedp2eft-mean1"

    def personalised_model(self, base: nn.Module, task: ClientTask, budget: int | None, p: PersonaliseConfig,
                           seed: int) -> nn.Module:
        """Alg. 2 for one client: its λ from the PSG, pruned to the budget, fine-tuned (peft model, unmerged:
        what ``fedp2eft export`` writes)."""
        if self.psg is None:
            raise ValueError("fedp2eft needs a trained PSG")
        lambdas = client_lambdas(base, self.psg, task, p.recipe.head)
        if self.mean_one:
            lambdas = rescale_to_mean_one(lambdas, budget)
        s = personalisation_settings(self.bt, p.recipe)
        select_by = width_free_scores(lambdas, module_widths(base, list(lambdas))) if self.width_free else None
        return finetune_pruned_model(base, task.train, lambdas, budget, s, seed, task.problem, select_by)

    def personalise(self, base: nn.Module, task: ClientTask, budget: int | None, p: PersonaliseConfig,
                    seed: int) -> list:
        model = self.personalised_model(base, task, budget, p, seed).merge_and_unload()
        return task.problem.predict(model, task.test, p.eval_batch_size)


def _new_psg_state(base: nn.Module, s: PSGSettings, ctx: StageContext) -> dict[str, torch.Tensor]:
    return dict(settings_psg(base, s, ctx.seed).state_dict())


def _trained_psg(base: nn.Module, state, s: PSGSettings, folder: Path, ctx: StageContext) -> PSG:
    return settings_psg(base, s, ctx.seed, state)


def psg_stage(name: str, section: str) -> FederatedStage:
    """The PSG's federated training (Alg. 1) with the settings of config section ``section``."""
    return FederatedStage(
        name=name, section=section, per_budget=False, artifact="psg.safetensors",
        client_settings=lambda cfg: getattr(cfg, section).psg_settings(cfg.personalise),
        settings_type=PSGSettings, initial_state=_new_psg_state, finalize=_trained_psg,
        client_update=lambda base, state, task, s, ctx: psg_client_update(base, state, task, s, ctx.seed,
                                                                                        ctx.proximal_mu),
        after=write_lambda_trajectory, report=lambda base, psg, tasks, folder, cfg: write_lambda_report(
            base, psg, tasks, folder, cfg.personalise.recipe.head),
        round_metrics=("train_loss", "l1", "lambda_mean"),
    )


PSG_STAGE = psg_stage("psg", "fedp2eft")
PSG_PAPER_STAGE = psg_stage("psg-paper", "fedp2eft_paper")


def _budget_limit(section: str):
    return lambda cfg: (f"{section}.r_init", getattr(cfg, section).prior.r_init)


def _fedp2eft(section: str, mean_one: bool = False, name: str = "fedp2eft", width_free: bool = False):
    def build(cfg, resources: dict, seed: int) -> FedP2EFTMethod:
        method = FedP2EFTMethod(resources.get(None), getattr(cfg, section).bt_settings(cfg.personalise),
                                mean_one=mean_one, width_free=width_free)
        method.name = name
        return method
    return build


FEDP2EFT = register_method(MethodSpec(
    "fedp2eft", _fedp2eft("fedp2eft"), section="fedp2eft", settings=FedP2EFTConfig, stage=PSG_STAGE,
    max_budget=_budget_limit("fedp2eft"), summary="FedP²EFT: per-client rank structure from the federated PSG"))
register_method(tuned_spec(FEDP2EFT))
register_method(MethodSpec(
    "fedp2eft-mean1", _fedp2eft("fedp2eft", mean_one=True, name="fedp2eft-mean1"), section="fedp2eft",
    settings=FedP2EFTConfig, stage=PSG_STAGE, max_budget=_budget_limit("fedp2eft"),
    summary="diagnostic: FedP²EFT with the kept λ rescaled to mean 1"))
register_method(MethodSpec(
    "fedp2eft-widthfree", _fedp2eft("fedp2eft", name="fedp2eft-widthfree", width_free=True), section="fedp2eft",
    settings=FedP2EFTConfig, stage=PSG_STAGE, max_budget=_budget_limit("fedp2eft"),
    summary="FedP²EFT keeping the ranks of largest λ·√(d̄/d_out): module width out of the selection"))
register_method(MethodSpec(
    "fedp2eft-paper", _fedp2eft("fedp2eft_paper", name="fedp2eft-paper"), section="fedp2eft_paper",
    settings=FedP2EFTConfig, stage=PSG_PAPER_STAGE, recorded=True, max_budget=_budget_limit("fedp2eft_paper"),
    summary="FedP²EFT with a second PSG trained with [fedp2eft_paper] (the authors' recipe)"))
