"""FedL2P's IFT + Neumann hypergradient agrees with finite differences on a tiny problem."""

from __future__ import annotations

import torch

from fedp2eft.methods.fedl2p.hypergrad import lr_hypergradient, neumann_inverse, solve_proximal


def test_neumann_series_inverts_a_symmetric_matrix():
    torch.manual_seed(0)
    a = torch.randn(5, 5, dtype=torch.float64)
    h = a @ a.T / 5 + torch.eye(5, dtype=torch.float64)
    v = torch.randn(5, dtype=torch.float64)
    alpha = 1.0 / torch.linalg.eigvalsh(h).max().item()
    (approx,) = neumann_inverse([v], lambda p: [h @ p[0]], alpha, terms=400)
    torch.testing.assert_close(approx, torch.linalg.solve(h, v), rtol=1e-6, atol=1e-8)


def test_lr_hypergradient_matches_finite_differences():
    gen = torch.Generator().manual_seed(0)
    x_tr, x_va = torch.randn(40, 3, generator=gen, dtype=torch.float64), torch.randn(30, 3, generator=gen,
                                                                                       dtype=torch.float64)
    w_true = torch.tensor([[1.0, -2.0, 0.5], [0.3, 0.8, -1.0]], dtype=torch.float64)
    y_tr = x_tr @ w_true.T + 0.1 * torch.randn(40, 2, generator=gen, dtype=torch.float64)
    y_va = x_va @ (w_true + 0.3).T

    def loss(params, x, y):  # a two-matrix "LoRA-like" linear model: y = x Aᵀ Bᵀ
        a, b = params
        return ((x @ a.T @ b.T - y) ** 2).mean()

    def train(params):
        return loss(params, x_tr, y_tr)

    def val(params):
        return loss(params, x_va, y_va)

    init = [0.5 * torch.randn(2, 3, generator=gen, dtype=torch.float64),
            torch.eye(2, dtype=torch.float64) + 0.1 * torch.randn(2, 2, generator=gen, dtype=torch.float64)]
    lrs = torch.tensor([0.3, 0.2], dtype=torch.float64)
    w_star = solve_proximal(train, init, lrs, steps=4000, step_size=0.05)
    hyper = lr_hypergradient(train, val, w_star, init, lrs, alpha=0.05, terms=2000)

    fd = []
    for m in range(2):
        eps = 1e-4 * lrs[m].item()
        vals = []
        for sign in (1, -1):
            shifted = lrs.clone()
            shifted[m] += sign * eps
            w = solve_proximal(train, init, shifted, steps=4000, step_size=0.05)
            vals.append(val(w).item())
        fd.append((vals[0] - vals[1]) / (2 * eps))
    fd = torch.tensor(fd, dtype=torch.float64)
    rel = (hyper - fd).abs() / fd.abs()
    assert (rel < 1e-2).all(), (hyper, fd, rel)
