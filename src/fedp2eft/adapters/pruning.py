"""Budget pruning (FedP²EFT §3.2, footnote 4): for budget r over L adapted modules keep the global
top-(r·L) entries of all λ together, so ranks spread unevenly across modules; a module left
with no rank carries no adapter at all."""

from __future__ import annotations

import torch

from ..errors import UserError


def select_ranks(lambdas: dict[str, torch.Tensor], budget: int) -> dict[str, torch.Tensor]:
    """Return ``{module: kept rank ids}`` (only modules that keep >= 1 rank), largest λ first.

    ``lambdas`` maps every adapted module to its λ (one value per initial rank); the global
    top-(budget · L) λ are kept, ties broken by position (deterministic)."""
    if budget < 1:
        raise UserError(f"rank budget must be >= 1, got {budget}")
    names = list(lambdas)
    sizes = [int(lambdas[n].numel()) for n in names]
    total = budget * len(names)
    if total > sum(sizes):
        raise UserError(f"rank budget {budget} x {len(names)} modules = {total} ranks exceeds the "
                        f"{sum(sizes)} initial ranks (r_init too small for this budget)")
    flat = torch.cat([lambdas[n].detach().float().flatten().cpu() for n in names])
    if not torch.isfinite(flat).all():
        raise UserError("λ contains NaN or infinite values; cannot prune")
    order = torch.argsort(flat, descending=True, stable=True)[:total]
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[order] = True
    out: dict[str, torch.Tensor] = {}
    start = 0
    for name, size in zip(names, sizes):
        ids = torch.nonzero(keep[start:start + size]).flatten()
        if ids.numel():
            vals = lambdas[name].detach().flatten().cpu()[ids].float()
            out[name] = ids[torch.argsort(vals, descending=True, stable=True)]
        start += size
    return out


def prune_to_budget(lambdas: dict[str, torch.Tensor], budget: int) -> dict[str, torch.Tensor]:
    """Return ``{module: kept λ values}`` (only modules that keep >= 1 rank), largest first per module."""
    return {n: lambdas[n].detach().flatten().cpu()[ids] for n, ids in select_ranks(lambdas, budget).items()}
