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

import torch
from torch import nn

from ..psg import PSG, feature_modules, meta_features
from ..psg.module_types import lambda_statistics
from .base import ClientTask, TrainSettings
from .bt_training import BTSettings, finetune_pruned, personalisation_settings, train_lambdas

REGRESS_LOSSES = ("sum", "mean")


@dataclass(frozen=True)
class PSGSettings:
    bt: BTSettings = field(default_factory=BTSettings)
    regress_steps: int = 10
    regress_lr: float = 1e-4
    regress_loss: str = "sum"  # authors: sum(|λ̂ − λ|) over every output
    psg_init: float = 1e-4  # the PSG's first λ̂ (the authors': BT-LoRA's initial 1e-4)


def new_psg(base: nn.Module, r_init: int, seed: int = 0, head: str = "train", psg_init: float = 1e-4) -> PSG:
    torch.manual_seed(seed)
    n = len(feature_modules(base, head))
    return PSG(2 * n, n, r_init, init_bias=psg_init)


def psg_client_update(base: nn.Module, psg_state: dict[str, torch.Tensor], task: ClientTask, s: PSGSettings):
    """One client's FedP²EFT round; returns ``(psg_state, num_examples, metrics)``."""
    head = s.bt.head
    names = feature_modules(base, head)
    feats = meta_features(base, task.train, head=head)
    psg = new_psg(base, s.bt.r_init, head=head, psg_init=s.psg_init)
    psg.load_state_dict(psg_state)
    lam_hat = psg.lambdas(feats, names)
    trained, losses = train_lambdas(base, task.train, lam_hat, s.bt)
    target = torch.stack([trained[n] for n in names]).float()
    l1 = regress_psg(psg, feats, target, s.regress_steps, s.regress_lr, s.regress_loss)
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


def client_lambdas(base: nn.Module, psg: PSG, task: ClientTask, head: str = "train") -> dict[str, torch.Tensor]:
    return psg.lambdas(meta_features(base, task.train, head=head), feature_modules(base, head))


def rescale_to_mean_one(lambdas: dict[str, torch.Tensor], budget: int) -> dict[str, torch.Tensor]:
    """Divide every λ by the mean of the λ a budget keeps (their relative sizes and the selection stay)."""
    from ..adapters import prune_to_budget

    kept = torch.cat(list(prune_to_budget(lambdas, budget).values()))
    scale = kept.mean().clamp_min(1e-12)
    return {n: v / scale for n, v in lambdas.items()}


class FedP2EFTMethod:
    """Personalisation with a trained PSG (Alg. 2).

    ``fedp2eft-mean1`` is a diagnostic variant, not the paper's method: the PSG's λ are rescaled
    so the kept ones average 1, which keeps the learned rank selection and relative scales but
    removes the global scale of λ (with frozen λ ≪ 1 the LoRA update is scaled down by λ).
    """

    name = "fedp2eft"
    uses_budget = True

    def __init__(self, psg: PSG | None = None, bt: BTSettings | None = None, mean_one: bool = False):
        self.psg = psg
        self.bt = bt or BTSettings()
        self.mean_one = mean_one
        if mean_one:
            self.name = "fedp2eft-mean1"

    def personalise(self, base: nn.Module, task: ClientTask, budget: int | None, settings: TrainSettings) -> list[int]:
        if self.psg is None:
            raise ValueError("fedp2eft needs a trained PSG")
        lambdas = client_lambdas(base, self.psg, task, settings.head)
        if self.mean_one:
            lambdas = rescale_to_mean_one(lambdas, budget)
        s = personalisation_settings(self.bt, settings)
        return finetune_pruned(base, task.train, task.test, lambdas, budget, s, settings.eval_batch_size)
