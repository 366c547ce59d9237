"""What a node does for a message: load its client's data and the base model (cached per
process, never per client), call ``fedp2eft.methods`` code, and return plain results.

A job (sent in every message) names the experiment config (JSON), the algorithm (``fedavg`` for
the Standard-FL base model, ``psg`` for FedP²EFT's generator, ``fedl2p`` for FedL2P's
learning-rate generator, ``pf2lora`` for PF2LoRA's shared level), its hyperparameters, and the base
model the clients start from (``off-the-shelf`` or a folder). PF2LoRA's jobs also name the
client-local folder where each client keeps its level-2 adapter between rounds. Per-client state (the trained copy
of the model, the client's encoded data) exists only for the duration of one call, so memory does
not grow with the number of clients.
"""

from __future__ import annotations

import functools
import json

import torch

from ..config import Config, from_dict
from ..methods.base import ClientTask
from ..methods.batches import encode
from ..methods.bt_training import BTSettings
from ..methods.fedl2p import FedL2PSettings, fedl2p_client_update
from ..methods.fedp2eft import PSGSettings, psg_client_update
from ..methods.pf2lora import PF2LoRASettings, pf2lora_client_update
from ..methods.standard_fl import FedAvgHP, client_update, evaluate_state


@functools.lru_cache(maxsize=2)
def _federation(config_json: str):
    from ..pipeline import load_federation

    cfg = from_dict(json.loads(config_json))
    fed = load_federation(cfg)
    return cfg, fed, {c.cid: c for c in fed.clients}


@functools.lru_cache(maxsize=1)
def _base(config_json: str, num_labels: int, seed: int, base: str = "off-the-shelf"):
    from ..pipeline import load_base_model

    cfg = from_dict(json.loads(config_json))
    return load_base_model(cfg, num_labels, seed, base_override=base)


def experiment_json(cfg: Config) -> str:
    return json.dumps(cfg.to_dict(), sort_keys=True)


def client_ids(config_json: str) -> list[tuple[str, str]]:
    """Every client of the federation as ``(client_id, pool)``; node i serves entry i."""
    _, fed, _ = _federation(config_json)
    return [(c.cid, c.pool) for c in fed.clients]


def base_model(job: dict):
    """The base model the job's clients start from; ``job["seed"]`` seeds an off-the-shelf head."""
    cfg, fed, _ = _federation(job["experiment"])
    seed = int(job.get("seed", cfg.experiment.seeds[0]))
    return _base(job["experiment"], len(fed.label_names), seed, job.get("base", "off-the-shelf"))


def client_task(job: dict, cid: str) -> ClientTask:
    cfg, fed, by_id = _federation(job["experiment"])
    client = by_id.get(cid)
    if client is None:
        raise KeyError(f"unknown client {cid!r}")
    _, tok = base_model(job)
    return ClientTask(cid, client.language, encode(tok, client.train, cfg.data.max_length),
                      encode(tok, client.test, cfg.data.max_length))


def for_round(job: dict, round_: int) -> dict:
    """The job as a client runs it in ``round_``: its seed made unique per round."""
    return {**job, "hp": {**job["hp"], "seed": int(job["hp"]["seed"]) * 1_000_003 + int(round_)}}


def psg_settings(hp: dict) -> PSGSettings:
    hp = dict(hp)
    own = {k: hp.pop(k) for k in ("regress_steps", "regress_lr", "regress_loss", "psg_init") if k in hp}
    return PSGSettings(bt=BTSettings(**hp), **own)


def train(job: dict, cid: str, state: dict[str, torch.Tensor]):
    """One local update; returns ``(state, num_examples, metrics)``."""
    task = client_task(job, cid)
    base, _ = base_model(job)
    algorithm = job.get("algorithm", "fedavg")
    if algorithm == "psg":
        return psg_client_update(base, state, task, psg_settings(job["hp"]))
    if algorithm == "fedl2p":
        return fedl2p_client_update(base, state, task, FedL2PSettings(**job["hp"]))
    if algorithm == "pf2lora":
        return pf2lora_client_update(base, state, task, PF2LoRASettings(**job["hp"]), job["client_state_dir"])
    if algorithm != "fedavg":
        raise ValueError(f"unknown algorithm {algorithm!r}")
    return client_update(base, state, task, FedAvgHP(**job["hp"]))


def evaluate(job: dict, cid: str, state: dict[str, torch.Tensor]) -> tuple[int, int]:
    if job.get("algorithm", "fedavg") != "fedavg":
        raise ValueError("federated evaluation is defined for the Standard-FL model only")
    task = client_task(job, cid)
    base, _ = base_model(job)
    return evaluate_state(base, state, task, FedAvgHP(**job["hp"]))
