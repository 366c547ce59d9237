"""The PSG network (FedP²EFT §3.3): λ̂ = MLP(φ; features), eq. (6).

Linear(in, 2·in) → PReLU → Linear(2·in, L · r_init), output clamped to [1e-4, 1000] with a
straight-through gradient. Initialised xavier-normal with a tiny gain (1e-6) and bias 1e-4, so
the first prediction is ≈ 1e-4 for every rank (BT-LoRA's initial λ); ``init_bias`` sets the
output layer's bias, i.e. the first prediction, to another value (e.g. λ̂ = 1).
"""

from __future__ import annotations

import torch
from torch import nn

from ...adapters.priors import clamp_st


class PSG(nn.Module):
    def __init__(self, num_features: int, num_modules: int, r_init: int, init_gain: float = 1e-6,
                 init_bias: float = 1e-4):
        super().__init__()
        self.num_modules, self.r_init = num_modules, r_init
        hidden = 2 * num_features
        self.net = nn.Sequential(nn.Linear(num_features, hidden), nn.PReLU(), nn.Linear(hidden, num_modules * r_init))
        for layer in (self.net[0], self.net[2]):
            nn.init.xavier_normal_(layer.weight, gain=init_gain)
        nn.init.constant_(self.net[0].bias, 1e-4)
        nn.init.constant_(self.net[2].bias, init_bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``features`` [..., 2L] → λ̂ [..., L, r_init]."""
        out = clamp_st(self.net(features))
        return out.view(*features.shape[:-1], self.num_modules, self.r_init)

    def lambdas(self, features: torch.Tensor, module_names: list[str]) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            lam = self(features)
        return {n: lam[i].clone() for i, n in enumerate(module_names)}
