"""FedProx's proximal term (Li et al., 2020, "Federated Optimization in Heterogeneous Networks", Eq. 2).

A client of round t minimises h(w) = F(w) + μ/2 ‖w − wᵗ‖² instead of its loss F alone, wᵗ the global
state it received: the local update is pulled toward wᵗ, more so the larger μ. Applied here to the
gradient rather than the loss — every backward pass adds μ (w − wᵗ) to the gradient of each shared
parameter — so that any stage's own training loop (AdamW on a task loss, a PSG regression, a
hypergradient step, a bilevel update) gets the term from one line: the stage names the parameters it
shares with the server (never a client's own part: FedDPA-T's local adapter, DEPT's embeddings,
PF2LoRA's level 2), and wᵗ is their value when the update starts (the global state just loaded).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch


@contextmanager
def proximal_term(mu: float, shared: Iterable[torch.Tensor]) -> Iterator[None]:
    """Within the block, each backward pass adds ``mu * (w - w_t)`` to the gradient of every tensor of
    ``shared`` (``w_t``: its value on entry); ``mu = 0`` changes nothing."""
    if mu <= 0:
        yield
        return
    handles = []
    for w in shared:
        if not w.requires_grad:
            continue  # not trained in this block: it has no gradient to change
        start = w.detach().clone()
        handles.append(w.register_hook(lambda grad, w=w, start=start: grad + mu * (w.detach() - start)))
    try:
        yield
    finally:
        for h in handles:
            h.remove()
