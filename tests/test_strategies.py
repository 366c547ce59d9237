"""Flower's strategies as the stages' server rule: each one's aggregate of fixed client arrays against the
algorithm written out here from its paper, server state through a resume, refused updates, frozen keys,
the config's checks and the stage record."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from flwr.app import Context, Message

from fedp2eft.config import RoundSettings, load_config
from fedp2eft.errors import UserError
from fedp2eft.fl.engines import check_strategies, loop_settings, stage_strategy
from fedp2eft.fl.inprocess import InProcessGrid
from fedp2eft.fl.privacy import dp_clipping_mod
from fedp2eft.fl.records import from_arrays, train_reply
from fedp2eft.fl.secure_aggregation import secagg_mod
from fedp2eft.fl.server_loop import LoopSettings, run_rounds
from fedp2eft.fl.strategies import StrategyChoice
from fedp2eft.methods.registry import get_stage
from fedp2eft.setup.jobs import Job
from fedp2eft.setup.stage_state import claim_stage
from fedp2eft.stages import stage_record
from fl_helpers import run_standard_fl, tiny_overrides
from test_fl_runtime import seen_clients_app

N = 5  # clients, all sampled every round
WEIGHTS = [10, 20, 30, 40, 50]
INIT = {"w": np.array([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]]), "b": np.array([0.25, -0.5, 2.0, 1.0])}


def delta(pid: int, round_: int, key: str, shape) -> np.ndarray:
    """Client ``pid``'s fixed update in round ``round_`` (differs per client, round and key)."""
    rng = np.random.default_rng([pid, round_, len(key)])
    return rng.normal(scale=0.1 * (pid + 1), size=shape)


SEEN_MU: list = []  # the proximal-mu each client update received


def fixed_updates_app(bad: dict[int, str] | None = None, scale: float = 1.0):
    """Clients return the global state + ``scale`` × ``delta``; ``bad[pid]`` = "nan" or "huge" spoils one
    client's."""
    app = seen_clients_app()

    @app.train(mods=[secagg_mod, dp_clipping_mod])  # as the real ClientApp: SecAgg+, DP clipping when asked
    def train(msg: Message, ctx: Context) -> Message:
        pid = ctx.node_config["partition-id"]
        round_ = json.loads(msg.content.config_records["config"]["job"])["round"]
        state = from_arrays(msg.content.array_records["arrays"])
        new = {k: v + scale * torch.from_numpy(delta(pid, round_, k, tuple(v.shape))).to(v.dtype)
               for k, v in state.items()}
        SEEN_MU.append(msg.content.config_records["config"].get("proximal-mu"))
        if (bad or {}).get(pid) == "nan":
            new["w"][0, 0] = float("nan")
        elif (bad or {}).get(pid) == "huge":
            new = {k: v * 1e6 for k, v in new.items()}
        return Message(train_reply(new, WEIGHTS[pid], {"loss": float(pid)}), reply_to=msg)

    return app


def run(tmp_path, choice: StrategyChoice, rounds=2, resume=False, bad=None, init=None, frozen_prefix=""):
    job = Job(stage="test", experiment="{}", base_spec="off-the-shelf", seed=0, settings={}, num_clients=N)
    settings = LoopSettings(rounds=rounds, round=RoundSettings(fraction=1.0, min_clients=N, checkpoint_every=1),
                            strategy=choice, frozen_prefix=frozen_prefix)
    state = {k: torch.tensor(v, dtype=torch.float32) for k, v in (init or INIT).items()}
    out = run_rounds(InProcessGrid(fixed_updates_app(bad), N), job, state, settings, tmp_path, resume=resume)
    return {k: v.double().numpy() for k, v in out.items()}


