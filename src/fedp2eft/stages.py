"""The federated stages a run needs, each trained once and then read from disk: one generic
load-or-train for every registered stage (``methods.registry``), on the engine the caller hands in.

A stage trained once per seed lies in ``<out>/<stage>/seed<S>/`` (FedP²EFT's PSG ``psg``, the
authors'-recipe PSG ``psg-paper``), one trained per budget in ``<out>/<stage>/seed<S>/r<B>/``
(FedL2P's ``fedl2p``, PF2LoRA's ``pf2lora``); see ``setup.layout``. Every stage folder records
what it was trained with (``settings.json``, written before training): the stage's client settings,
its rounds, the data, the sampling and the base model's settings. A folder whose record differs is
refused, naming the keys, or — under ``--fresh`` — deleted and trained again (``setup.stage_state``).
All stages run with the same round loop, checkpoints and resume.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from safetensors.torch import load_file

from . import tracking
from .atomic import save_tensors
from .errors import UserError
from .methods.registry import FederatedStage, get_spec, get_stage, prior_key
from .progress import duration
from .setup.base_models import release_cached_base
from .setup.federation import stage_context
from .setup.layout import RunLayout
from .setup.stage_state import (
    aggregation_settings,
    base_settings,
    claim_stage,
    data_settings,
    flatten,
    precision_settings,
    sampling_settings,
)

# runner(stage, base_spec, seed, budget, folder, on_round) -> final state: an engine (``fl.engines.stage_runner``)
Runner = Callable[..., dict]


def stage_record(cfg, stage: FederatedStage, seed: int, budget: int | None) -> dict:
    """What a stage folder records: a change to any of it means the stage must be trained again."""
    composed = stage.settings_json(stage.client_settings(cfg))
    settings = flatten(composed, dotted=False)
    if len(settings) != len(flatten(composed)):  # two composed parts declare the same key: one would hide the other
        raise ValueError(f"stage {stage.name}: its client settings repeat a key; the record would lose one")
    settings = {k: v for k, v in settings.items() if k not in stage.unrecorded
                and not (k in stage.added_keys and v == stage.added_keys[k])}
    settings |= {"seed": seed, **({"budget": budget} if stage.per_budget else {})}  # injected by the runner
    record = {stage.name: settings, "rounds": stage.rounds(cfg),
              "snapshot_every": stage.snapshot_every(cfg), "base": base_settings(cfg), "data": data_settings(cfg),
              "federation": sampling_settings(cfg) | aggregation_settings(cfg, stage.name), **precision_settings(cfg)}
    if stage.needs is not None:  # retraining the stage it starts from invalidates it
        record["needs"] = stage_record(cfg, get_stage(stage.needs), seed, None)
    return record


def checkpoint_round(folder: Path) -> int | None:
    """The last round a stage folder's checkpoint holds (None: no checkpoint; training starts at round 1)."""
    import json

    path = Path(folder) / "checkpoint" / "checkpoint.json"
    return int(json.loads(path.read_text())["round"]) if path.is_file() else None


def training_line(what: str, rounds: int, engine: str, folder: Path) -> str:
    """What is about to train: from round 1, or resuming from the checkpoint's round."""
    done = checkpoint_round(folder)
    start = f"resuming from round {done} of {rounds}" if done else f"{rounds} rounds"
    return f"{what}: {start} on the {engine} engine, checkpoints in {Path(folder) / 'checkpoint'}"


def round_line(r: dict, rounds: int | None = None, elapsed: float | None = None, remaining: float | None = None,
               keys: tuple[str, ...] = ("train_loss",)) -> str:
    """One line per round: its clients and the metrics ``keys`` (the stage's ``round_metrics``), the federated
    evaluation when it ran, the round's time, and (given) the stage's elapsed time and an estimate of what
    remains."""
    of = f"/{rounds}" if rounds else ""
    n = len(r["sampled"])
    parts = [f"  round {r['round']}{of}: {n} client{'s' if n != 1 else ''}"]
    parts += [f"{k} {r[k]:.4g}" for k in keys if isinstance(r.get(k), int | float)]
    if isinstance(r.get("privacy"), dict):  # differential privacy: what the stage has spent so far
        parts.append(f"epsilon {r['privacy']['epsilon']:.3g} (delta {r['privacy']['delta']:g})")
    if isinstance(r.get("eval"), dict):
        e = r["eval"]
        scores = ", ".join(f"{k} {100 * v:.1f}%" for k, v in e.items() if k not in ("pool", "n"))
        parts.append(f"eval ({e['pool']} pool, {e['n']} rows) {scores}")
    parts.append(f"{r['seconds']:.1f} s")
    if elapsed is not None:
        parts.append(f"elapsed {duration(elapsed)}" + (f", ~{duration(remaining)} left" if remaining else ""))
    return ", ".join(parts)


