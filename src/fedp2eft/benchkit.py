"""What the scripts in ``benchmarks/`` share (issue 31), so none re-builds a job, a federation or a stage's
start by hand and every one has a fast mode the suite runs:

- ``add_options(parser)``: ``--set section.key=value`` (repeatable), ``--fast``, ``--threads`` and ``--out``;
- ``FAST``: the overrides of every script's fast mode (tiny-bert, one client per language and pool, a few
  rows and tokens, one epoch, small ranks and few steps): the script's whole path in seconds;
- ``bench_config(path, args)``: the config with ``FAST`` (under ``--fast``) and then the ``--set`` overrides;
- ``open_bench(cfg, base)``: the federation, its task, the base model and its tokenizer, and client tasks;
- ``stage_start``, ``client_round``, ``untrained_resources``, ``payload``: one client's round of any
  registered stage (a stage that needs another starts from the needed stage's state), a method's resources
  from its untrained stage, and the parameters a stage's round sends;
- ``write_result(path, data)``: the result with the environment it was measured in, written atomically;
  ``add_measurement(path, result, device)``: one entry of a file kept per device and config.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .atomic import write_json
from .config import load_config
from .data import get_dataset
from .data.registry import specific_keys
from .methods.registry import get_method, get_spec, get_stage, prior_key
from .models.precision import set_precision
from .report import environment
from .setup.base_models import load_base, resolved_precision
from .setup.federation import client_tasks, load_federation, stage_context, task_for, task_name

# A script's fast mode: these overrides first, the script's own --set after them; the model is the tiny one
# of the config's task (FAST_MODEL).
FAST_MODEL = {"classification": "tiny-bert", "generation": "tiny-llama"}
FAST = {
    "data.clients_per_language": 1,
    "data.max_train_per_client": 16,
    "data.max_test_per_client": 8,
    "data.max_length": 16,
    "base_model.kind": '"off-the-shelf"',
    "base_model.rounds": 1,
    "base_model.batch_size": 8,
    "personalise.epochs": 1,
    "personalise.batch_size": 8,
    "personalise.budgets": "[1]",
    "fedp2eft.rounds": 1,
    "fedp2eft.r_init": 2,
    "fedp2eft.lora_alpha": 4,
    "fedp2eft.local_epochs": 1,
    "fedp2eft.batch_size": 8,
    "fedl2p.rounds": 1,
    "fedl2p.outer_steps": 1,
    "fedl2p.batch_pairs": 1,
    "fedl2p.neumann_terms": 1,
    "pf2lora.rounds": 1,
    "pf2lora.steps": 2,
    "pf2lora.batch_size": 8,
    "experiment.threads": 1,
}


def fast_sets(generation: bool = False, dataset: str = "masakhanews") -> list[str]:
    """``FAST`` for a config's dataset: the tiny model of its task, and only the data keys it reads."""
    model = FAST_MODEL["generation" if generation else "classification"]
    own, specific = set(get_dataset(dataset).keys), set(specific_keys())
    keep = {k: v for k, v in FAST.items() if not (k.startswith("data.") and k[5:] in specific - own)}
    return [f"model.name={json.dumps(model)}", *(f"{k}={v}" for k, v in keep.items())]


def add_options(ap: argparse.ArgumentParser, out: Path | None = None) -> argparse.ArgumentParser:
    """The options every script takes; ``out`` is the default of ``--out`` (None: no file unless given)."""
    ap.add_argument("--set", action="append", default=[], dest="sets", metavar="SECTION.KEY=VALUE",
                    help="override a config key (after --fast's)")
    ap.add_argument("--fast", action="store_true",
                    help="tiny model, a few rows, one repeat: the whole path in seconds (what the suite runs)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: the config's, else 2)")
    ap.add_argument("--out", type=Path, default=out, help="where the result is written" +
                    (f" (default {out})" if out is not None else ""))
    return ap


def bench_config(path, args: argparse.Namespace, extra: list[str] | None = None):
    """The config at ``path`` (None: defaults) with ``extra``, then ``FAST`` under ``--fast``, then ``--set``;
    sets the thread count (``--threads``, else the config's, else 2)."""
    fast = []
    if args.fast:
        probe = load_config(path, [*(extra or []), *args.sets])
        fast = fast_sets(task_name(probe) == "generation", probe.data.dataset)
    cfg = load_config(path, [*(extra or []), *fast, *args.sets])
    torch.set_num_threads(args.threads or cfg.experiment.threads or 2)
    return cfg