def reference(name: str, args: dict, rounds: int, clients=range(N)) -> dict[str, np.ndarray]:
    """The algorithms, in float64, from their papers: FedAvg (McMahan et al. 2017), coordinate median and
    trimmed mean (Yin et al. 2018), Krum (Blanchard et al. 2017), FedAvgM (Hsu et al. 2019), FedAdagrad /
    FedAdam / FedYogi (Reddi et al. 2021; Flower's FedAdam adds Adam's bias correction, written here too)."""
    x = {k: v.astype(np.float32).astype(np.float64) for k, v in INIT.items()}
    m = {k: np.zeros_like(v) for k, v in x.items()}
    v2 = {k: np.zeros_like(v) for k, v in x.items()}
    mom = None
    clients = list(clients)
    w = np.array([WEIGHTS[i] for i in clients], dtype=np.float64)
    for t in range(1, rounds + 1):
        ups = [{k: x[k] + delta(i, t, k, x[k].shape) for k in x} for i in clients]
        if name == "fedmedian":
            x = {k: np.median(np.stack([u[k] for u in ups]), axis=0) for k in x}
            continue
        if name == "fedtrimmedavg":
            cut = int(args["beta"] * len(ups))
            x = {k: np.sort(np.stack([u[k] for u in ups]), axis=0)[cut:len(ups) - cut].mean(0) for k in x}
            continue
        if name == "krum":
            f = args.get("num_malicious_nodes", 0)
            flat = [np.concatenate([u[k].ravel() for k in sorted(x)]) for u in ups]
            scores = [sum(sorted(float(np.sum((a - b) ** 2)) for j, b in enumerate(flat) if j != i)
                          [:max(1, len(flat) - f - 2)]) for i, a in enumerate(flat)]
            x = ups[int(np.argmin(scores))]
            continue
        avg = {k: sum(wi * u[k] for wi, u in zip(w, ups, strict=True)) / w.sum() for k in x}
        if name in ("fedavg", "fedprox"):  # FedProx: FedAvg's server, a proximal term in the clients' updates
            x = avg
        elif name == "fedavgm":
            lr, mu = args.get("server_learning_rate", 1.0), args.get("server_momentum", 0.0)
            pg = {k: x[k] - avg[k] for k in x}
            mom = pg if mom is None else {k: mu * mom[k] + pg[k] for k in x}
            x = {k: x[k] - lr * mom[k] for k in x}
        else:
            eta, tau = args.get("eta", 0.1), args.get("tau", 1e-3)
            b1 = args.get("beta_1", 0.0 if name == "fedadagrad" else 0.9)  # Adagrad: no first moment
            b2 = args.get("beta_2", 0.99)
            d = {k: avg[k] - x[k] for k in x}
            m = {k: b1 * m[k] + (1 - b1) * d[k] for k in x}
            if name == "fedadagrad":
                v2 = {k: v2[k] + d[k] ** 2 for k in x}
                step = eta
            elif name == "fedyogi":
                v2 = {k: v2[k] - (1 - b2) * d[k] ** 2 * np.sign(v2[k] - d[k] ** 2) for k in x}
                step = eta
            else:  # fedadam
                v2 = {k: b2 * v2[k] + (1 - b2) * d[k] ** 2 for k in x}
                step = eta * math.sqrt(1 - b2 ** (t + 1)) / (1 - b1 ** (t + 1))
            x = {k: x[k] + step * m[k] / (np.sqrt(v2[k]) + tau) for k in x}
    return x


CASES = [
    ("fedavg", {}),
    ("fedprox", {"proximal_mu": 0.1}),
    ("fedmedian", {}),
    ("fedtrimmedavg", {"beta": 0.2}),
    ("krum", {"num_malicious_nodes": 1}),
    ("fedavgm", {"server_learning_rate": 1.0, "server_momentum": 0.9}),
    ("fedadagrad", {"eta": 0.05}),
    ("fedadam", {"eta": 0.05, "beta_1": 0.9, "beta_2": 0.99}),
    ("fedyogi", {"eta": 0.05, "beta_1": 0.9, "beta_2": 0.99}),
]


@pytest.mark.parametrize("name,args", CASES, ids=[c[0] for c in CASES])
def test_each_strategy_aggregates_as_its_algorithm(tmp_path, name, args):
    SEEN_MU.clear()
    got = run(tmp_path, StrategyChoice(name, tuple(sorted(args.items()))), rounds=3)
    want = reference(name, args, rounds=3)
    for k in INIT:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=f"{name}: {k}")
    line = json.loads((tmp_path / "rounds.jsonl").read_text().splitlines()[0])
    assert set(SEEN_MU) == {args.get("proximal_mu")}  # FedProx's μ reaches every client, no other strategy sends one
    if name != "krum":  # Krum reports the metrics of the update it selected
        assert line["loss"] == pytest.approx(sum(i * w for i, w in enumerate(WEIGHTS)) / sum(WEIGHTS))


@pytest.mark.parametrize("name", ["fedadam", "fedavgm"])
def test_a_resumed_stage_keeps_the_server_state_bitwise(tmp_path, name):
    args = dict(CASES)[name]
    choice = StrategyChoice(name, tuple(sorted(args.items())))
    whole = run(tmp_path / "whole", choice, rounds=4)
    run(tmp_path / "cut", choice, rounds=2)  # stops after round 2 (checkpoint every round)
    assert list((tmp_path / "cut" / "checkpoint").glob("strategy-*.safetensors"))  # the moments / momentum
    resumed = run(tmp_path / "cut", choice, rounds=4, resume=True)
    for k in INIT:
        assert np.array_equal(whole[k], resumed[k]), k


def test_non_finite_and_huge_updates_are_refused_and_named(tmp_path):
    got = run(tmp_path, StrategyChoice("fedavg"), rounds=2, bad={1: "nan", 3: "huge"})
    want = reference("fedavg", {}, rounds=2, clients=[0, 2, 4])  # the run without them
    for k in INIT:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-6)
    line = json.loads((tmp_path / "rounds.jsonl").read_text().splitlines()[0])
    assert line["failed"]["c1"] == "refused: its update is not finite (NaN or Inf)"
    assert line["failed"]["c3"].startswith("refused: update norm") and "1000 x the median" in line["failed"]["c3"]
    assert sorted(line["clients"]) == ["c0", "c2", "c4"]


