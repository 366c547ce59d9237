"""PF2LoRA two-level adapter and its first-order bilevel training on a synthetic task: each client's
targets differ from a shared low-rank map by a perturbation of known rank; the singular values of
the client's learned level-2 update reveal that rank."""

from __future__ import annotations

import torch
from torch import nn

from fedp2eft.adapters.two_level import TwoLevelLinear
from fedp2eft.methods.pf2lora.bilevel import bilevel_local_steps


def orthonormal(d: int, k: int, gen) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, k, generator=gen))
    return q


def test_two_level_starts_as_base_and_composes():
    base = nn.Linear(6, 4)
    layer = TwoLevelLinear(base, r=3, r_local=2)
    x = torch.randn(5, 6)
    torch.testing.assert_close(layer(x), base(x))
    with torch.no_grad():
        layer.lora_B.normal_()
        layer.local_D.normal_()
    expected = base(x) + x @ (layer.shared_update() + layer.local_update()).T
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)


def test_learned_local_update_reveals_each_clients_rank():
    gen = torch.Generator().manual_seed(0)
    d, clients_ranks = 16, [1, 2, 3, 1, 2, 3]
    basis = orthonormal(d, 2 + sum(clients_ranks), gen)  # shared and perturbation directions, orthogonal
    shared_map = 2.0 * basis[:, :2] @ orthonormal(d, 2, gen).T
    perturb, col = [], 2
    for r in clients_ranks:
        perturb.append(1.5 * basis[:, col:col + r] @ orthonormal(d, r, gen).T)
        col += r
    base = nn.Linear(d, d, bias=False)
    with torch.no_grad():
        base.weight.zero_()
    layers = [TwoLevelLinear(base, r=2, r_local=3, alpha=2, alpha_local=3) for _ in clients_ranks]
    shared_init = [p.detach().clone() for p in layers[0].shared_parameters()]
    for layer in layers:  # every client starts from the same shared adapter
        with torch.no_grad():
            for p, q in zip(layer.shared_parameters(), shared_init):
                p.copy_(q)
    opts = [torch.optim.AdamW(layer.shared_parameters(), lr=3e-2, weight_decay=0.0) for layer in layers]

    def batches(k):
        while True:
            x = torch.randn(64, d, generator=gen)
            yield x, x @ (shared_map + perturb[k]).T

    streams = [batches(k) for k in range(len(clients_ranks))]
    for _round in range(60):
        for k, layer in enumerate(layers):
            bilevel_local_steps(layer.shared_parameters(), layer.local_parameters(),
                                lambda b, layer=layer: ((layer(b[0]) - b[1]) ** 2).mean(),
                                streams[k], steps=10, inner_steps=3, upper_opt=opts[k], lower_lr=0.1)
        with torch.no_grad():  # the server averages level 1 (equal client sizes)
            for i in range(2):
                avg = torch.stack([layer.shared_parameters()[i] for layer in layers]).mean(0)
                for layer in layers:
                    layer.shared_parameters()[i].copy_(avg)
    for k, (layer, rank) in enumerate(zip(layers, clients_ranks)):
        s = torch.linalg.svdvals(layer.local_update().detach())
        found = int((s > 0.35 * s[0]).sum())
        assert found == rank, (k, rank, s[:5])
        total = layer.shared_update() + layer.local_update()
        assert torch.linalg.norm(total - (shared_map + perturb[k])) / torch.linalg.norm(shared_map + perturb[k]) < 0.25
