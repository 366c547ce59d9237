"""Flower's SecAgg+ on the stages: the server's mean equals plain FedAvg within the quantisation bound,
on fixed client arrays in-process and on a real stage through the Simulation Engine."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fedp2eft.config import RoundSettings, SecureAggregation, load_config
from fedp2eft.errors import UserError
from fedp2eft.fl.inprocess import InProcessGrid
from fedp2eft.fl.server_loop import LoopSettings, run_rounds
from fedp2eft.fl.strategies import StrategyChoice
from fedp2eft.setup.jobs import Job
from fl_helpers import run_standard_fl, tiny_overrides
from test_strategies import INIT, WEIGHTS, N, fixed_updates_app, reference

SECURE = SecureAggregation(secure_aggregation=True)


def quantisation_bound(s: SecureAggregation, weights) -> float:
    """Each client's weighted update is rounded on a grid of step 2·clipping_range / quantization_range,
    after scaling by n/max_weight; the k rounding errors are summed, then divided by Σ n/max_weight."""
    step = 2 * s.secagg_clipping_range / s.secagg_quantization_range
    return len(weights) * step / (sum(weights) / s.secagg_max_weight)


def run_secure(tmp_path, strategy="fedavg", rounds=2, secure=SECURE, **dp):
    job = Job(stage="test", experiment="{}", base_spec="off-the-shelf", seed=0, settings={}, num_clients=N)
    settings = LoopSettings(rounds=rounds, round=RoundSettings(fraction=1.0, min_clients=N, checkpoint_every=1),
                            strategy=StrategyChoice(strategy), secure=secure, **dp)
    state = {k: torch.tensor(v, dtype=torch.float32) for k, v in INIT.items()}
    out = run_rounds(InProcessGrid(fixed_updates_app(), N), job, state, settings, tmp_path)
    return {k: v.double().numpy() for k, v in out.items()}


@pytest.mark.parametrize("strategy", ["fedavg", "fedadam"])
def test_secure_mean_equals_fedavg_within_the_quantisation_bound(tmp_path, strategy):
    got = run_secure(tmp_path, strategy)
    want = reference(strategy, {"eta": 0.1} if strategy == "fedadam" else {}, rounds=2)
    bound = quantisation_bound(SECURE, WEIGHTS)
    err = max(float(np.abs(got[k] - want[k]).max()) for k in INIT)
    assert 0 < err <= 2 * bound, (err, bound)  # two rounds; 0 < : it really went through the quantiser
    line = json.loads((tmp_path / "rounds.jsonl").read_text().splitlines()[0])
    assert line["secure_aggregation"] is True and line["loss"] == pytest.approx(
        sum(i * w for i, w in enumerate(WEIGHTS)) / sum(WEIGHTS))


def test_rules_that_need_each_update_are_refused_under_secure_aggregation(tmp_path):
    with pytest.raises(UserError, match="server sees only the sum, so strategy 'krum'"):
        run_secure(tmp_path, "krum")


def test_a_real_stage_on_the_simulation_engine_with_secagg_plus(tmp_path, masakhanews_dir):
    sets = {"federation.engine": '"simulation"', "federation.fraction": 1.0, "federation.min_clients": 2}
    plain = load_config(None, tiny_overrides(masakhanews_dir, rounds=1, **sets))
    secure = load_config(None, tiny_overrides(masakhanews_dir, rounds=1, **sets,
                                              **{"federation.secure_aggregation": "true"}))
    a = run_standard_fl(plain, tmp_path / "plain", resume=False).state_dict()
    b = run_standard_fl(secure, tmp_path / "secure", resume=False).state_dict()
    diff = max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
    assert 0 < diff < 1e-3, diff  # the same clients' updates, averaged through masks and a quantiser
    line = json.loads((tmp_path / "secure" / "rounds.jsonl").read_text().splitlines()[0])
    assert line["secure_aggregation"] is True and line["train_loss"] > 0