def round_logger(log: Callable[[str], None], rounds: int, keys: tuple[str, ...] = ("train_loss",), tag: str = "",
                 settings: dict | None = None) -> Callable[[dict], None]:
    """``on_round`` for a stage of ``rounds`` rounds: logs each round's line (metrics ``keys``) with elapsed
    time and the remaining time estimated from the rounds run so far in this process, and (``tag``: the
    stage's series, ``settings``: its record) reports it to the run's trackers (``tracking``)."""
    import time

    start, done = time.perf_counter(), []

    def on_round(r: dict) -> None:
        done.append(r["round"])
        elapsed = time.perf_counter() - start
        left = rounds - r["round"]
        log(round_line(r, rounds, elapsed, elapsed / len(done) * left if left > 0 else None, keys))
        if tag:
            tracking.stage_round(tag, r, settings)

    return on_round


def load_or_train(cfg, stage: FederatedStage, layout: RunLayout, seed: int, budget: int | None, base, base_spec: str,
                  runner: Runner | None, fresh: bool = False, log: Callable[[str], None] = print,
                  folder: Path | None = None):
    """The finalized resource of ``stage`` for (seed, budget): read from its folder, or trained there
    first (federatedly, through ``runner``) from ``base_spec`` (a string); ``base`` is the loaded base model.
    Without a runner the stage must be there, trained with the config's settings (``fedp2eft export``)."""
    folder = Path(folder) if folder is not None else layout.stage(stage.name, seed, budget)
    if runner is None and not (folder / stage.artifact).is_file():
        raise UserError(f"no trained {stage.name} at {folder}; run fedp2eft run first (with a method that needs it)")
    settings = stage.client_settings(cfg)
    if stage.needs is not None:  # the stage it starts from: trained (or read) before this one is claimed
        needed = get_stage(stage.needs)
        load_or_train(cfg, needed, layout, seed, None, base, base_spec, runner, fresh, log)
    claim_stage(folder, stage_record(cfg, stage, seed, budget), fresh)
    final = folder / stage.artifact
    if final.is_file():
        state = load_file(str(final))
    else:
        prior = {}
        if stage.needs is not None:
            prior = {prior_key(needed.name, k): v
                     for k, v in load_file(str(layout.stage(needed.name, seed) / needed.artifact)).items()}
        what = f"{stage.name} (seed {seed}" + (f", r={budget})" if budget is not None else ")")
        log(training_line(what, stage.rounds(cfg), cfg.federation.engine, folder))
        tag = f"{stage.name}/seed{seed}" + (f"/r{budget}" if budget is not None else "")
        logger = round_logger(log, stage.rounds(cfg), stage.round_metrics, tag,
                              flatten(stage_record(cfg, stage, seed, budget)))
        state = runner(stage, base_spec, seed, budget, folder, logger, **({"prior": prior} if prior else {}))
        release_cached_base()
        meta = {"seed": str(seed), **({"budget": str(budget)} if budget is not None else {})}
        save_tensors(final, state, metadata=meta)
        if stage.after is not None:
            stage.after(folder)
    return stage.finalize(base, state, settings, folder, stage_context(cfg, seed, budget))


def method_resources(cfg, layout: RunLayout, seed: int, base, base_spec: str, tasks: dict,
                     runs: list[tuple[str, int | None]], runner: Runner, fresh: bool = False,
                     log: Callable[[str], None] = print, clients_base=None) -> dict[str, dict]:
    """For each method of ``runs`` (``(method, budget)`` pairs) that has a stage: ``{budget or None:
    resource}``, trained if missing; a stage's ``report`` runs on the pools' tasks, each client on its own
    base (``clients_base.for_client``; default: ``base`` for every client)."""
    out: dict[str, dict] = {}
    trained: dict[tuple[str, int | None], object] = {}
    for method in dict.fromkeys(m for m, _ in runs):
        stage = get_spec(method).stage
        if stage is None:
            continue
        budgets = sorted({b for m, b in runs if m == method}) if stage.per_budget else [None]
        for b in budgets:
            if (stage.name, b) not in trained:
                trained[stage.name, b] = load_or_train(cfg, stage, layout, seed, b, base, base_spec, runner,
                                                       fresh, log)
                if stage.report is not None:
                    stage.report(clients_base if clients_base is not None else base, trained[stage.name, b], tasks,
                                 layout.stage(stage.name, seed, b), cfg)
        out[method] = {b: trained[stage.name, b] for b in budgets}
    return out
