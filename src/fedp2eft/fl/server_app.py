"""The ServerApp that ``flwr run`` launches on a SuperLink (Deployment Engine).

Run config keys (``[tool.flwr.app.config]`` in ``pyproject.toml``, or ``--run-config``):
``config`` — path of the experiment TOML (absolute, or relative to the SuperLink's working
folder); ``out`` — output folder; ``set`` — optional overrides ``section.key=value`` separated
by ``;``; ``resume`` — continue from ``out``'s checkpoint. The app trains the Standard-FL base
model with the same round loop as the other engines and writes it to ``<out>/base_model/model``.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    from ..config import load_config
    from ..methods.standard_fl import final_model, initial_state
    from ..models import load_tokenizer
    from ..pipeline import base_model_dir
    from .engines import fedavg_hp, loop_settings, make_job, pretrained_base, save_base_model
    from .server_loop import run_rounds

    rc = context.run_config
    overrides = [s.strip() for s in str(rc.get("set", "")).split(";") if s.strip()]
    cfg = load_config(str(rc["config"]), overrides)
    out = Path(str(rc.get("out", "runs/deployment")))
    job = make_job(cfg)
    base, _ = pretrained_base(cfg)
    state = run_rounds(grid, job, initial_state(base, fedavg_hp(cfg)), loop_settings(cfg), out / "base_model",
                       resume=bool(rc.get("resume", False)))
    model = final_model(base, state, fedavg_hp(cfg))
    save_base_model(model, load_tokenizer(cfg.model.name), base_model_dir(out),
                    {"kind": "standard-fl", "mode": cfg.base_model.mode, "engine": "deployment"})
