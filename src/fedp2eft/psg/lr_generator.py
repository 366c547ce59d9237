"""FedL2P's meta-net (Lee et al. 2023), the learning-rate generator compared with the PSG.

η = LRGenerator(features) = clamp(MLP(features), 0, 1000) ⊙ η_base: one learning-rate multiplier per
LoRA matrix (A and B of each adapted module separately, order ``[m0.A, m0.B, m1.A, …]``) times a
learnable per-matrix base rate η_base (initialised to the personalisation lr, authors' 1e-4). The MLP is
in → 100 → ReLU → 100 → ReLU → out, xavier-normal with gain 0.1 and bias 1.0 (so every multiplier
starts near 1), clamped with a straight-through gradient. The features are the same client
meta-features as the PSG's (FedP²EFT eq. 6).
"""

from __future__ import annotations

import torch
from torch import nn

from ..adapters.priors import clamp_st


class LRGenerator(nn.Module):
    def __init__(self, num_features: int, num_matrices: int, hidden: int = 100, base_lr: float = 1e-4,
                 init_gain: float = 0.1, init_bias: float = 1.0):
        super().__init__()
        self.num_matrices = num_matrices
        self.net = nn.Sequential(nn.Linear(num_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, num_matrices))
        for layer in self.net:
            if isinstance(layer, nn.Linear):
                nn.init.xavier_normal_(layer.weight, gain=init_gain)
                nn.init.constant_(layer.bias, init_bias)
        self.base_lr = nn.Parameter(torch.full((num_matrices,), float(base_lr)))

    def multipliers(self, features: torch.Tensor) -> torch.Tensor:
        return clamp_st(self.net(features), 0.0, 1000.0)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``features`` [2L] → per-matrix learning rates η [num_matrices]."""
        return self.multipliers(features) * self.base_lr
