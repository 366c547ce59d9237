"""The federated runtime: FedAvg arithmetic, failures, resume after a kill, flat memory."""

from __future__ import annotations

import json
import threading

import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fedp2eft.config import RoundSettings, load_config
from fedp2eft.errors import UserError
from fedp2eft.fl import client_app as real_client_app
from fedp2eft.fl.engines import stage_job
from fedp2eft.fl.inprocess import InProcessGrid
from fedp2eft.fl.records import from_arrays, train_reply
from fedp2eft.fl.server_loop import LoopSettings, run_rounds
from fedp2eft.methods.standard_fl import STANDARD_FL_STAGE
from fedp2eft.setup.jobs import Job
from fl_helpers import run_python, run_standard_fl, tiny_overrides


def seen_clients_app() -> ClientApp:
    """A ClientApp whose node i answers discovery as seen-pool client ``c<i>`` (tests add ``train``)."""
    app = ClientApp()

    @app.query()
    def query(msg: Message, ctx: Context) -> Message:
        pid = ctx.node_config["partition-id"]
        return Message(RecordDict({"client": ConfigRecord({"client-id": f"c{pid}", "pool": "seen"})}), reply_to=msg)

    return app


def test_fedavg_equals_hand_computed_weighted_average(tmp_path):
    app = seen_clients_app()

    @app.train()
    def train(msg: Message, ctx: Context) -> Message:
        pid = ctx.node_config["partition-id"]
        state = from_arrays(msg.content.array_records["arrays"])
        new = {k: v + (pid + 1) * torch.arange(v.numel(), dtype=v.dtype).reshape(v.shape) for k, v in state.items()}
        return Message(train_reply(new, 10 * (pid + 1), {}), reply_to=msg)

    grid = InProcessGrid(app, 3)
    init = {"w": torch.ones(2, 3), "b": torch.zeros(4)}
    job = Job(stage="test", experiment="{}", base_spec="off-the-shelf", seed=0, settings={}, num_clients=3)
    out = run_rounds(grid, job, init, LoopSettings(rounds=1, round=RoundSettings(fraction=1.0, min_clients=3, checkpoint_every=1)),
                     tmp_path)
    # clients add 1x, 2x, 3x arange with weights 10, 20, 30: mean multiplier (10+40+90)/60 = 7/3
    for k, v in init.items():
        expected = v + (7 / 3) * torch.arange(v.numel(), dtype=v.dtype).reshape(v.shape)
        torch.testing.assert_close(out[k], expected)
    line = json.loads((tmp_path / "rounds.jsonl").read_text().splitlines()[0])
    assert line["sampled"] == ["c0", "c1", "c2"] and line["failed"] == {}


def faulty_client_app(raise_pid: int, hang_pid: int, release: threading.Event) -> ClientApp:
    app = ClientApp()
    app.query()(real_client_app.query)

    @app.train()
    def train(msg: Message, ctx: Context) -> Message:
        pid = ctx.node_config["partition-id"]
        if pid == raise_pid:
            raise RuntimeError("injected failure")
        if pid == hang_pid:
            release.wait(120)
        return real_client_app.train(msg, ctx)

    return app


def test_faulty_clients_are_dropped_and_round_completes(tmp_path, masakhanews_dir):
    # clients in order: hau-seen-00, hau-seen-01, hau-unseen-00, hau-unseen-01, yor-seen-00, ...
    cfg = load_config(None, tiny_overrides(masakhanews_dir, rounds=1, **{
        "federation.fraction": 1.0, "federation.client_timeout_s": 5.0, "federation.max_failure_fraction": 0.5}))
    release = threading.Event()
    try:
        run_standard_fl(cfg, tmp_path / "ok", resume=False, client_app=faulty_client_app(0, 1, release))
        rec = json.loads((tmp_path / "ok" / "rounds.jsonl").read_text().splitlines()[0])
        assert rec["sampled"] == ["hau-seen-00", "hau-seen-01", "yor-seen-00", "yor-seen-01"]
        assert rec["failed"]["hau-seen-00"].startswith("RuntimeError: injected failure")
        assert rec["failed"]["hau-seen-01"] == "no reply within the time limit"
        assert (tmp_path / "ok" / "checkpoint" / "checkpoint.json").is_file()

        strict = load_config(None, tiny_overrides(masakhanews_dir, rounds=1, **{
            "federation.fraction": 1.0, "federation.client_timeout_s": 5.0,
            "federation.max_failure_fraction": 0.25}))
        with pytest.raises(UserError, match="round 1: 2 of 4 clients failed"):
            run_standard_fl(strict, tmp_path / "strict", resume=False, client_app=faulty_client_app(0, 1, release))
    finally:
        release.set()


