"""The ServerApp that ``flwr run`` launches on a SuperLink (Deployment Engine).

Run config keys (``[tool.flwr.app.config]`` in ``pyproject.toml``, or ``--run-config``):
``config`` — path of the experiment TOML (absolute, or relative to the SuperLink's working
folder); ``out`` — output folder; ``set`` — optional overrides ``section.key=value`` separated
by ``;``; ``resume`` — continue from ``out``'s checkpoint; ``stage`` — which federated training to
run (default ``base``): ``base`` (the trained base model of ``base_model.kind`` — Standard FL,
FedDPA-T, DEPT or PF2LoRA — → ``<out>/base_model/model``, the clients' parts on their machines) or any
stage a registered method has (``methods.registry``; today ``psg`` → ``<out>/psg/seed<S>/``,
``psg-paper`` (method ``fedp2eft-paper``), and per budget ``fedl2p`` / ``pf2lora`` →
``<out>/<stage>/seed<S>/r<B>/``; PF2LoRA's clients keep their level 2 under that path on their own
machines).

``seed`` (-1 = the config's first seed; with ``experiment.replicate = "federation"`` it picks the
federation too, whose base model and stages lie in ``<out>/federation<S>/``). The outputs land where ``fedp2eft run --out <out>``
looks for them, so a run afterwards personalises with the federatedly trained stages. Stages
after ``base`` start from the base model the config names; with a trained kind that is
``<out>/base_model/model``, which ``stage = "base"`` must have written first.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from ..bases import TrainedBase, base_source
from ..config import load_config
from ..errors import UserError
from ..methods.registry import federated_stages
from ..setup.federation import load_federation
from ..setup.layout import RunLayout
from ..setup.replicates import replicate_config, replicate_layout
from ..stages import load_or_train
from .engines import stage_runner

app = ServerApp()


def stage_names() -> list[str]:
    """What ``stage`` may name: ``base`` (the configured base source's stage) and every registered method's."""
    from ..methods.registry import base_kinds

    bases = {s.name for s in base_kinds().values()}
    return ["base", *(name for name in federated_stages() if name not in bases)]


@app.main()
def main(grid: Grid, context: Context) -> None:
    rc = context.run_config
    overrides = [s.strip() for s in str(rc.get("set", "")).split(";") if s.strip()]
    cfg = load_config(str(rc["config"]), overrides)
    stage = str(rc.get("stage", "base"))
    if stage not in stage_names():
        raise UserError(f"run config stage = {stage!r}: stages are {stage_names()}")
    seed = int(rc.get("seed", -1))
    seed = cfg.experiment.seeds[0] if seed < 0 else seed
    # federation replicates: the seed's own partition, base model and stages, in <out>/federation<S>/
    layout = replicate_layout(RunLayout(Path(str(rc.get("out", "runs/deployment")))), cfg, seed)
    cfg = replicate_config(cfg, seed)
    if stage == "base":
        source = base_source(cfg, layout)
        if not isinstance(source, TrainedBase):
            raise UserError(f"stage = 'base' trains a base model, but base_model.kind = {cfg.base_model.kind!r} "
                            "is not trained federatedly")
        source.prepare(cfg, layout, stage_runner(cfg, grid=grid, resume=bool(rc.get("resume", False))), fresh=False)
        return
    spec = federated_stages()[stage]
    budget = int(rc.get("budget", 0))
    if spec.per_budget and budget < 1:
        raise UserError(f"stage = {stage!r} needs a rank budget >= 1 (run config budget)")
    source = base_source(cfg, layout)
    if isinstance(source, TrainedBase) and not source.ready():
        raise UserError(f"{layout.base_model} missing: run stage = 'base' first")
    base = source.open(cfg, len(load_federation(cfg).label_names), seed)
    load_or_train(cfg, spec, layout, seed, budget if spec.per_budget else None, base.model, base.spec,
                  stage_runner(cfg, grid=grid))
