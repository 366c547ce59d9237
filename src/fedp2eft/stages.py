"""Federated training stages that personalisation methods depend on, each trained once per seed
(and per budget where the method needs it) and then read from disk:

- the Standard-FL base model, ``<out>/base_model/model`` (shared by every seed);
- FedP²EFT: the PSG, ``<out>/psg/seed<S>/psg.safetensors`` (+ the λ report and plots); the
  authors'-recipe PSG of method ``fedp2eft-paper`` in ``<out>/psg-paper/seed<S>/``;
- FedL2P: one learning-rate generator per budget, ``<out>/fedl2p/seed<S>/r<B>/generator.safetensors``;
- PF2LoRA: one shared level-1 adapter per budget, ``<out>/pf2lora/seed<S>/r<B>/shared.safetensors``,
  with every trained client's level 2 in ``…/r<B>/clients/`` (the clients' local storage).

All run on the configured engine with the same round loop, checkpoints and resume. Every stage
folder records the settings it was trained with (``settings.json``, written before training): a
folder whose settings differ from the config is refused, naming the keys that differ, or — under
``--fresh`` — deleted and trained again. Settings nest: a PSG records its base model's settings,
so retraining the base model invalidates the PSGs trained on it.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

from .atomic import save_tensors, write_json
from .config import Config
from .errors import UserError


def base_model_dir(out_dir: Path) -> Path:
    return Path(out_dir) / "base_model" / "model"


def base_spec(cfg: Config, out_dir: Path) -> str:
    """What the federated stages' clients start from: the base-model folder, or the configured kind."""
    if cfg.base_model.kind == "standard-fl":
        return str(base_model_dir(out_dir).resolve())
    return cfg.base_model.kind


PSG_SECTIONS = {"fedp2eft": "psg", "fedp2eft_paper": "psg-paper"}  # config section -> stage folder


def psg_dir(out_dir: Path, seed: int, section: str = "fedp2eft") -> Path:
    return Path(out_dir) / PSG_SECTIONS[section] / f"seed{seed}"


def bt_settings(cfg: Config, section: str = "fedp2eft"):
    """BT-LoRA's settings from a PSG section: stage 1 of the per-client baseline uses them as they
    are (epochs, batch, rates); personalisation replaces the fine-tuning ones."""
    from .fl.engines import psg_hp
    from .fl.worker import psg_settings

    return psg_settings(psg_hp(cfg, cfg.experiment.seeds[0], section)).bt


def _flatten(d, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def settings_diff(old: dict, new: dict) -> list[str]:
    """``key: old -> new`` for every (dotted) key whose value differs."""
    a, b = _flatten(old), _flatten(new)
    return [f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}" for k in sorted(set(a) | set(b))
            if a.get(k, "<absent>") != b.get(k, "<absent>")]


def claim_stage(folder: Path, settings: dict, fresh: bool = False) -> None:
    """Make ``folder`` belong to ``settings``: record them in a new folder; accept a folder with the
    same settings; otherwise refuse (naming the keys that differ) or, with ``fresh``, delete it."""
    folder = Path(folder)
    path = folder / "settings.json"
    settings = json.loads(json.dumps(settings))  # the JSON form, as it is compared on disk
    if path.is_file():
        old = json.loads(path.read_text())
        if old == settings:
            return
        problem = f"{folder} was trained with other settings ({'; '.join(settings_diff(old, settings)[:6])})"
    elif folder.is_dir() and any(folder.iterdir()):
        problem = f"{folder} holds a stage written without recorded settings"
    else:
        problem = None
    if problem is not None:
        if not fresh:
            raise UserError(f"{problem}; use --fresh to train it again (drops the runs it served) or another --out")
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(path, settings)


def _data_settings(cfg: Config) -> dict:
    """The data settings a stage depends on: all but ``path`` (a copy elsewhere is the same data)."""
    return {k: v for k, v in dataclasses.asdict(cfg.data).items() if k != "path"}


