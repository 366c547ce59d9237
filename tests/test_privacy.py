"""Differential privacy on the stages: Flower's clipping (client mod or server wrapper) bounds every
update, its noise has the configured scale, the accountant's ε matches a hand computation, a config that
would spend too much is refused, and a resumed stage keeps its ledger."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from fedp2eft.config import Privacy, RoundSettings
from fedp2eft.errors import UserError
from fedp2eft.fl.inprocess import InProcessGrid
from fedp2eft.fl.privacy import epsilon_after
from fedp2eft.fl.server_loop import LoopSettings, run_rounds
from fedp2eft.fl.strategies import StrategyChoice
from fedp2eft.setup.jobs import Job
from fl_helpers import tiny_overrides
from test_strategies import INIT, N, delta, fixed_updates_app

TINY_NOISE = 1e-6  # z: clipping checked without noise in the way


def run_dp(tmp_path, privacy: Privacy, rounds=1, scale=1.0, init=None, resume=False, strategy="fedavg", fraction=1.0):
    job = Job(stage="test", experiment="{}", base_spec="off-the-shelf", seed=0, settings={}, num_clients=N)
    settings = LoopSettings(rounds=rounds, round=RoundSettings(fraction=fraction, min_clients=2, checkpoint_every=1),
                            strategy=StrategyChoice(strategy), privacy=privacy, name="test")
    state = {k: torch.tensor(v, dtype=torch.float32) for k, v in (init or INIT).items()}
    out = run_rounds(InProcessGrid(fixed_updates_app(scale=scale), N), job, state, settings, tmp_path, resume=resume)
    return {k: v.double().numpy() for k, v in out.items()}


def clipped_mean(clip: float, scale: float) -> dict[str, np.ndarray]:
    """Round 1 by hand: every client's update clipped to norm <= clip, their unweighted mean."""
    ups = []
    for pid in range(N):
        d = {k: scale * delta(pid, 1, k, v.shape) for k, v in INIT.items()}
        norm = math.sqrt(sum(float((x ** 2).sum()) for x in d.values()))
        ups.append({k: x * min(1.0, clip / norm) for k, x in d.items()})
    return {k: INIT[k] + sum(u[k] for u in ups) / N for k in INIT}


@pytest.mark.parametrize("where", ["client", "server"])
def test_clipped_updates_are_bounded_and_averaged_unweighted(tmp_path, where):
    clip = 0.05  # every client's update is larger: each is clipped
    got = run_dp(tmp_path, Privacy(dp=f"{where}-fixed", dp_noise_multiplier=TINY_NOISE, dp_clipping_norm=clip),
                 scale=10.0)
    want = clipped_mean(clip, 10.0)
    for k in INIT:
        np.testing.assert_allclose(got[k], want[k], atol=1e-6)
    step = math.sqrt(sum(float(((got[k] - INIT[k]) ** 2).sum()) for k in INIT))
    assert step <= clip + 1e-6  # a mean of updates of norm <= C


def test_noise_has_the_configured_scale(tmp_path):
    init = {"w": np.zeros((200, 100))}  # clients return the global state unchanged: the step is the noise
    z, clip = 1.5, 0.4
    got = run_dp(tmp_path, Privacy(dp="server-fixed", dp_noise_multiplier=z, dp_clipping_norm=clip), scale=0.0,
                 init=init)
    assert np.std(got["w"]) == pytest.approx(z * clip / N, rel=0.03)  # N(0, (z C / k)^2), k = N here
    assert abs(np.mean(got["w"])) < 0.01 * z * clip / N * 10


