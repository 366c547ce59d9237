"""BT-LoRA per client (non-federated baseline, FedP²EFT §4.3): λ learned on the client alone from
1e-4 with eq. (1), pruned to the budget, then LoRA fine-tuning with the kept λ frozen — the same
layer and steps as FedP²EFT, without the PSG. λ is learned once per client and serves every budget.
"""

from __future__ import annotations

import torch
from torch import nn

from ..interface import ClientTask, PersonaliseConfig
from ..registry import MethodSpec, register_method
from ..tuned import tuned_spec
from .method import FedP2EFTConfig
from .training import BTSettings, finetune_pruned, personalisation_settings, train_lambdas


class BTLoRAClientMethod:
    name = "bt-lora"
    uses_budget = True

    def __init__(self, bt: BTSettings | None = None):
        self.bt = bt or BTSettings()
        self._lambdas: dict[tuple[str, int], dict[str, torch.Tensor]] = {}

    def client_lambdas(self, base: nn.Module, task: ClientTask, seed: int) -> dict[str, torch.Tensor]:
        key = (task.client_id, seed, len(task.train))  # a rate sweep's held-out split is other data
        if key not in self._lambdas:
            self._lambdas.clear()  # one client at a time: memory stays flat
            # stage 1 with the [fedp2eft] settings (epochs, batch, rates)
            self._lambdas[key] = train_lambdas(base, task.train, 1e-4, self.bt, seed, task.problem)[0]
        return self._lambdas[key]

    def personalise(self, base: nn.Module, task: ClientTask, budget: int | None, p: PersonaliseConfig,
                    seed: int) -> list:
        lambdas = self.client_lambdas(base, task, seed)
        s = personalisation_settings(self.bt, p.recipe)
        return finetune_pruned(base, task.train, task.test, lambdas, budget, s, seed, p.eval_batch_size, task.problem)


BT_LORA = register_method(MethodSpec(
    "bt-lora", lambda cfg, resources, seed: BTLoRAClientMethod(cfg.fedp2eft.bt_settings(cfg.personalise)),
    section="fedp2eft", settings=FedP2EFTConfig, max_budget=lambda cfg: ("fedp2eft.r_init", cfg.fedp2eft.prior.r_init),
    summary="BT-LoRA's λ learned on the client alone (no PSG), pruned to r"))
register_method(tuned_spec(BT_LORA))