def test_too_many_refused_updates_stop_the_stage(tmp_path):
    with pytest.raises(UserError, match="3 of 5 clients failed"):
        run(tmp_path, StrategyChoice("fedavg"), rounds=1, bad={0: "nan", 1: "nan", 2: "nan"})


def test_a_needed_stages_state_stays_frozen_under_any_strategy(tmp_path):
    init = {**INIT, "psg.z": np.array([7.0, -7.0])}
    got = run(tmp_path, StrategyChoice("fedadam", (("eta", 0.05),)), rounds=2, init=init, frozen_prefix="psg.")
    np.testing.assert_array_equal(got["psg.z"], np.array([7.0, -7.0]))  # every client moved it; the server did not
    want = reference("fedadam", {"eta": 0.05, "beta_1": 0.9, "beta_2": 0.99}, rounds=2)
    np.testing.assert_allclose(got["w"], want["w"], rtol=1e-5, atol=1e-6)


def test_config_names_strategies_and_parameters_that_exist(masakhanews_dir):
    def cfg(**extra):
        return load_config(None, tiny_overrides(masakhanews_dir, **extra))

    with pytest.raises(UserError, match=r"federation.strategy: unknown strategy 'fedsgd'; strategies are \["):
        check_strategies(cfg(**{"federation.strategy": '"fedsgd"'}))
    with pytest.raises(UserError, match="strategy 'fedadam' has no parameter 'lr'; its parameters are"):
        check_strategies(cfg(**{"federation.strategy": '"fedadam"', "federation.strategy_args": "{lr = 0.1}"}))
    with pytest.raises(UserError, match="federation.stage_strategies: unknown stage 'pgs'"):
        cfg(**{"federation.stage_strategies": '{pgs = {strategy = "krum"}}'})
    with pytest.raises(UserError, match="federation.stage_strategies.psg: unknown strategy"):
        check_strategies(cfg(**{"federation.stage_strategies": '{psg = {strategy = "nope"}}'}))
    c = cfg(**{"federation.strategy": '"fedavgm"', "federation.strategy_args": "{server_momentum = 0.9}",
               "federation.stage_strategies": '{psg = {strategy = "fedadam", strategy_args = {eta = 0.01}}}'})
    check_strategies(c)
    assert stage_strategy(c, "psg") == StrategyChoice("fedadam", (("eta", 0.01),))
    assert stage_strategy(c, "base_model") == StrategyChoice("fedavgm", (("server_momentum", 0.9),))
    assert loop_settings(c, get_stage("psg"), 0).strategy.name == "fedadam"


def test_a_stage_trained_with_another_strategy_is_refused_as_stale(tmp_path, masakhanews_dir):
    plain = load_config(None, tiny_overrides(masakhanews_dir))
    adam = load_config(None, tiny_overrides(masakhanews_dir, **{"federation.strategy": '"fedadam"'}))
    stage = get_stage("psg")
    assert "aggregation" not in stage_record(plain, stage, 0, None)["federation"]  # FedAvg: records as before
    assert stage_record(adam, stage, 0, None)["federation"]["aggregation"]["strategy"] == "fedadam"
    claim_stage(tmp_path, stage_record(plain, stage, 0, None), fresh=False)
    with pytest.raises(UserError, match="aggregation"):
        claim_stage(tmp_path, stage_record(adam, stage, 0, None), fresh=False)


def test_standard_fl_trains_with_fedadam_on_real_rows(tmp_path, masakhanews_dir):
    cfg = load_config(None, tiny_overrides(masakhanews_dir, rounds=2, **{
        "federation.strategy": '"fedadam"', "federation.strategy_args": "{eta = 0.01}"}))
    run_standard_fl(cfg, tmp_path, resume=False)
    lines = [json.loads(x) for x in (tmp_path / "rounds.jsonl").read_text().splitlines()]
    assert [x["round"] for x in lines] == [1, 2] and all(x["failed"] == {} for x in lines)
    assert all(math.isfinite(x["train_loss"]) for x in lines)
    assert list((tmp_path / "checkpoint").glob("strategy-*.safetensors"))


def test_the_proximal_term_adds_mu_times_the_distance_to_the_global_state():
    from fedp2eft.training import proximal_term

    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    c = torch.tensor([0.5, -0.25])
    with proximal_term(3.0, [w]):
        with torch.no_grad():
            w.copy_(torch.tensor([2.0, 1.0]))  # the update moved it by (1, -1) from w_t = (1, 2)
        (w * c).sum().backward()
    torch.testing.assert_close(w.grad, c + 3.0 * torch.tensor([1.0, -1.0]))  # ∇F + μ (w − w_t)
    w.grad = None
    (w * c).sum().backward()  # outside the block: F alone
    torch.testing.assert_close(w.grad, c)
