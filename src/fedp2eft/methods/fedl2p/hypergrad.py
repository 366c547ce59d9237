"""FedL2P's hypergradient of the validation loss with respect to per-matrix learning rates.

FedL2P (Lee et al. 2023) learns, for every LoRA matrix m, a learning rate η_m and differentiates the
validation loss after local fine-tuning with the implicit function theorem (IFT), inverting the
Hessian with a truncated Neumann series. For the learning rate to shape the fine-tuned weights at a
fixed point, fine-tuning is read in its proximal (implicit-gradient-step) form, as in iMAML:

    w*(η) = argmin_w  L_T(w) + Σ_m ||w_m − w0_m||² / (2 η_m)

(one implicit gradient step of size η_m from w0 solves exactly this). The IFT then gives

    dL_V/dη_m = − ∂L_V/∂w · H⁻¹ · ∂²L/∂w∂η_m,   H = ∇²L_T(w*) + diag(1/η),
    ∂²L/∂w_m∂η_m = −(w*_m − w0_m) / η_m²   ⇒   dL_V/dη_m = (v H⁻¹)_m · (w*_m − w0_m) / η_m²,

with v = ∂L_V/∂w* and v H⁻¹ ≈ α Σ_{j=0..K} v (I − α H)^j (Neumann; the authors use K = 3, α = 0.1).
Everything here is plain torch on lists of tensors, so it serves the LoRA model and the tests' toy
problems alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

Tensors = list[torch.Tensor]


def proximal_objective(train_loss: Callable[[Sequence[torch.Tensor]], torch.Tensor], params: Sequence[torch.Tensor],
                       init: Sequence[torch.Tensor], lrs: torch.Tensor) -> torch.Tensor:
    prox = sum(((p - p0) ** 2).sum() / (2 * lr) for p, p0, lr in zip(params, init, lrs, strict=True))
    return train_loss(params) + prox


def hvp_operator(objective: Callable[[], torch.Tensor], params: Sequence[torch.Tensor]) -> Callable[[Tensors], Tensors]:
    """v ↦ H v for the Hessian of ``objective`` at ``params``, building ∇objective (with its graph)
    once and differentiating it again for every vector (one forward and first backward for all
    Neumann terms instead of one per term)."""
    grads = torch.autograd.grad(objective(), params, create_graph=True)

    def hvp(vec: Tensors) -> Tensors:
        dot = sum((g * v).sum() for g, v in zip(grads, vec, strict=True))
        return list(torch.autograd.grad(dot, params, retain_graph=True))

    return hvp


def neumann_inverse(vec: Sequence[torch.Tensor], hvp: Callable[[Tensors], Tensors], alpha: float, terms: int) -> Tensors:
    """v H⁻¹ ≈ α Σ_{j=0..terms} v (I − α H)^j (H symmetric)."""
    p = [v.detach().clone() for v in vec]
    acc = [v.detach().clone() for v in vec]
    for _ in range(terms):
        hp = hvp(p)
        p = [pi - alpha * hi.detach() for pi, hi in zip(p, hp, strict=True)]
        acc = [a + pi for a, pi in zip(acc, p, strict=True)]
    return [alpha * a for a in acc]


def lr_hypergradient(
    train_loss: Callable[[Sequence[torch.Tensor]], torch.Tensor],
    val_loss: Callable[[Sequence[torch.Tensor]], torch.Tensor],
    params: Sequence[torch.Tensor],
    init: Sequence[torch.Tensor],
    lrs: torch.Tensor,
    alpha: float = 0.1,
    terms: int = 3,
) -> torch.Tensor:
    """dL_V/dη for every parameter group, at fine-tuned ``params`` (requires_grad) from ``init``."""
    v = torch.autograd.grad(val_loss(params), params)
    lrs = lrs.detach()
    hvp = hvp_operator(lambda: proximal_objective(train_loss, params, init, lrs), params)
    q = neumann_inverse(v, hvp, alpha, terms)
    return torch.stack([(qi * (p.detach() - p0)).sum() / lr ** 2
                        for qi, p, p0, lr in zip(q, params, init, lrs, strict=True)])


def solve_proximal(train_loss: Callable[[Sequence[torch.Tensor]], torch.Tensor], init: Sequence[torch.Tensor],
                   lrs: torch.Tensor, steps: int = 2000, step_size: float = 0.05) -> Tensors:
    """Approximate w*(η) by gradient descent on the proximal objective (for tests and small problems)."""
    params = [p.detach().clone().requires_grad_(True) for p in init]
    for _ in range(steps):
        grads = torch.autograd.grad(proximal_objective(train_loss, params, init, lrs), params)
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p.sub_(step_size * g)
    return params
