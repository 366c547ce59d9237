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
                    lora_dropout=b.lora_dropout, seed=b.seed)


def loop_settings(cfg: Config) -> LoopSettings:
    f = cfg.federation
    return LoopSettings(rounds=cfg.base_model.rounds, fraction=f.fraction, min_clients=f.min_clients,
                        client_timeout_s=f.client_timeout_s, max_failure_fraction=f.max_failure_fraction,
                        checkpoint_every=f.checkpoint_every, eval_pool=f.eval_pool, eval_every=f.eval_every,
                        seed=cfg.base_model.seed)


def make_job(cfg: Config) -> dict:
    """The Standard-FL job: FedAvg from the off-the-shelf model."""
    from .worker import client_ids, experiment_json

    exp = experiment_json(cfg)
    return {"experiment": exp, "algorithm": "fedavg", "base": "off-the-shelf", "seed": cfg.base_model.seed,
            "hp": dataclasses.asdict(fedavg_hp(cfg)), "num_clients": len(client_ids(exp))}


def psg_hp(cfg: Config, seed: int, section: str = "fedp2eft") -> dict:
    """PSGSettings as a flat dict: the PSG section (``fedp2eft`` or ``fedp2eft_paper``) plus the adapter
    recipe it shares with personalisation (head mode, fixed A), which fixes the PSG's outputs."""
    q, p = getattr(cfg, section), cfg.personalise
    return {"r_init": q.r_init, "lora_alpha": q.lora_alpha, "alpha_s": q.alpha_s, "alpha_p": q.alpha_p,
            "lambda_lr": q.lambda_lr, "lr": q.lr, "head_lr": q.head_lr, "epochs": q.local_epochs,
            "batch_size": q.batch_size, "seed": seed, "head": p.head, "lora_a_seed": p.lora_a_seed,
            "regress_steps": q.regress_steps, "regress_lr": q.regress_lr, "regress_loss": q.regress_loss,
            "psg_init": q.psg_init}


def make_psg_job(cfg: Config, base: str, seed: int, section: str = "fedp2eft") -> dict:
    """FedP²EFT's job: federated PSG training on top of ``base`` (a folder or off-the-shelf)."""
    from .worker import client_ids, experiment_json

    exp = experiment_json(cfg)
    return {"experiment": exp, "algorithm": "psg", "base": base, "seed": seed, "hp": psg_hp(cfg, seed, section),
            "num_clients": len(client_ids(exp))}


def pretrained_base(cfg: Config, job: dict | None = None):
    from .worker import base_model, client_ids

    job = job or make_job(cfg)
    base, _ = base_model(job)
    return base, len(client_ids(job["experiment"]))


def run_job(cfg: Config, job: dict, init: dict, settings: LoopSettings, out_dir: Path, resume: bool,
            client_app=None, on_round=None, grid=None) -> dict:
    """Run any job's rounds on the configured engine (or on ``grid``: the Deployment Engine's,
    handed in by the ServerApp); returns the final state."""
    from .client_app import app as default_client_app

    client_app = client_app or default_client_app
    engine = cfg.federation.engine
    kwargs = {"on_round": on_round} if on_round else {}
    if grid is not None:
        return run_rounds(grid, job, init, settings, out_dir, resume=resume, **kwargs)
    if engine == "inprocess":
        from .inprocess import InProcessGrid

        grid = InProcessGrid(client_app, job["num_clients"], client_timeout_s=settings.client_timeout_s)
        return run_rounds(grid, job, init, settings, out_dir, resume=resume, **kwargs)
    if engine == "simulation":
        return _run_simulation(cfg, client_app, job, init, settings, out_dir, resume, job["num_clients"])
    raise UserError(
        "federation.engine = 'deployment' runs through Flower's SuperLink: start it and the SuperNodes, "
        "then: flwr run . <connection> --run-config 'config=\"CONFIG\" out=\"DIR\"' (see README)"
    )


def run_standard_fl(cfg: Config, out_dir: Path, resume: bool = True, client_app=None, on_round=None):
    """Train the Standard-FL base model; returns the final (merged) classifier."""
    job = make_job(cfg)
    base, _ = pretrained_base(cfg, job)
    state = run_job(cfg, job, initial_state(base, fedavg_hp(cfg)), loop_settings(cfg), out_dir, resume,
                    client_app, on_round)
    return final_model(base, state, fedavg_hp(cfg))


