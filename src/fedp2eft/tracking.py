"""Experiment tracking through the trackers' own clients, chosen by ``[experiment] tracking``:

- ``tensorboard``: torch's ``SummaryWriter`` event files in ``<tracking_dir>/tensorboard`` —
  ``tensorboard --logdir <tracking_dir>/tensorboard``;
- ``mlflow``: an MLflow SQLite store, ``<tracking_dir>/mlflow.db`` (MLflow 3 keeps its file store in
  maintenance mode) — ``mlflow ui --backend-store-uri sqlite:///<tracking_dir>/mlflow.db``.

What is logged: every federated stage's round metrics as it trains (one series per stage and seed,
``<stage>/seed<S>[/r<B>]``: the clients' averaged metrics, the federated evaluation, the privacy spent,
the round's seconds; in MLflow one run per stage with the stage's record as its parameters), and every
personalisation run's mean score when it finishes (``personalisation/<method>[/r<B>]/<pool>``, step =
seed). ``tracking_dir`` defaults to ``<out>/tracking``. Nothing is sent anywhere: both write files.

The run (``pipeline``) opens a ``session``; the round logger (``stages.round_logger``) and the pipeline
report to whatever session is open, as they report to the console.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import UserError

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
    def __init__(self, folder: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError("experiment.tracking = 'tensorboard' needs the tensorboard package: "
                            "pip install tensorboard (bash scripts/setup.sh installs it)") from None
        self.writer = SummaryWriter(str(folder / "tensorboard"))

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
    def __init__(self, folder: Path, experiment: str):
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
        self.client.log_metric(self._run("personalisation"), tag.removeprefix("personalisation/").replace("/", "."),
                               value, step=step)

    def close(self) -> None:
        for run in self.runs.values():
            self.client.set_terminated(run)


@contextmanager
def session(names: list[str], folder: Path, experiment: str) -> Iterator[None]:
    """Open the trackers ``names`` (writing under ``folder``) for the block; they are closed after it."""
    trackers = [_TensorBoard(folder) if n == "tensorboard" else _MLflow(folder, experiment) for n in names]
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
    """A personalisation run's mean score."""
    tag = f"personalisation/{run['method']}" + (f"/r{run['budget']}" if run.get("budget") else "") + f"/{run['pool']}"
    for t in _ACTIVE:
        t.run(tag, float(run["mean"]), int(run["seed"]))
