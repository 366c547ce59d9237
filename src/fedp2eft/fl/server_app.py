"""The ServerApp that ``flwr run`` launches on a SuperLink (Deployment Engine).

Run config keys (``[tool.flwr.app.config]`` in ``pyproject.toml``, or ``--run-config``):
``config`` — path of the experiment TOML (absolute, or relative to the SuperLink's working
folder); ``out`` — output folder; ``set`` — optional overrides ``section.key=value`` separated
by ``;``; ``resume`` — continue from ``out``'s checkpoint; ``stage`` — which federated training to
run (default ``base``):

- ``base``: the Standard-FL base model → ``<out>/base_model/model``;
- ``psg``: FedP²EFT's PSG → ``<out>/psg/seed<S>/psg.safetensors``; ``psg-paper``: the PSG of
  method ``fedp2eft-paper`` (``[fedp2eft_paper]`` settings) → ``<out>/psg-paper/seed<S>/``;
- ``fedl2p`` / ``pf2lora``: FedL2P's generator / PF2LoRA's level 1 for ``budget`` →
  ``<out>/<stage>/seed<S>/r<B>/`` (PF2LoRA's clients keep their level 2 under that path on their
  own machines).

``seed`` (-1 = the config's first seed). The outputs land where ``fedp2eft run --out <out>``
looks for them, so a run afterwards personalises with the federatedly trained stages. Stages
after ``base`` start from the base model the config names; with ``kind = "standard-fl"`` that is
``<out>/base_model/model``, which ``stage = "base"`` must have written first.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

app = ServerApp()

STAGES = ("base", "psg", "psg-paper", "fedl2p", "pf2lora")


@app.main()
def main(grid: Grid, context: Context) -> None:
    from ..config import load_config
    from ..errors import UserError

    rc = context.run_config
    overrides = [s.strip() for s in str(rc.get("set", "")).split(";") if s.strip()]
    cfg = load_config(str(rc["config"]), overrides)
    out = Path(str(rc.get("out", "runs/deployment")))
    stage = str(rc.get("stage", "base"))
    if stage not in STAGES:
        raise UserError(f"run config stage = {stage!r}: stages are {list(STAGES)}")
    if stage == "base":
        train_base(cfg, out, grid, bool(rc.get("resume", False)))
        return
    seed = int(rc.get("seed", -1))
    train_stage(cfg, out, grid, stage, cfg.experiment.seeds[0] if seed < 0 else seed, int(rc.get("budget", 0)))


def train_base(cfg, out: Path, grid, resume: bool) -> None:
    from ..methods.standard_fl import final_model, initial_state
    from ..models import load_tokenizer
    from ..stages import base_model_dir, base_settings, claim_stage
    from .engines import fedavg_hp, loop_settings, make_job, pretrained_base, save_base_model
    from .server_loop import run_rounds

    claim_stage(out / "base_model", base_settings(cfg))
    job = make_job(cfg)
    base, _ = pretrained_base(cfg)
    state = run_rounds(grid, job, initial_state(base, fedavg_hp(cfg)), loop_settings(cfg), out / "base_model",
                       resume=resume)
    model = final_model(base, state, fedavg_hp(cfg))
    save_base_model(model, load_tokenizer(cfg.model.name), base_model_dir(out),
                    {"kind": "standard-fl", "mode": cfg.base_model.mode, "engine": "deployment"})


def train_stage(cfg, out: Path, grid, stage: str, seed: int, budget: int) -> None:
    from ..errors import UserError
    from ..models import load_classifier
    from ..pipeline import load_federation
    from ..stages import base_model_dir, base_spec, load_or_train_fedl2p, load_or_train_pf2lora, load_or_train_psg

    if cfg.base_model.kind == "standard-fl" and not (base_model_dir(out) / "fedp2eft_classifier.json").is_file():
        raise UserError(f"{base_model_dir(out)} missing: run stage = 'base' first")
    if stage not in ("psg", "psg-paper") and budget < 1:
        raise UserError(f"stage = {stage!r} needs a rank budget >= 1 (run config budget)")
    spec = base_spec(cfg, out)
    base, _ = load_classifier(spec if spec != "off-the-shelf" else cfg.model.name, len(load_federation(cfg).label_names))
    if stage in ("psg", "psg-paper"):
        load_or_train_psg(cfg, out, seed, base, grid=grid, section="fedp2eft" if stage == "psg" else "fedp2eft_paper")
    elif stage == "fedl2p":
        load_or_train_fedl2p(cfg, out, seed, budget, base, grid=grid)
    else:
        load_or_train_pf2lora(cfg, out, seed, budget, grid=grid)
