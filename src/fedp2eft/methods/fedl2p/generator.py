"""FedL2P's meta-net (Lee et al. 2023), the learning-rate generator compared with the PSG.

Two parameterisations of the per-matrix rates η (one per LoRA matrix: A and B of each adapted module
separately, order ``[m0.A, m0.B, m1.A, …]``), from the same client meta-features as the PSG's
(FedP²EFT eq. 6):

- ``"linear"`` (the authors'): η = clamp(MLP(features), 0, 1000) ⊙ η_base, a multiplier per matrix times a
  learnable per-matrix base rate η_base (initialised to the personalisation lr, authors' 1e-4). The MLP is
  in → 100 → ReLU → 100 → ReLU → out, xavier-normal with gain 0.1 and bias 1.0 (every multiplier starts
  near 1), clamped with a straight-through gradient. Adam moves η_base by ~its meta-rate per step
  (authors 1e-6 against η_base = 1e-4), so the rate changes by a few per cent over a run.
- ``"log"``: log η = clamp(MLP(features), −10, 10) + log η_base, with the same MLP whose last layer starts
  at zero (every multiplier starts at exactly 1) and a learnable log η_base. Adam's steps are then
  relative: a meta-rate of 0.1 moves η by up to ×e^0.1 per step, so ×30 takes ~35 consistent steps.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ...adapters.priors import clamp_st

PARAMETERISATIONS = ("linear", "log")


class LRGenerator(nn.Module):
    def __init__(self, num_features: int, num_matrices: int, hidden: int = 100, base_lr: float = 1e-4,
                 init_gain: float = 0.1, init_bias: float = 1.0, parameterisation: str = "linear"):
        super().__init__()
        if parameterisation not in PARAMETERISATIONS:
            raise ValueError(f"parameterisation must be one of {PARAMETERISATIONS}, got {parameterisation!r}")
        self.num_matrices, self.parameterisation = num_matrices, parameterisation
        self.net = nn.Sequential(nn.Linear(num_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, num_matrices))
        for layer in self.net:
            if isinstance(layer, nn.Linear):
                nn.init.xavier_normal_(layer.weight, gain=init_gain)
                nn.init.constant_(layer.bias, init_bias)
        if parameterisation == "log":
            nn.init.zeros_(self.net[-1].weight)  # log-multipliers start at exactly 0: η = η_base
            nn.init.zeros_(self.net[-1].bias)
            self.log_base_lr = nn.Parameter(torch.full((num_matrices,), math.log(base_lr)))
        else:
            self.base_lr = nn.Parameter(torch.full((num_matrices,), float(base_lr)))

    def base_parameters(self) -> list[nn.Parameter]:
        """The learnable base rates (η_base or log η_base): their own meta-optimiser and rate."""
        return [self.log_base_lr if self.parameterisation == "log" else self.base_lr]

    def multipliers(self, features: torch.Tensor) -> torch.Tensor:
        if self.parameterisation == "log":
            return torch.exp(clamp_st(self.net(features), -10.0, 10.0))
        return clamp_st(self.net(features), 0.0, 1000.0)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``features`` [2L] → per-matrix learning rates η [num_matrices]."""
        if self.parameterisation == "log":
            return torch.exp(clamp_st(self.net(features), -10.0, 10.0) + self.log_base_lr)
        return self.multipliers(features) * self.base_lr
