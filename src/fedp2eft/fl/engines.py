"""Any registered federated stage on one of three engines, all running the same ServerApp loop and
ClientApp (transport only: what a round computes is the stage's, ``methods.registry``).

- ``inprocess``: :class:`InProcessGrid`, no Ray, no subprocesses, deterministic.
- ``simulation``: Flower's Simulation Engine (Ray), one virtual SuperNode per client, with
  ``federation.num_cpus`` / ``num_gpus`` per client.
- ``deployment``: SuperLink + SuperNodes started by the user; ``flwr run`` launches
  ``fedp2eft.fl.server_app:app`` (see README). Calling it from ``fedp2eft run`` is an error
  that says the command to use.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ..config import Config
from ..errors import UserError
from ..methods.registry import FederatedStage, prior_key
from ..setup.base_models import resolved_precision
from ..setup.federation import cached_federation
from ..setup.jobs import Job, experiment_json
from ..stages import Runner
from . import worker
from .server_loop import LoopSettings, run_rounds
from .strategies import StrategyChoice, check_choice


def loop_settings(cfg: Config, stage: FederatedStage, seed: int) -> LoopSettings:
    """The server loop of ``stage``: its rounds, the federation's sampling and fault settings, federated
    evaluation where the stage defines it, snapshots where its section asks for them, its strategy, and the
    needed stage's state it keeps frozen."""
    r = cfg.federation.round
    if stage.evaluate is None:
        r = replace(r, eval_pool="", eval_every=0)
    return LoopSettings(rounds=stage.rounds(cfg), round=r, seed=seed, snapshot_every=stage.snapshot_every(cfg),
                        strategy=stage_strategy(cfg, stage.name),
                        frozen_prefix=prior_key(stage.needs, "") if stage.needs is not None else "",
                        privacy=cfg.federation.privacy, secure=cfg.federation.secure, name=stage.name)


def stage_strategy(cfg: Config, stage: str) -> StrategyChoice:
    """``stage``'s server rule from ``[federation]`` (its ``stage_strategies`` entry, else the federation's)."""
    name, args = cfg.federation.aggregation.for_stage(stage)
    return StrategyChoice(name, tuple(sorted(args.items())), cfg.federation.aggregation.max_update_norm_ratio)


def check_strategies(cfg: Config) -> None:
    """Every strategy the config names, and its parameters, exist: a one-line error before anything trains."""
    agg = cfg.federation.aggregation
    check_choice(StrategyChoice(agg.strategy, tuple(sorted(agg.strategy_args.items()))), "federation.strategy")
    for stage in agg.stage_strategies:
        check_choice(stage_strategy(cfg, stage), f"federation.stage_strategies.{stage}")


def stage_job(cfg: Config, stage: FederatedStage, base_spec: str, seed: int, budget: int | None = None,
              client_state_dir: str | Path | None = None) -> Job:
    """The job of ``stage`` on top of ``base_spec`` (a folder or ``off-the-shelf``) for one seed (and budget)."""
    experiment = experiment_json(cfg)
    settings = stage.client_settings(cfg)
    return Job(stage=stage.name, experiment=experiment, base_spec=base_spec, seed=seed,
               settings=stage.settings_json(settings), num_clients=len(cached_federation(experiment)[1].clients),
               budget=budget, client_state_dir=str(client_state_dir) if client_state_dir is not None else None,
               gradient_checkpointing=checkpointed(cfg, stage), precision=resolved_precision(cfg))


def checkpointed(cfg: Config, stage: FederatedStage) -> bool:
    """Whether ``stage``'s clients train with gradient checkpointing (``experiment.gradient_checkpointing``)."""
    mode = cfg.experiment.gradient_checkpointing
    return mode == "all" or (mode == "base" and stage.section == "base_model")


def run_job(cfg: Config, job: Job, init, settings: LoopSettings, out_dir: Path, resume: bool,
            client_app=None, on_round=None, grid=None) -> dict:
    """Run any job's rounds on the configured engine (or on ``grid``: the Deployment Engine's,
    handed in by the ServerApp); returns the final state. ``init``: the initial state or a function
    that makes it (``run_rounds``)."""
    from .client_app import app as default_client_app

    client_app = client_app or default_client_app
    engine = cfg.federation.engine
    kwargs = {"on_round": on_round} if on_round else {}
    if grid is not None:
        return run_rounds(grid, job, init, settings, out_dir, resume=resume, **kwargs)
    if engine == "inprocess":
        from .inprocess import InProcessGrid

        grid = InProcessGrid(client_app, job.num_clients, client_timeout_s=settings.round.client_timeout_s)
        return run_rounds(grid, job, init, settings, out_dir, resume=resume, **kwargs)
    if engine == "simulation":
        return _run_simulation(cfg, client_app, job, init, settings, out_dir, resume, job.num_clients)
    raise UserError(
        "federation.engine = 'deployment' runs through Flower's SuperLink: start it and the SuperNodes, "
        "then: flwr run . <connection> --run-config 'config=\"CONFIG\" out=\"DIR\"' (see README)"
    )


def run_stage(cfg: Config, stage: FederatedStage, base_spec: str, seed: int, out_dir: Path, budget: int | None = None,
              resume: bool = True, client_app=None, on_round=None, grid=None, prior: dict | None = None) -> dict:
    """Train ``stage`` federatedly from ``base_spec`` (checkpoints and ``rounds.jsonl`` in ``out_dir``; clients
    that keep state keep it in ``out_dir/clients``); returns the final global state. ``prior``: the final
    state of the stage it ``needs``, already under its prefix, added to the initial state."""
    out_dir = Path(out_dir)
    job = stage_job(cfg, stage, base_spec, seed, budget, out_dir / "clients" if stage.client_state else None)
    base_model, _ = worker.base_model(job)  # the process-wide instance the in-process clients use
    if stage.needs is not None and not prior:
        raise UserError(f"stage {stage.name} starts from stage {stage.needs}'s final state; none was given")
    init = lambda: {**stage.initial_state(base_model, stage.settings_from_json(job.settings),  # noqa: E731
                                          worker.stage_context(job)), **(prior or {})}
    return run_job(cfg, job, init, loop_settings(cfg, stage, seed), out_dir, resume, client_app, on_round, grid)


def train_stage(cfg: Config, stage: FederatedStage, base_spec: str, seed: int, out_dir: Path, budget: int | None = None,
                resume: bool = True, client_app=None, on_round=None, grid=None):
    """``run_stage`` and then the stage's finalized resource (e.g. the trained PSG or base model)."""
    state = run_stage(cfg, stage, base_spec, seed, out_dir, budget, resume, client_app, on_round, grid)
    job = stage_job(cfg, stage, base_spec, seed, budget)
    base_model, _ = worker.base_model(job)  # the process-wide instance the in-process clients use
    return stage.finalize(base_model, state, stage.settings_from_json(job.settings), Path(out_dir),
                          worker.stage_context(job))


def stage_runner(cfg: Config, client_app=None, grid=None, resume: bool = True) -> Runner:
    """``runner(stage, base_spec, seed, budget, folder, on_round) -> state`` for ``stages.load_or_train``: the
    configured engine, or the Deployment Engine's ``grid``. The config's strategies are checked first."""
    check_strategies(cfg)

    def run(stage, base_spec, seed, budget, folder, on_round=None, prior=None):
        return run_stage(cfg, stage, base_spec, seed, folder, budget, resume=resume, client_app=client_app,
                         on_round=on_round, grid=grid, prior=prior)

    return run


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