def _sampling(cfg: Config) -> dict:
    """The federation settings that decide which clients a stage's rounds sample."""
    return {"fraction": cfg.federation.fraction, "min_clients": cfg.federation.min_clients}


def base_settings(cfg: Config) -> dict:
    """What the base model depends on (for a Standard-FL base: model, data, its training and sampling)."""
    out = {"kind": cfg.base_model.kind, "model": dataclasses.asdict(cfg.model)}
    if cfg.base_model.kind == "standard-fl":
        out |= {"data": _data_settings(cfg), "base_model": dataclasses.asdict(cfg.base_model),
                "federation": _sampling(cfg)}
    return out


def psg_stage_settings(cfg: Config, seed: int, section: str = "fedp2eft") -> dict:
    from .fl.engines import psg_hp

    q = getattr(cfg, section)
    return {"base": base_settings(cfg), "data": _data_settings(cfg), "psg": psg_hp(cfg, seed, section),
            "rounds": q.rounds, "snapshot_every": q.snapshot_every, "federation": _sampling(cfg)}


def _logger(console):
    return console.print if console else print


def _round_line(r: dict, keys: tuple[str, ...]) -> str:
    parts = [f"  round {r['round']}: {len(r['sampled'])} clients"]
    parts += [f"{k} {r[k]:.4g}" for k in keys if isinstance(r.get(k), int | float)]
    return ", ".join(parts) + f", {r['seconds']} s"


def load_or_train_psg(cfg: Config, out_dir: Path, seed: int, base: torch.nn.Module, console=None, grid=None,
                      section: str = "fedp2eft", fresh: bool = False, folder: Path | None = None):
    """The trained PSG of this seed (FedP²EFT Alg. 1, trained federatedly once, then read from disk)
    with the settings of config section ``section``, in ``psg_dir`` (or ``folder``)."""
    from .fl.engines import run_psg_training
    from .lambda_report import write_lambda_trajectory
    from .methods.fedp2eft import new_psg

    q = getattr(cfg, section)
    folder = Path(folder) if folder is not None else psg_dir(out_dir, seed, section)
    claim_stage(folder, psg_stage_settings(cfg, seed, section), fresh)
    final = folder / "psg.safetensors"
    psg = new_psg(base, q.r_init, seed, cfg.personalise.head, q.psg_init)
    if final.is_file():
        psg.load_state_dict(load_file(str(final)))
        return psg
    log = _logger(console)
    log(f"FedP²EFT PSG [{section}] (seed {seed}): {q.rounds} rounds on the {cfg.federation.engine} engine, "
        f"checkpoints in {folder / 'checkpoint'}")
    psg = run_psg_training(cfg, base_spec(cfg, out_dir), seed, folder, resume=True,
                           on_round=lambda r: log(_round_line(r, ("l1", "lambda_mean"))), grid=grid,
                           section=section)
    save_tensors(final, psg.state_dict(), metadata={"r_init": str(q.r_init), "seed": str(seed)})
    write_lambda_trajectory(folder)
    return psg


def stage_dir(out_dir: Path, method: str, seed: int, budget: int) -> Path:
    return Path(out_dir) / method / f"seed{seed}" / f"r{budget}"


def load_or_train_fedl2p(cfg: Config, out_dir: Path, seed: int, budget: int, base: torch.nn.Module, console=None,
                         grid=None, fresh: bool = False):
    """FedL2P's learning-rate generator for one budget (trained federatedly once, then read from disk)."""
    from .fl.engines import fedl2p_hp, run_fedl2p_training
    from .methods.fedl2p import new_lr_generator

    folder = stage_dir(out_dir, "fedl2p", seed, budget)
    hp = fedl2p_hp(cfg, budget, seed)
    claim_stage(folder, hp | {"rounds": cfg.fedl2p.rounds, "base": base_settings(cfg)}, fresh)
    final = folder / "generator.safetensors"
    if final.is_file():
        generator = new_lr_generator(base, hp["base_lr"], seed, hp["head"])
        generator.load_state_dict(load_file(str(final)))
        return generator
    log = _logger(console)
    log(f"FedL2P generator (seed {seed}, r={budget}): {cfg.fedl2p.rounds} rounds on the {cfg.federation.engine} "
        f"engine, checkpoints in {folder / 'checkpoint'}")
    generator = run_fedl2p_training(cfg, base_spec(cfg, out_dir), budget, seed, folder, resume=True,
                                    on_round=lambda r: log(_round_line(r, ("val_loss", "lr_mean"))), grid=grid)
    save_tensors(final, generator.state_dict(), metadata={"budget": str(budget), "seed": str(seed)})
    return generator


