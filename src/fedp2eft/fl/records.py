"""Conversion between torch state dicts / plain dicts and Flower records."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from ..setup.jobs import Job


def to_arrays(state: dict[str, torch.Tensor]) -> ArrayRecord:
    return ArrayRecord({k: v.detach().cpu().contiguous() for k, v in state.items()})


def from_arrays(record: ArrayRecord) -> dict[str, torch.Tensor]:
    return dict(record.to_torch_state_dict())


class RecordState(Mapping):
    """A received state, read-only, each tensor converted from the message when read: a client that
    copies the global state into its model (``load_state``, ``load_state_dict``) then never holds a
    second whole copy of it beside the message for the length of its training."""

    def __init__(self, record: ArrayRecord):
        self._record = record

    def __getitem__(self, key: str) -> torch.Tensor:
        return torch.from_numpy(self._record[key].numpy())

    def __iter__(self) -> Iterator[str]:
        return iter(self._record.keys())

    def __len__(self) -> int:
        return len(self._record)


def job_config(job: Job) -> ConfigRecord:
    """The job travels as one JSON string (config records hold only scalars/lists)."""
    return ConfigRecord({"job": job.to_json()})


def read_job(content: RecordDict) -> Job:
    return Job.from_json(content.config_records["config"]["job"])


def train_reply(state: dict[str, torch.Tensor], num_examples: int, metrics: dict[str, float]) -> RecordDict:
    return RecordDict({
        "arrays": to_arrays(state),
        "metrics": MetricRecord({"num-examples": num_examples, **{k: float(v) for k, v in metrics.items()}}),
    })
