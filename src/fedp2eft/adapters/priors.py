"""BT-LoRA's priors (FedP²EFT eq. 4 and 5), scaled as in eq. (1):

    L = L_CE + (α_s / N) · L_s(λ, B) + (α_p / N) · L_p(λ)
    L_s(λ, B) = Σ_l Σ_i ||B_{l,:,i}||_1 / λ_{l,i}          (eq. 4: Laplace prior on B's columns)
    L_p(λ)    = Σ_l Σ_i (log λ_{l,i} + 100 · λ_{l,i})     (eq. 5: Gamma hyper-prior on λ)

with N the client's number of training examples and λ clamped to [1e-4, 1000] with a
straight-through gradient inside the penalties. B is measured as |B − B_init| with B_init = 0.
"""

from __future__ import annotations

import torch
from torch import nn

LAMBDA_MIN, LAMBDA_MAX = 1e-4, 1000.0


def clamp_st(x: torch.Tensor, lo: float = LAMBDA_MIN, hi: float = LAMBDA_MAX) -> torch.Tensor:
    """Clamp in the forward pass, identity gradient in the backward pass (straight-through)."""
    return x + (x.clamp(lo, hi) - x).detach()


def significance_penalty(lam: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Eq. (4) for one module: Σ_i ||B[:, i]||_1 / λ_i (B has shape [out, r])."""
    return (b.abs().sum(0) / clamp_st(lam)).sum()


def prior_penalty(lam: torch.Tensor) -> torch.Tensor:
    """Eq. (5) for one module: Σ_i log λ_i + 100 λ_i."""
    lam = clamp_st(lam)
    return (torch.log(lam) + 100.0 * lam).sum()


def bt_penalty(model: nn.Module, num_examples: int, alpha_s: float = 100.0, alpha_p: float = 0.01,
               adapter: str = "default") -> torch.Tensor:
    """(α_s/N) L_s + (α_p/N) L_p summed over every BT-LoRA module of ``model``."""
    from .bt_lora import bt_modules

    total_s, total_p = 0.0, 0.0
    for module in bt_modules(model).values():
        lam = module.lora_lambda[adapter]
        total_s = total_s + significance_penalty(lam, module.lora_B[adapter].weight)
        total_p = total_p + prior_penalty(lam)
    n = max(int(num_examples), 1)
    return (alpha_s / n) * total_s + (alpha_p / n) * total_p
