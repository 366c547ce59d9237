"""Federated training stages that personalisation methods depend on, each trained once per seed
(and per budget where the method needs it) and then read from disk:

- FedP²EFT: the PSG, ``<out>/psg/seed<S>/psg.safetensors`` (+ the λ report and plots);
- FedL2P: one learning-rate generator per budget, ``<out>/fedl2p/seed<S>/r<B>/generator.safetensors``;
- PF2LoRA: one shared level-1 adapter per budget, ``<out>/pf2lora/seed<S>/r<B>/shared.safetensors``,
  with every trained client's level 2 in ``…/r<B>/clients/`` (the clients' local storage).

All run on the configured engine with the same round loop, checkpoints and resume.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from .atomic import save_tensors
from .config import Config


def base_model_dir(out_dir: Path) -> Path:
    return Path(out_dir) / "base_model" / "model"


def base_spec(cfg: Config, out_dir: Path) -> str:
    """What the federated stages' clients start from: the base-model folder, or the configured kind."""
    if cfg.base_model.kind == "standard-fl":
        return str(base_model_dir(out_dir).resolve())
    return cfg.base_model.kind


def psg_dir(out_dir: Path, seed: int) -> Path:
    return Path(out_dir) / "psg" / f"seed{seed}"


def bt_settings(cfg: Config):
    from .methods.bt_training import BTSettings

    q = cfg.fedp2eft
    return BTSettings(r_init=q.r_init, lora_alpha=q.lora_alpha, alpha_s=q.alpha_s, alpha_p=q.alpha_p,
                      lambda_lr=q.lambda_lr)


def _logger(console):
    return console.print if console else print


def _round_line(r: dict, keys: tuple[str, ...]) -> str:
    parts = [f"  round {r['round']}: {len(r['sampled'])} clients"]
    parts += [f"{k} {r[k]:.4g}" for k in keys if isinstance(r.get(k), int | float)]
    return ", ".join(parts) + f", {r['seconds']} s"


def load_or_train_psg(cfg: Config, out_dir: Path, seed: int, base: torch.nn.Module, console=None, grid=None):
    """The trained PSG of this seed (FedP²EFT Alg. 1, trained federatedly once, then read from disk)."""
    from .fl.engines import run_psg_training
    from .methods.fedp2eft import new_psg

    folder = psg_dir(out_dir, seed)
    final = folder / "psg.safetensors"
    psg = new_psg(base, cfg.fedp2eft.r_init, seed)
    if final.is_file():
        psg.load_state_dict(load_file(str(final)))
        return psg
    log = _logger(console)
    log(f"FedP²EFT PSG (seed {seed}): {cfg.fedp2eft.rounds} rounds on the {cfg.federation.engine} engine, "
        f"checkpoints in {folder / 'checkpoint'}")
    psg = run_psg_training(cfg, base_spec(cfg, out_dir), seed, folder, resume=True,
                           on_round=lambda r: log(_round_line(r, ("l1", "lambda_mean"))), grid=grid)
    save_tensors(final, psg.state_dict(), metadata={"r_init": str(cfg.fedp2eft.r_init), "seed": str(seed)})
    return psg


def stage_dir(out_dir: Path, method: str, seed: int, budget: int) -> Path:
    return Path(out_dir) / method / f"seed{seed}" / f"r{budget}"


def _check_stage_settings(folder: Path, settings: dict) -> None:
    """A stage folder belongs to one set of settings: refuse to mix (written before training starts)."""
    import json

    from .atomic import write_json
    from .errors import UserError

    path = folder / "settings.json"
    if path.is_file():
        if json.loads(path.read_text()) != settings:
            raise UserError(f"{folder} was trained with other settings ({path}); use another --out or remove it")
        return
    folder.mkdir(parents=True, exist_ok=True)
    write_json(path, settings)


def load_or_train_fedl2p(cfg: Config, out_dir: Path, seed: int, budget: int, base: torch.nn.Module, console=None,
                         grid=None):
    """FedL2P's learning-rate generator for one budget (trained federatedly once, then read from disk)."""
    from .fl.engines import fedl2p_hp, run_fedl2p_training
    from .methods.fedl2p import new_lr_generator

    folder = stage_dir(out_dir, "fedl2p", seed, budget)
    hp = fedl2p_hp(cfg, budget, seed)
    _check_stage_settings(folder, hp | {"rounds": cfg.fedl2p.rounds})
    final = folder / "generator.safetensors"
    if final.is_file():
        generator = new_lr_generator(base, hp["base_lr"], seed)
        generator.load_state_dict(load_file(str(final)))
        return generator
    log = _logger(console)
    log(f"FedL2P generator (seed {seed}, r={budget}): {cfg.fedl2p.rounds} rounds on the {cfg.federation.engine} "
        f"engine, checkpoints in {folder / 'checkpoint'}")
    generator = run_fedl2p_training(cfg, base_spec(cfg, out_dir), budget, seed, folder, resume=True,
                                    on_round=lambda r: log(_round_line(r, ("val_loss", "lr_mean"))), grid=grid)
    save_tensors(final, generator.state_dict(), metadata={"budget": str(budget), "seed": str(seed)})
    return generator


def load_or_train_pf2lora(cfg: Config, out_dir: Path, seed: int, budget: int, console=None, grid=None):
    """PF2LoRA's shared state for one budget and the folder of its clients' level-2 adapters."""
    from .fl.engines import pf2lora_hp, run_pf2lora_training

    folder = stage_dir(out_dir, "pf2lora", seed, budget)
    _check_stage_settings(folder, pf2lora_hp(cfg, budget, seed) | {"rounds": cfg.pf2lora.rounds})
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
                     runs: list[tuple[str, int | None]], console=None) -> dict:
    """What the methods of ``runs`` (``(method, budget)`` pairs) need beyond a client, trained if missing."""
    from .methods.pf2lora import PF2LoRASettings

    resources: dict = {"bt": bt_settings(cfg), "adalora_lr": cfg.personalise.adalora_lr}
    methods = {m for m, _ in runs}
    if any(m.startswith("fedp2eft") for m in methods):
        from .lambda_report import write_lambda_report

        resources["psg"] = load_or_train_psg(cfg, out_dir, seed, base, console)
        write_lambda_report(base, resources["psg"], tasks, psg_dir(out_dir, seed))
    budgets = lambda name: sorted({b for m, b in runs if m == name})  # noqa: E731
    if "fedl2p" in methods:
        resources["fedl2p"] = {b: load_or_train_fedl2p(cfg, out_dir, seed, b, base, console) for b in budgets("fedl2p")}
    if "pf2lora" in methods:
        resources["pf2lora"] = {b: load_or_train_pf2lora(cfg, out_dir, seed, b, console) for b in budgets("pf2lora")}
        resources["pf2lora_settings"] = PF2LoRASettings(local_rank=cfg.pf2lora.local_rank, seed=seed)
    return resources
