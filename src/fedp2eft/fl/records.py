"""Conversion between torch state dicts / plain dicts and Flower records."""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from ..setup.jobs import Job


def to_arrays(state: dict[str, torch.Tensor]) -> ArrayRecord:
    return ArrayRecord({k: v.detach().cpu().contiguous() for k, v in state.items()})


def from_arrays(record: ArrayRecord) -> dict[str, torch.Tensor]:
    return dict(record.to_torch_state_dict())


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