def test_epsilon_matches_a_hand_computed_case():
    """Every client every round (k = N: no sampling amplification): each round is a Gaussian mechanism of
    noise multiplier z/2 (replace-one sensitivity 2C/k), RDP ε(α) = α / (2 (z/2)²) per round (Mironov 2017),
    T rounds compose additively, converted to (ε, δ) as Balle et al. 2020 (Thm 21) over α on a fine grid."""
    z, rounds, delta_ = 2.0, 20, 1e-5
    sigma = z / 2
    alphas = np.arange(1.05, 64, 0.01)
    by_hand = min(rounds * a / (2 * sigma ** 2) + math.log1p(-1 / a) - (math.log(delta_) + math.log(a)) / (a - 1)
                  for a in alphas)
    got = epsilon_after(Privacy(dp="client-fixed", dp_noise_multiplier=z, dp_target_delta=delta_), rounds, 10, 10)
    assert got == pytest.approx(by_hand, rel=0.01)  # the accountant's orders are a coarser grid
    assert got >= by_hand - 1e-9
    # sampling 2 of 10 per round amplifies privacy: a much smaller ε for the same rounds
    assert epsilon_after(Privacy(dp="client-fixed", dp_noise_multiplier=z), rounds, 2, 10) < 0.5 * got


def test_a_stage_that_would_exceed_the_target_epsilon_is_refused_before_training(tmp_path):
    privacy = Privacy(dp="client-fixed", dp_noise_multiplier=0.5, dp_target_epsilon=2.0)
    with pytest.raises(UserError, match=r"stage test: 3 rounds of 5 of 5 clients .* > dp_target_epsilon 2"):
        run_dp(tmp_path, privacy, rounds=3)
    assert not (tmp_path / "rounds.jsonl").exists()  # not one round ran


def test_dp_needs_a_mean_of_clipped_updates(tmp_path):
    with pytest.raises(UserError, match="differential privacy needs strategy fedavg or fedprox"):
        run_dp(tmp_path, Privacy(dp="client-fixed"), strategy="fedmedian")


def test_a_resumed_dp_stage_equals_an_uninterrupted_one(tmp_path):
    privacy = Privacy(dp="client-adaptive", dp_noise_multiplier=0.5, dp_clipping_norm=0.05,
                      dp_clipped_count_stddev=1.0)
    whole = run_dp(tmp_path / "whole", privacy, rounds=4, fraction=0.4)
    run_dp(tmp_path / "cut", privacy, rounds=2, fraction=0.4)
    resumed = run_dp(tmp_path / "cut", privacy, rounds=4, resume=True, fraction=0.4)
    for k in INIT:
        assert np.array_equal(whole[k], resumed[k]), k  # noise and the clipped-count noise: RNG restored
    a, b = (json.loads((tmp_path / x / "privacy.json").read_text()) for x in ("whole", "cut"))
    assert a == b and a["releases"] == 4 and a["sample_size"] == 2 and a["population"] == N
    assert a["clipping_norm"] != 0.05  # adaptive clipping moved it, and the resumed run carried it on
    lines = [json.loads(x) for x in (tmp_path / "whole" / "rounds.jsonl").read_text().splitlines()]
    eps = [x["privacy"]["epsilon"] for x in lines]
    assert eps == sorted(eps) and eps[-1] == pytest.approx(a["epsilon"])


def test_standard_fl_under_dp_records_its_epsilon_in_results(tmp_path, masakhanews_dir):
    from fedp2eft.cli import main

    sets = tiny_overrides(masakhanews_dir, rounds=2, **{
        "federation.dp": '"client-fixed"', "federation.dp_noise_multiplier": 1.0, "federation.dp_clipping_norm": 0.5,
        "personalise.methods": '["none"]', "personalise.pools": '["unseen"]'})
    args = [x for s in sets for x in ("--set", s)]
    assert main(["run", "configs/quickstart.toml", "--out", str(tmp_path), *args]) == 0
    spent = json.loads((tmp_path / "base_model" / "privacy.json").read_text())
    assert spent["dp"] == "client-fixed" and spent["releases"] == 2 and spent["epsilon"] > 0
    (run,) = json.loads((tmp_path / "results.json").read_text())["runs"]
    assert run["privacy"]["base_model"]["epsilon"] == spent["epsilon"]
    record = json.loads((tmp_path / "base_model" / "settings.json").read_text())
    assert json.dumps(record).count('"dp": "client-fixed"') == 1  # a base trained without DP is stale


