"""PF2LoRA's bilevel training, one client's local phase, as a plain function.

Upper level: the shared adapter (A, B), AdamW. Lower level: the client's adapter (C_k, D_k), SGD.
The exact hypergradient of the authors is not public. This implementation uses the *first-order
approximation* (as first-order MAML / first-order DARTS): between two upper steps the lower level
takes ``inner_steps`` SGD steps towards its best response (C_k*, D_k*)(A, B); the upper gradient is
then ∂L/∂(A, B) evaluated at that approximate best response, dropping the second-order term
∂L/∂(C, D) · d(C, D)*/d(A, B). The upper and lower levels see different mini-batches (as a
train/validation split would), and the server averages (A, B) every ``steps`` local upper steps
(the authors communicate every 10 local steps).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn

Batch = tuple[torch.Tensor, torch.Tensor]


def bilevel_local_steps(
    shared: list[nn.Parameter],
    local: list[nn.Parameter],
    loss_fn: Callable[[Batch], torch.Tensor],
    batches: Iterator[Batch],
    steps: int,
    inner_steps: int,
    upper_opt: torch.optim.Optimizer,
    lower_lr: float,
) -> list[float]:
    """Run ``steps`` upper steps, each after ``inner_steps`` lower SGD steps; returns the upper losses."""
    losses = []
    for _ in range(steps):
        for _ in range(inner_steps):  # lower level: approach the best response of (C, D)
            loss = loss_fn(next(batches))
            grads = torch.autograd.grad(loss, local)
            with torch.no_grad():
                for p, g in zip(local, grads):
                    p.sub_(lower_lr * g)
        loss = loss_fn(next(batches))  # upper level at the approximate best response (first order)
        grads = torch.autograd.grad(loss, shared)
        for p, g in zip(shared, grads):
            p.grad = g
        upper_opt.step()
        upper_opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    return losses
