"""What a node does for a message: load its client's data and the base model (cached per
process, never per client), call ``fedp2eft.methods`` code, and return plain results.

Per-client state (the trained copy of the model, the client's encoded data) exists only for
the duration of one call, so memory does not grow with the number of clients.
"""

from __future__ import annotations

import functools
import json

import torch

from ..config import Config, from_dict
from ..methods.base import ClientTask
from ..methods.batches import encode
from ..methods.standard_fl import FedAvgHP, client_update, evaluate_state


@functools.lru_cache(maxsize=2)
def _federation(config_json: str):
    from ..pipeline import load_federation

    cfg = from_dict(json.loads(config_json))
    fed = load_federation(cfg)
    return cfg, fed, {c.cid: c for c in fed.clients}


@functools.lru_cache(maxsize=1)
def _base(config_json: str, num_labels: int, seed: int):
    from ..pipeline import load_base_model

    cfg = from_dict(json.loads(config_json))
    return load_base_model(cfg, num_labels, seed, base_override="off-the-shelf")


def experiment_json(cfg: Config) -> str:
    return json.dumps(cfg.to_dict(), sort_keys=True)


def client_ids(config_json: str) -> list[tuple[str, str]]:
    """Every client of the federation as ``(client_id, pool)``; node i serves entry i."""
    _, fed, _ = _federation(config_json)
    return [(c.cid, c.pool) for c in fed.clients]


def client_task(config_json: str, cid: str) -> tuple[Config, ClientTask, int]:
    cfg, fed, by_id = _federation(config_json)
    client = by_id.get(cid)
    if client is None:
        raise KeyError(f"unknown client {cid!r}")
    _, tok = _base(config_json, len(fed.label_names), cfg.experiment.seeds[0])
    task = ClientTask(cid, client.language, encode(tok, client.train, cfg.data.max_length),
                      encode(tok, client.test, cfg.data.max_length))
    return cfg, task, len(fed.label_names)


def hp_from(job: dict) -> FedAvgHP:
    return FedAvgHP(**job["hp"])


def train(job: dict, cid: str, state: dict[str, torch.Tensor]):
    cfg, task, num_labels = client_task(job["experiment"], cid)
    base, _ = _base(job["experiment"], num_labels, cfg.experiment.seeds[0])
    return client_update(base, state, task, hp_from(job))


def evaluate(job: dict, cid: str, state: dict[str, torch.Tensor]) -> tuple[int, int]:
    cfg, task, num_labels = client_task(job["experiment"], cid)
    base, _ = _base(job["experiment"], num_labels, cfg.experiment.seeds[0])
    return evaluate_state(base, state, task, hp_from(job))