@dataclass
class Bench:
    """A config's federation, its task, and a base model with its tokenizer."""

    cfg: object
    federation: object
    problem: object  # the config's Task
    base: torch.nn.Module
    tokenizer: object

    def tasks(self, pool: str, clients: int | None = None, largest_first: bool = False) -> list:
        chosen = self.federation.pool(pool)
        if largest_first:
            chosen = sorted(chosen, key=lambda c: -len(c.train))
        return client_tasks(chosen[:clients], self.tokenizer, self.cfg.data.max_length, self.problem)


def open_bench(cfg, base: str = "off-the-shelf", seed: int = 0) -> Bench:
    """``base``: ``off-the-shelf`` (the configured model as published) or a base-model folder; its forward
    passes in the config's precision, as a run's."""
    fed = load_federation(cfg)
    problem = task_for(cfg)
    model, tok = load_base(cfg, str(base), len(fed.label_names), seed, problem)
    set_precision(model, resolved_precision(cfg))
    return Bench(cfg, fed, problem, model, tok)


def stage_start(stage, cfg, base, budget: int | None, seed: int = 0):
    """``(client settings, round-0 global state)`` of a stage; a stage that needs another carries the needed
    stage's round-0 state under its prefix."""
    settings = stage.client_settings(cfg)
    state = stage.initial_state(base, settings, stage_context(cfg, seed, budget))
    if stage.needs is not None:
        needed = get_stage(stage.needs)
        state |= {prior_key(needed.name, k): v for k, v in needed.initial_state(
            base, needed.client_settings(cfg), stage_context(cfg, seed)).items()}
    return settings, state


def client_round(stage_name: str, cfg, base, task, budget: int, seed: int = 0) -> float:
    """Seconds of one client's round of the named stage, from the stage's round-0 state."""
    stage = get_stage(stage_name)
    b = budget if stage.per_budget else None
    settings, state = stage_start(stage, cfg, base, b, seed)
    with tempfile.TemporaryDirectory() as tmp:
        ctx = stage_context(cfg, seed, b, tmp if stage.client_state else None)
        t0 = time.perf_counter()
        stage.client_update(base, state, task, settings, ctx)
        return time.perf_counter() - t0


def untrained_resources(method: str, cfg, base, budget: int, folder: Path, seed: int = 0) -> dict:
    """A method's resources from its stage's round-0 state (what a cost measurement needs: the same
    shapes and work as a trained one); ``{}`` for a method without a stage."""
    stage = get_spec(method).stage
    if stage is None:
        return {}
    b = budget if stage.per_budget else None
    settings, state = stage_start(stage, cfg, base, b, seed)
    return {b: stage.finalize(base, state, settings, folder, stage_context(cfg, seed, b))}


def personalise_seconds(method: str, cfg, base, task, budget: int, seed: int = 0) -> float:
    """Seconds of one client's personalisation by ``method`` (its stage untrained)."""
    with tempfile.TemporaryDirectory() as tmp:
        m = get_method(method, cfg, untrained_resources(method, cfg, base, budget, Path(tmp), seed), seed)
        t0 = time.perf_counter()
        m.personalise(base, task, budget, cfg.personalise, seed)
        return time.perf_counter() - t0


def payload(stage_name: str, cfg, base, budget: int) -> int:
    """Parameters in the global state of one round of the named stage that a client sends back (a needed
    stage's frozen state excluded)."""
    stage = get_stage(stage_name)
    b = budget if stage.per_budget else None
    return sum(v.numel() for v in stage.initial_state(base, stage.client_settings(cfg), stage_context(cfg, 0, b)).values())


def add_measurement(path: Path, result: dict, device: str | None = None) -> None:
    """Add ``result`` to a file of measurements under ``device`` (default: this machine's) and its config's name
    (``result["config"]``'s stem, ``-fast`` in fast mode), keeping the other devices' and configs' entries."""
    env = environment()
    old = json.loads(path.read_text()) if path.is_file() else {}
    measurements = old.get("measurements", {})
    name = Path(result["config"]).stem + ("-fast" if result["fast"] else "")
    measurements.setdefault(device or env["device"], {})[name] = {**result, "environment": env}
    write_json(path, {"measurements": measurements})


def write_result(path: Path, data: dict) -> None:
    write_json(path, {**data, "environment": environment()})