def run_psg_training(cfg: Config, base: str, seed: int, out_dir: Path, resume: bool = True, client_app=None,
                     on_round=None, grid=None, section: str = "fedp2eft"):
    """Federated PSG training (FedP²EFT Alg. 1) with the ``section`` settings; returns the trained PSG."""
    from ..methods.fedp2eft import new_psg

    job = make_psg_job(cfg, base, seed, section)
    base_model, _ = pretrained_base(cfg, job)
    q = getattr(cfg, section)
    psg = new_psg(base_model, q.r_init, seed, cfg.personalise.head, q.psg_init)
    settings = dataclasses.replace(loop_settings(cfg), rounds=q.rounds, seed=seed, eval_pool="",
                                   eval_every=0, snapshot_every=q.snapshot_every)
    state = run_job(cfg, job, dict(psg.state_dict()), settings, out_dir, resume, client_app, on_round, grid)
    psg.load_state_dict(state)
    return psg


def _section_hp(section) -> dict:
    """A method's config section as its client settings: every field but the server's ``rounds``."""
    return {k: v for k, v in dataclasses.asdict(section).items() if k != "rounds"}


def fedl2p_hp(cfg: Config, budget: int, seed: int) -> dict:
    """FedL2PSettings fields: the [fedl2p] section, with the inner fine-tuning taken from [personalise]."""
    q, p = cfg.fedl2p, cfg.personalise
    return _section_hp(q) | {"budget": budget, "base_lr": q.base_lr or p.lr, "head_lr": p.head_lr,
                             "epochs": p.epochs, "batch_size": p.batch_size, "seed": seed, "head": p.head,
                             "weight_decay": p.weight_decay, "max_grad_norm": p.max_grad_norm,
                             "lora_a_seed": p.lora_a_seed}


def pf2lora_hp(cfg: Config, budget: int, seed: int) -> dict:
    """PF2LoRASettings fields: the [pf2lora] section for one budget and seed (and the head mode)."""
    return _section_hp(cfg.pf2lora) | {"budget": budget, "seed": seed, "head": cfg.personalise.head}


def _generator_job(cfg: Config, algorithm: str, base: str, hp: dict, **extra) -> dict:
    from .worker import client_ids, experiment_json

    exp = experiment_json(cfg)
    return {"experiment": exp, "algorithm": algorithm, "base": base, "seed": hp["seed"], "hp": hp,
            "num_clients": len(client_ids(exp)), **extra}


def run_fedl2p_training(cfg: Config, base: str, budget: int, seed: int, out_dir: Path, resume: bool = True,
                        client_app=None, on_round=None, grid=None):
    """FedL2P's federated meta-training of the learning-rate generator for one budget."""
    from ..methods.fedl2p import new_lr_generator

    hp = fedl2p_hp(cfg, budget, seed)
    job = _generator_job(cfg, "fedl2p", base, hp)
    base_model, _ = pretrained_base(cfg, job)
    generator = new_lr_generator(base_model, hp["base_lr"], seed, hp["head"])
    settings = dataclasses.replace(loop_settings(cfg), rounds=cfg.fedl2p.rounds, seed=seed, eval_pool="", eval_every=0)
    generator.load_state_dict(run_job(cfg, job, dict(generator.state_dict()), settings, out_dir, resume,
                                      client_app, on_round, grid))
    return generator


def run_pf2lora_training(cfg: Config, base: str, budget: int, seed: int, out_dir: Path, client_state_dir: Path,
                         resume: bool = True, client_app=None, on_round=None, grid=None) -> dict:
    """PF2LoRA's federated bilevel training for one budget; returns the shared (A, B, head) state.
    Each client keeps its level-2 adapter in ``client_state_dir`` (client-local storage)."""
    from ..methods.pf2lora import PF2LoRASettings, initial_shared_state

    hp = pf2lora_hp(cfg, budget, seed)
    job = _generator_job(cfg, "pf2lora", base, hp, client_state_dir=str(client_state_dir))
    base_model, _ = pretrained_base(cfg, job)
    settings = dataclasses.replace(loop_settings(cfg), rounds=cfg.pf2lora.rounds, seed=seed, eval_pool="", eval_every=0)
    init = initial_shared_state(base_model, PF2LoRASettings(**hp))
    return run_job(cfg, job, init, settings, out_dir, resume, client_app, on_round, grid)


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


def state_fingerprint(model) -> str:
    """SHA-256 (first 16 hex digits) of every parameter and buffer, in name order: two base models with
    the same settings but different weights (another machine, another library version) differ here."""
    import hashlib

    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def save_base_model(model, tokenizer, folder: Path, meta: dict) -> None:
    """Write a base-model folder that ``load_classifier`` reads (backbone, tokenizer, head), atomically."""
    from ..atomic import atomic_folder, save_tensors

    with atomic_folder(folder) as tmp:
        model.backbone.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        save_tensors(tmp / "head.safetensors", model.head.state_dict())
        (tmp / "fedp2eft_classifier.json").write_text(json.dumps(
            {"num_labels": model.num_labels, "pooling": model.pooling, "fingerprint": state_fingerprint(model),
             **meta}, indent=1))
