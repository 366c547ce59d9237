"""Learned rates (issue 26, items 2 and 3): FedL2P's log-space generator reaches a rate 30× its start; the
authors' linear one does not move; the step head fits per-client target rates over federated rounds."""

from __future__ import annotations

import math

import pytest
import torch

from fedp2eft.methods.fedl2p import FedL2PMeta, LRGenerator, meta_optimisers, meta_step
from fedp2eft.psg.rate_report import pool_summary, rates_by_type


def _rate_after(parameterisation: str, net_lr: float, base_lr_lr: float, steps: int, target: float,
                start: float = 1e-4) -> float:
    """Outer steps on a synthetic validation loss L(η) = Σ (log η − log target)² whose hypergradient
    dL/dη = 2 (log η − log target) / η is what ``rate_hypergradient`` would hand ``meta_step``."""
    torch.manual_seed(0)
    feats = torch.randn(6)
    gen = LRGenerator(6, 4, base_lr=start, parameterisation=parameterisation)
    s = FedL2PMeta(net_lr=net_lr, base_lr_lr=base_lr_lr)
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


def test_step_head_fits_per_client_target_rates_in_a_few_federated_rounds():
    """Each round both clients regress the head onto their own target log rates (as the sweep gives them)
    and the server averages: after a few rounds each client gets its own rate per module type."""
    from fedp2eft.methods.fedp2eft.step import StepHead, regress_head

    torch.manual_seed(0)
    feats = {"a": torch.tensor([1.0, 0.5, -0.3, 0.8]), "b": torch.tensor([0.2, 1.5, 0.4, -0.6])}
    targets = {"a": {"ffn_up": 3e-3, "query": 1e-3}, "b": {"ffn_up": 3e-4, "query": 2e-3}}
    state = StepHead(4, step_init=1e-4).state_dict()
    for _ in range(20):
        new = []
        for c in ("a", "b"):
            head = StepHead(4, 1e-4)
            head.load_state_dict(state)
            regress_head(head, feats[c], targets[c], steps=10, lr=0.01)
            new.append(head.state_dict())
        state = {k: (new[0][k] + new[1][k]) / 2 for k in state}
    head = StepHead(4, 1e-4)
    head.load_state_dict(state)
    for c in ("a", "b"):
        got = head.rates(feats[c])
        for t, want in targets[c].items():
            assert abs(math.log(got[t] / want)) < math.log(1.5), (c, t, got[t], want)
        assert math.isclose(got["key"], 1e-4, rel_tol=0.5)  # a type without targets stays near its start


def test_linearised_sweep_finds_a_larger_rate_when_the_update_was_too_short():
    """On a toy adapter whose held-out loss is lowest at 4x the trained update, the sweep says 4x."""
    from types import SimpleNamespace

    from fedp2eft.methods.fedp2eft.step import linearised_sweep

    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.q = torch.nn.Module()
            self.q.lora_A = torch.nn.ParameterDict({"default": torch.nn.Parameter(torch.zeros(2))})

        def forward(self, **_):
            return self.q.lora_A["default"]

    model = Toy()
    model.q.lora_A["default"].data = torch.tensor([0.5, 0.5])  # trained from 0; the optimum is 2.0
    init = {"other": [torch.zeros(2)]}
    problem = SimpleNamespace(loss=lambda out, batch: ((out - 2.0) ** 2).sum())
    val = SimpleNamespace(batches=lambda bs: iter([{"input_ids": torch.zeros(1, 1)}]))
    scale, seen = linearised_sweep(model, init, val, problem, (0.5, 1.0, 2.0, 4.0, 8.0), (0.5, 1.0, 2.0), 8)
    assert scale == {"other": 4.0} and seen["multiplier"] == 4.0
    assert torch.equal(model.q.lora_A["default"].detach(), torch.tensor([0.5, 0.5]))  # trained weights restored


