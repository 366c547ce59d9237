"""Learned rates (issue 26, items 2 and 3): FedL2P's log-space generator reaches a rate 30× its start; the
authors' linear one does not move; the step head fits per-client target rates over federated rounds."""

from __future__ import annotations

import math

import pytest
import torch

from fedp2eft.methods.fedl2p import FedL2PSettings, meta_optimisers, meta_step
from fedp2eft.psg import LRGenerator
from fedp2eft.psg.rate_report import pool_summary, rates_by_type


def _rate_after(parameterisation: str, net_lr: float, base_lr_lr: float, steps: int, target: float,
                start: float = 1e-4) -> float:
    """Outer steps on a synthetic validation loss L(η) = Σ (log η − log target)² whose hypergradient
    dL/dη = 2 (log η − log target) / η is what ``rate_hypergradient`` would hand ``meta_step``."""
    torch.manual_seed(0)
    feats = torch.randn(6)
    gen = LRGenerator(6, 4, base_lr=start, parameterisation=parameterisation)
    s = FedL2PSettings(net_lr=net_lr, base_lr_lr=base_lr_lr)
    opts = meta_optimisers(gen, s)
    for _ in range(steps):
        rates = gen(feats)
        hyper = 2 * (rates.detach().log() - math.log(target)) / rates.detach()
        meta_step(rates, hyper, opts)
    with torch.no_grad():
        return float(gen(feats).mean())


def test_log_parameterisation_reaches_a_rate_30x_its_start():
    rate = _rate_after("log", net_lr=1e-3, base_lr_lr=0.1, steps=60, target=3e-3)
    assert 2.5e-3 < rate < 3.6e-3, rate


def test_the_authors_linear_parameterisation_stays_an_order_of_magnitude_short():
    rate = _rate_after("linear", net_lr=1e-4, base_lr_lr=1e-6, steps=60, target=3e-3)
    assert rate < 5e-4, rate  # ×2.9 after 60 consistent steps (the MLP's 100 hidden units), not ×30


def test_log_generator_starts_at_its_base_rate_and_rejects_unknown_parameterisations():
    gen = LRGenerator(4, 3, base_lr=2e-4, parameterisation="log")
    with torch.no_grad():
        assert torch.allclose(gen(torch.randn(4)), torch.full((3,), 2e-4))
    with pytest.raises(ValueError, match="parameterisation"):
        LRGenerator(4, 3, parameterisation="exp")


def test_rate_report_groups_by_module_type_and_matrix():
    labels = ["enc.0.attention.self.query#A", "enc.0.attention.self.query#B", "enc.0.intermediate.dense#A",
              "enc.1.intermediate.dense#A"]
    got = rates_by_type(labels, torch.tensor([1e-4, 4e-4, 1e-3, 1e-1], dtype=torch.float64))
    assert set(got) == {"query.A", "query.B", "ffn_up.A"}
    assert math.isclose(got["ffn_up.A"], 1e-2, rel_tol=1e-9)  # geometric mean
    summary = pool_summary({"c1": {"x": 1e-3}, "c2": {"x": 1e-1}})
    assert math.isclose(summary["x"]["geomean"], 1e-2) and math.isclose(summary["x"]["sd_log10"], 2 ** 0.5)
