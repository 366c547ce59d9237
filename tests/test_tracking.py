"""Experiment tracking: a run on real rows reports every federated round and every personalisation run to
TensorBoard's event files and an MLflow store (read back with each tool's own reader) and to an offline
W&B run (its record file holds every logged key and value)."""

from __future__ import annotations

import json

import pytest

from fedp2eft.cli import main
from fedp2eft.config import load_config
from fedp2eft.errors import UserError
from fl_helpers import tiny_overrides


def test_a_run_is_tracked_in_tensorboard_and_mlflow(tmp_path, masakhanews_dir):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    sets = tiny_overrides(masakhanews_dir, rounds=2, **{"experiment.tracking": '["tensorboard", "mlflow", "wandb"]',
                                                        "personalise.methods": '["none", "lora"]'})
    args = [x for s in sets for x in ("--set", s)]
    assert main(["run", "configs/quickstart.toml", "--out", str(tmp_path), *args]) == 0
    runs = json.loads((tmp_path / "results.json").read_text())["runs"]
    rounds = [json.loads(x) for x in (tmp_path / "base_model" / "rounds.jsonl").read_text().splitlines()]

    (events,) = (tmp_path / "tracking" / "tensorboard").glob("events.out.tfevents.*")
    acc = EventAccumulator(str(events.parent))
    acc.Reload()
    loss = acc.Scalars("base_model/train_loss")
    assert [e.step for e in loss] == [1, 2]
    assert [e.value for e in loss] == pytest.approx([r["train_loss"] for r in rounds])
    lora = next(r for r in runs if r["method"] == "lora")
    assert acc.Scalars(f"personalisation/lora/r{lora['budget']}/seen")[0].value == pytest.approx(lora["mean"])

    client = MlflowClient(f"sqlite:///{tmp_path / 'tracking' / 'mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "quickstart"]
    by_name = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(by_name) == {"base_model", "personalisation"}
    history = client.get_metric_history(by_name["base_model"].info.run_id, "train_loss")
    assert [m.step for m in history] == [1, 2]
    assert by_name["base_model"].data.params["base_model.lr"] == "0.001"  # the stage's record as parameters
    none = next(r for r in runs if r["method"] == "none" and r["pool"] == "seen")
    metrics = by_name["personalisation"].data.metrics
    assert metrics["none.seen"] == pytest.approx(none["mean"])
    assert {f"none.seen.{lang}" for lang in none["per_language"]} <= set(metrics)  # per-language scores
    assert by_name["personalisation"].data.params["personalise.lr"] == "0.001"  # the run's settings

    (record,) = (tmp_path / "tracking" / "wandb").glob("offline-run-*/run-*.wandb")
    data = record.read_bytes()
    assert b"base_model/train_loss" in data and b"personalisation/lora" in data
    assert all(json.dumps(r["train_loss"]).encode() in data for r in rounds)  # the values as W&B's JSON


def test_an_unknown_tracker_is_a_one_line_error(masakhanews_dir):
    with pytest.raises(UserError, match=r"experiment.tracking: each must be one of \['tensorboard', 'mlflow', 'wandb'\]"):
        load_config(None, tiny_overrides(masakhanews_dir, **{"experiment.tracking": '["comet"]'}))