RESUME_CODE = """
import os, signal, sys
from fedp2eft.config import load_config
from fedp2eft.fl.engines import train_stage
from fedp2eft.methods.standard_fl import STANDARD_FL_STAGE
def run_standard_fl(cfg, out, resume=True, client_app=None, on_round=None):
    return train_stage(cfg, STANDARD_FL_STAGE, "off-the-shelf", cfg.base_model.seed, out, resume=resume,
                       client_app=client_app, on_round=on_round)
from fedp2eft.atomic import save_tensors
overrides, out, kill_after, resume = {overrides!r}, {out!r}, {kill_after!r}, {resume!r}
cfg = load_config(None, overrides)
def on_round(rec):
    if kill_after and rec["round"] == kill_after:
        os.kill(os.getpid(), signal.SIGKILL)
model = run_standard_fl(cfg, __import__("pathlib").Path(out), resume=resume, on_round=on_round)
save_tensors(out + "/final.safetensors", model.state_dict())
"""


def test_resume_after_kill_matches_uninterrupted(tmp_path, masakhanews_dir):
    from safetensors.torch import load_file

    overrides = tiny_overrides(masakhanews_dir, rounds=4, **{"federation.fraction": 0.5})
    full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
    r = run_python(RESUME_CODE.format(overrides=overrides, out=full, kill_after=0, resume=False), tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    killed = run_python(RESUME_CODE.format(overrides=overrides, out=cut, kill_after=2, resume=False), tmp_path)
    assert killed.returncode == -9
    assert json.loads((tmp_path / "cut" / "checkpoint" / "checkpoint.json").read_text())["round"] == 2
    resumed = run_python(RESUME_CODE.format(overrides=overrides, out=cut, kill_after=0, resume=True), tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = load_file(full + "/final.safetensors"), load_file(cut + "/final.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    rounds = [json.loads(x)["round"] for x in (tmp_path / "cut" / "rounds.jsonl").read_text().splitlines()]
    assert rounds == [1, 2, 3, 4]


MEMORY_CODE = """
import resource, json
from fedp2eft.config import load_config
from fedp2eft.fl.engines import train_stage
from fedp2eft.methods.standard_fl import STANDARD_FL_STAGE
def run_standard_fl(cfg, out, resume=True, client_app=None, on_round=None):
    return train_stage(cfg, STANDARD_FL_STAGE, "off-the-shelf", cfg.base_model.seed, out, resume=resume,
                       client_app=client_app, on_round=on_round)
cfg = load_config(None, {overrides!r})
run_standard_fl(cfg, __import__("pathlib").Path({out!r}), resume=False)
print(json.dumps({{"peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}}))
"""


@pytest.mark.integration
def test_peak_memory_does_not_grow_with_clients(tmp_path, masakhanews_dir):
    langs = ("ibo", "yor", "sna", "run", "xho")
    peaks = {}
    for per_lang in (1, 20):  # 5 languages x 2 pools x K = 10 and 200 clients
        overrides = tiny_overrides(masakhanews_dir, languages=langs, clients=per_lang, rounds=2,
                                   **{"federation.fraction": 0.01, "federation.min_clients": 2})
        r = run_python(MEMORY_CODE.format(overrides=overrides, out=str(tmp_path / f"m{per_lang}")), tmp_path)
        assert r.returncode == 0, r.stderr[-2000:]
        peaks[per_lang * 10] = json.loads(r.stdout.strip().splitlines()[-1])["peak_kib"]
    ratio = peaks[200] / peaks[10]
    print(f"peak RSS: 10 clients {peaks[10] / 1024:.0f} MiB, 200 clients {peaks[200] / 1024:.0f} MiB, ratio {ratio:.3f}")
    assert ratio <= 1.10, peaks


def test_job_carries_the_experiment(masakhanews_dir):
    cfg = load_config(None, tiny_overrides(masakhanews_dir))
    job = stage_job(cfg, STANDARD_FL_STAGE, "off-the-shelf", cfg.base_model.seed)
    assert job.num_clients == 8 and json.loads(job.experiment)["model"]["name"] == "tiny-bert"


def test_fedavg_of_lora_is_merged_into_a_plain_base(tmp_path, masakhanews_dir):
    from fedp2eft.models import load_classifier

    cfg = load_config(None, tiny_overrides(masakhanews_dir, rounds=1, **{
        "base_model.mode": '"lora"', "base_model.lora_rank": 4, "base_model.lora_alpha": 8,
        "base_model.lr": 1e-2}))
    model = run_standard_fl(cfg, tmp_path, resume=False)
    names = [n for n, _ in model.named_parameters()]
    assert not any("lora_" in n for n in names)  # merged: a plain classifier again
    base, _ = load_classifier("tiny-bert", 7)
    changed = [n for n, p in model.named_parameters()
               if n in dict(base.named_parameters()) and not torch.equal(p, dict(base.named_parameters())[n])]
    assert any("attention.self.query.weight" in n for n in changed)  # the LoRA update is in the weights
    arrays = (tmp_path / "checkpoint" / "checkpoint.json").read_text()
    assert '"round": 1' in arrays
