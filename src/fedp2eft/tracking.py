"""Experiment tracking through the trackers' own clients, chosen by ``[experiment] tracking``:

- ``tensorboard``: torch's ``SummaryWriter`` event files in ``<tracking_dir>/tensorboard`` —
  ``tensorboard --logdir <tracking_dir>/tensorboard``;
- ``mlflow``: an MLflow SQLite store, ``<tracking_dir>/mlflow.db`` (MLflow 3 keeps its file store in
  maintenance mode) — ``mlflow ui --backend-store-uri sqlite:///<tracking_dir>/mlflow.db``;
- ``wandb``: a W&B run in ``<tracking_dir>/wandb``, offline unless a server is configured
  (``WANDB_API_KEY`` or ``WANDB_BASE_URL`` set) — ``wandb sync <tracking_dir>/wandb/offline-run-*``.

What is logged: the run's settings (the config), every federated stage's round metrics as it trains (one
series per stage and seed, ``<stage>/seed<S>[/r<B>]``: the clients' averaged metrics — losses, λ statistics,
learned rates —, the federated evaluation, the privacy spent, the round's seconds; in MLflow one run per
stage with the stage's record as its parameters), and every personalisation run's mean and per-language
scores when it finishes (``personalisation/<method>[/r<B>]/<pool>[/<language>]``, step = seed).
``tracking_dir`` defaults to ``<out>/tracking``.

The run (``pipeline``) opens a ``session``; the round logger (``stages.round_logger``) and the pipeline
report to whatever session is open, as they report to the console.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import UserError
from .setup.stage_state import flatten

_ACTIVE: list = []


def scalars(record: dict) -> dict[str, float]:
    """A round record's numbers: its own, the federated evaluation's (``eval_<metric>``), the privacy spent."""
    out = {k: float(v) for k, v in record.items() if isinstance(v, int | float) and not isinstance(v, bool)
           and k != "round"}
    for k, v in (record.get("eval") or {}).items():
        if k != "pool" and isinstance(v, int | float):
            out[f"eval_{k}"] = float(v)
    if isinstance(record.get("privacy"), dict):
        out["epsilon"] = float(record["privacy"]["epsilon"])
    return out


class _TensorBoard:
    def __init__(self, folder: Path, experiment: str, config: dict):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError("experiment.tracking = 'tensorboard' needs the tensorboard package: "
                            "pip install tensorboard (bash scripts/setup.sh installs it)") from None
        self.writer = SummaryWriter(str(folder / "tensorboard"))
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=1) + "\n```")

    def stage_round(self, tag: str, record: dict, settings: dict) -> None:
        for k, v in scalars(record).items():
            self.writer.add_scalar(f"{tag}/{k}", v, record["round"])
        self.writer.flush()

    def run(self, tag: str, value: float, step: int) -> None:
        self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class _MLflow:
    def __init__(self, folder: Path, experiment: str, config: dict):
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise UserError("experiment.tracking = 'mlflow' needs the MLflow client: pip install mlflow-skinny "
                            "(bash scripts/setup.sh installs it)") from None
        for name in ("mlflow", "alembic"):  # their INFO lines (database set-up) would break the progress display
            logging.getLogger(name).setLevel(logging.WARNING)
        folder.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(f"sqlite:///{(folder / 'mlflow.db').resolve()}")
        found = self.client.get_experiment_by_name(experiment)
        self.experiment = found.experiment_id if found else self.client.create_experiment(experiment)
        self.runs: dict[str, str] = {}
        self.config = flatten(config)

    def _run(self, name: str, params: dict | None = None) -> str:
        if name not in self.runs:
            run = self.client.create_run(self.experiment, run_name=name)
            self.runs[name] = run.info.run_id
            for k, v in (params or {}).items():
                self.client.log_param(run.info.run_id, k, str(v)[:500])
        return self.runs[name]

    def stage_round(self, tag: str, record: dict, settings: dict) -> None:
        run = self._run(tag, settings)
        for k, v in scalars(record).items():
            self.client.log_metric(run, k, v, step=record["round"])

    def run(self, tag: str, value: float, step: int) -> None:
        self.client.log_metric(self._run("personalisation", self.config),
                               tag.removeprefix("personalisation/").replace("/", "."), value, step=step)

    def close(self) -> None:
        for run in self.runs.values():
            self.client.set_terminated(run)


class _WandB:
    def __init__(self, folder: Path, experiment: str, config: dict):
        try:
            import wandb
        except ImportError:
            raise UserError("experiment.tracking = 'wandb' needs the W&B client: pip install wandb") from None
        online = bool(os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_BASE_URL"))
        (folder / "wandb").mkdir(parents=True, exist_ok=True)
        self.run_ = wandb.init(project=experiment, dir=str(folder), config=config,
                               mode="online" if online else "offline", settings=wandb.Settings(silent=True))

    def stage_round(self, tag: str, record: dict, settings: dict) -> None:
        self.run_.log({f"{tag}/{k}": v for k, v in scalars(record).items()} | {f"{tag}/round": record["round"]})

    def run(self, tag: str, value: float, step: int) -> None:
        self.run_.log({tag: value, f"{tag}/seed": step})

    def close(self) -> None:
        self.run_.finish()


_KINDS = {"tensorboard": _TensorBoard, "mlflow": _MLflow, "wandb": _WandB}


@contextmanager
def session(names: list[str], folder: Path, experiment: str, config: dict) -> Iterator[None]:
    """Open the trackers ``names`` (writing under ``folder``; ``config``: the run's settings) for the
    block; they are closed after it."""
    trackers = [_KINDS[n](Path(folder), experiment, config) for n in names]
    _ACTIVE[:] = trackers
    try:
        yield
    finally:
        _ACTIVE.clear()
        for t in trackers:
            t.close()


def stage_round(tag: str, record: dict, settings: dict | None = None) -> None:
    """A federated stage's round ``record`` (``rounds.jsonl``'s line), as series ``tag``; ``settings`` (the
    stage's record, flattened) become the tracker's run parameters where it has them."""
    for t in _ACTIVE:
        t.stage_round(tag, record, settings or {})


def run_finished(run: dict) -> None:
    """A personalisation run's mean score and its per-language scores."""
    tag = f"personalisation/{run['method']}" + (f"/r{run['budget']}" if run.get("budget") else "") + f"/{run['pool']}"
    for t in _ACTIVE:
        t.run(tag, float(run["mean"]), int(run["seed"]))
        for language, score in run.get("per_language", {}).items():  # {"value": mean, "n": rows}
            t.run(f"{tag}/{language}", float(score["value"] if isinstance(score, dict) else score), int(run["seed"]))