def load_or_train_pf2lora(cfg: Config, out_dir: Path, seed: int, budget: int, console=None, grid=None,
                          fresh: bool = False):
    """PF2LoRA's shared state for one budget and the folder of its clients' level-2 adapters."""
    from .fl.engines import pf2lora_hp, run_pf2lora_training

    folder = stage_dir(out_dir, "pf2lora", seed, budget)
    claim_stage(folder, pf2lora_hp(cfg, budget, seed) | {"rounds": cfg.pf2lora.rounds, "base": base_settings(cfg)},
                fresh)
    final, clients = folder / "shared.safetensors", folder / "clients"
    if not final.is_file():
        log = _logger(console)
        log(f"PF2LoRA (seed {seed}, r={budget}): {cfg.pf2lora.rounds} rounds on the {cfg.federation.engine} engine, "
            f"checkpoints in {folder / 'checkpoint'}")
        state = run_pf2lora_training(cfg, base_spec(cfg, out_dir), budget, seed, folder, clients, resume=True,
                                     on_round=lambda r: log(_round_line(r, ("train_loss",))), grid=grid)
        save_tensors(final, state, metadata={"budget": str(budget), "seed": str(seed)})
    return load_file(str(final)), str(clients)


def method_resources(cfg: Config, out_dir: Path, seed: int, base: torch.nn.Module, tasks: dict,
                     runs: list[tuple[str, int | None]], console=None, fresh: bool = False) -> dict:
    """What the methods of ``runs`` (``(method, budget)`` pairs) need beyond a client, trained if missing."""
    from .methods.pf2lora import PF2LoRASettings

    p = cfg.personalise
    resources: dict = {"bt": bt_settings(cfg), "adalora_lr": p.adalora_lr, "adalora_alpha": p.adalora_alpha,
                       "tune_lrs": tuple(p.tune_lrs), "tune_fraction": p.tune_fraction}
    methods = {m for m, _ in runs}
    for section, names, key in (("fedp2eft", ("fedp2eft", "fedp2eft-mean1", "fedp2eft-tuned"), "psg"),
                                ("fedp2eft_paper", ("fedp2eft-paper",), "psg_paper")):
        if methods & set(names):
            from .lambda_report import write_lambda_report

            resources[key] = load_or_train_psg(cfg, out_dir, seed, base, console, section=section, fresh=fresh)
            write_lambda_report(base, resources[key], tasks, psg_dir(out_dir, seed, section), p.head)
    resources["bt_paper"] = bt_settings(cfg, "fedp2eft_paper")
    budgets = lambda name: sorted({b for m, b in runs if m == name})  # noqa: E731
    if "fedl2p" in methods:
        resources["fedl2p"] = {b: load_or_train_fedl2p(cfg, out_dir, seed, b, base, console, fresh=fresh)
                               for b in budgets("fedl2p")}
    if "pf2lora" in methods:
        resources["pf2lora"] = {b: load_or_train_pf2lora(cfg, out_dir, seed, b, console, fresh=fresh)
                                for b in budgets("pf2lora")}
        resources["pf2lora_settings"] = PF2LoRASettings(local_rank=cfg.pf2lora.local_rank, seed=seed, head=p.head)
    return resources