def test_the_real_sweep_fine_tunes_once_per_multiplier_and_keeps_the_lowest_held_out_loss(monkeypatch):
    """fedp2eft-sweep: each multiplier of the head's rates is a fine-tuning of its own (not w_0 + c·Δ), scored
    by held-out loss; the best multiplier applies to every kept type. Losses here are a function of the rate
    fine-tuned at (minimum at 4e-3), so the sweep must move the rate up from 1e-3."""
    import fedp2eft.methods.fedp2eft.step as step
    from fedp2eft.methods.fedp2eft.step import StepSettings, StepTraining, finetuned_sweep

    trained = []

    class Model:
        def eval(self):
            return self

    monkeypatch.setattr(step, "adapter_model", lambda *a, **k: Model())
    monkeypatch.setattr(step, "adapter_groups", lambda model: {"ffn_up": [], "query": []})
    monkeypatch.setattr(step, "train_at_rates", lambda model, fit, rates, *a: trained.append(dict(rates)) or model)
    monkeypatch.setattr(step, "held_out_loss", lambda model, *a: abs(math.log(trained[-1]["ffn_up"] / 4e-3)))
    s = StepSettings(StepTraining(sweep="finetune", finetune_grid=[0.5, 2.0, 4.0]))
    scale, seen = finetuned_sweep(None, s, 2, 0, None, {"ffn_up": 1e-3, "query": 1e-3}, None, None, None)
    assert [t["ffn_up"] for t in trained] == pytest.approx([5e-4, 2e-3, 4e-3])  # one fine-tuning per multiplier
    assert scale == {"ffn_up": 4.0, "query": 4.0} and seen["multiplier"] == 4.0 and seen["val_loss_best"] == 0.0
    with pytest.raises(Exception, match="sweep"):
        StepTraining(sweep="grid")


def test_fedp2eft_step_trains_after_the_psg_keeps_it_frozen_and_personalises(tmp_path, capsys, masakhanews_dir):
    import json

    from safetensors.torch import load_file

    from fedp2eft.cli import main
    from fl_helpers import tiny_overrides

    out = tmp_path / "run"
    sets = {"personalise.methods": '["fedp2eft-step", "fedl2p", "lora-step", "fedp2eft-sweep"]',
            "personalise.budgets": "[1]", "fedp2eft_sweep.rounds": 1,
            "personalise.pools": '["seen", "unseen"]', "fedp2eft.rounds": 1, "fedp2eft.r_init": 2,
            "fedp2eft.lora_alpha": 4, "fedp2eft.batch_size": 8, "fedp2eft_step.rounds": 2,
            "fedl2p.rounds": 1, "fedl2p.parameterisation": '"log"', "fedl2p.base_lr_lr": 0.1,
            "fedl2p.batch_pairs": 1, "fedl2p.outer_steps": 1, "lora_step.rounds": 1}
    args = []
    for item in tiny_overrides(masakhanews_dir, rounds=1, **sets):
        args += ["--set", item]
    assert main(["run", "configs/quickstart.toml", "--out", str(out), *args]) == 0, capsys.readouterr().err
    psg = load_file(str(out / "psg" / "seed0" / "psg.safetensors"))
    step_dir = out / "fedp2eft-step" / "seed0" / "r1"
    step = load_file(str(step_dir / "step.safetensors"))
    assert all(torch.equal(step[f"psg.{k}"], v) for k, v in psg.items())  # the PSG travelled frozen
    assert any(k.startswith("step.") for k in step)
    record = json.loads((step_dir / "settings.json").read_text())
    assert record["needs"]["rounds"] == 1 and "psg" in record["needs"]
    rounds = [json.loads(x) for x in (step_dir / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [1, 2] and all("target_lr_mean" in r for r in rounds)
    for folder in (step_dir, out / "fedl2p" / "seed0" / "r1"):
        report = json.loads((folder / "rate_report.json").read_text())
        assert set(report["pools"]) == {"seen", "unseen"}
        assert all(v["geomean"] > 0 for v in report["pools"]["seen"]["summary"].values())
    lora_step = load_file(str(out / "lora-step" / "seed0" / "r1" / "step.safetensors"))
    assert lora_step and all(k.startswith("step.") for k in lora_step)  # plain LoRA: no PSG in its state
    assert "needs" not in json.loads((out / "lora-step" / "seed0" / "r1" / "settings.json").read_text())
    res = json.loads((out / "results.json").read_text())
    assert {(r["method"], r["pool"]) for r in res["runs"]} == {
        (m, p) for m in ("fedp2eft-step", "fedl2p", "lora-step", "fedp2eft-sweep") for p in ("seen", "unseen")}
    sweep = [json.loads(x) for x in (out / "fedp2eft-sweep" / "seed0" / "r1" / "rounds.jsonl").read_text().splitlines()]
    assert sweep and all(r["clients"] for r in sweep)  # its own stage folder, trained after the same PSG
