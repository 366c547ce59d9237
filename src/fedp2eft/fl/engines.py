"""One federated job on one of three engines, all running the same ServerApp loop and ClientApp.

- ``inprocess``: :class:`InProcessGrid`, no Ray, no subprocesses, deterministic.
- ``simulation``: Flower's Simulation Engine (Ray), one virtual SuperNode per client, with
  ``federation.num_cpus`` / ``num_gpus`` per client.
- ``deployment``: SuperLink + SuperNodes started by the user; ``flwr run`` launches
  ``fedp2eft.fl.server_app:app`` (see README). Calling it from ``fedp2eft run`` is an error
  that says the command to use.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ..config import Config
from ..errors import UserError
from ..methods.standard_fl import FedAvgHP, final_model, initial_state
from .server_loop import LoopSettings, run_rounds


def fedavg_hp(cfg: Config) -> FedAvgHP:
    b = cfg.base_model
    return FedAvgHP(mode=b.mode, epochs=b.local_epochs, batch_size=b.batch_size, lr=b.lr,
                    freeze_embeddings=b.freeze_embeddings, lora_rank=b.lora_rank, lora_alpha=b.lora_alpha,
                    lora_dropout=b.lora_dropout, seed=cfg.experiment.seeds[0])


def loop_settings(cfg: Config) -> LoopSettings:
    f = cfg.federation
    return LoopSettings(rounds=cfg.base_model.rounds, fraction=f.fraction, min_clients=f.min_clients,
                        client_timeout_s=f.client_timeout_s, max_failure_fraction=f.max_failure_fraction,
                        checkpoint_every=f.checkpoint_every, eval_pool=f.eval_pool, eval_every=f.eval_every,
                        seed=cfg.experiment.seeds[0])


def make_job(cfg: Config) -> dict:
    from .worker import client_ids, experiment_json

    exp = experiment_json(cfg)
    return {"experiment": exp, "hp": dataclasses.asdict(fedavg_hp(cfg)), "num_clients": len(client_ids(exp))}


def pretrained_base(cfg: Config):
    from .worker import _base, _federation

    job = make_job(cfg)
    _, fed, _ = _federation(job["experiment"])
    base, _ = _base(job["experiment"], len(fed.label_names), cfg.experiment.seeds[0])
    return base, len(fed.clients)


def run_standard_fl(cfg: Config, out_dir: Path, resume: bool = True, client_app=None, on_round=None):
    """Train the Standard-FL base model; returns the final (merged) classifier."""
    from .client_app import app as default_client_app

    client_app = client_app or default_client_app
    job = make_job(cfg)
    base, num_clients = pretrained_base(cfg)
    init = initial_state(base, fedavg_hp(cfg))
    settings = loop_settings(cfg)
    engine = cfg.federation.engine
    kwargs = {"on_round": on_round} if on_round else {}
    if engine == "inprocess":
        from .inprocess import InProcessGrid

        grid = InProcessGrid(client_app, num_clients, client_timeout_s=settings.client_timeout_s)
        state = run_rounds(grid, job, init, settings, out_dir, resume=resume, **kwargs)
    elif engine == "simulation":
        state = _run_simulation(cfg, client_app, job, init, settings, out_dir, resume, num_clients)
    else:
        raise UserError(
            "federation.engine = 'deployment' runs through Flower's SuperLink: start it and the SuperNodes, "
            "then: flwr run . <federation> --run-config 'config=\"CONFIG\" out=\"DIR\"' (see README)"
        )
    return final_model(base, state, fedavg_hp(cfg))


def _run_simulation(cfg, client_app, job, init, settings, out_dir, resume, num_clients):
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    box = {}
    server = ServerApp()

    @server.main()
    def main(grid, context) -> None:
        box["state"] = run_rounds(grid, job, init, settings, out_dir, resume=resume)

    f = cfg.federation
    backend = {"client_resources": {"num_cpus": f.num_cpus, "num_gpus": f.num_gpus},
               "init_args": {"num_cpus": max(1, int(f.num_cpus)), "include_dashboard": False}}
    run_simulation(server_app=server, client_app=client_app, num_supernodes=num_clients, backend_config=backend)
    if "state" not in box:
        raise UserError("the simulation ended without a result; see the log above")
    return box["state"]


def save_base_model(model, tokenizer, folder: Path, meta: dict) -> None:
    """Write a base-model folder that ``load_classifier`` reads (backbone, tokenizer, head), atomically."""
    import os
    import shutil
    import tempfile

    from ..atomic import save_tensors

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        model.backbone.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        save_tensors(tmp / "head.safetensors", model.head.state_dict())
        (tmp / "fedp2eft_classifier.json").write_text(json.dumps(
            {"num_labels": model.num_labels, "pooling": model.pooling, **meta}, indent=1))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
