"""``fedp2eft run``: build the federation, personalise every client of each pool with each method
and budget, aggregate per language, and write ``results.json`` / ``results.md`` after every run.

Runs are keyed by (method, budget, pool, seed); a run already present in ``DIR/results.json``
(written by the same data/model/training settings) is skipped, so an interrupted job resumes
and a later job with more methods or seeds merges into the same file.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from . import tracking
from .bases import SharedBase, base_source
from .config import Config, from_dict, migrate
from .errors import UserError
from .evaluation import LanguageTally, mean_over_languages
from .fl.engines import stage_runner
from .memory import ROUND_TRIM_BYTES, release_file_pages, trim_freed_memory
from .methods import ClientTask, PersonaliseConfig, get_method, get_spec
from .methods.interface import client_base
from .methods.registry import method_names
from .models import resolve
from .models.memory_saving import held, row_read_tables, set_gradient_checkpointing
from .models.precision import set_precision
from .progress import RunProgress, make_console
from .report import add_run, device_name, environment, load_results, results_lock, run_key, write_results
from .setup.base_models import resolved_precision
from .setup.federation import client_tasks, load_federation, task_for
from .setup.layout import RunLayout
from .setup.replicates import replicate_config, replicate_layout
from .setup.stage_state import settings_diff
from .stages import method_resources

# Config parts that do not change what a single run computes (so results may merge across them).
_RUN_SELECTORS = {("federation", "engine"), ("federation", "num_cpus"), ("federation", "num_gpus"),
                  ("federation", "client_timeout_s"), ("experiment", "seeds"), ("experiment", "output_dir"), ("experiment", "name"),
                  ("experiment", "threads"), ("experiment", "tracking"), ("experiment", "tracking_dir"),
                  ("experiment", "gradient_checkpointing"),
                  ("personalise", "methods"), ("personalise", "budgets"),
                  ("personalise", "pools"), ("personalise", "eval_batch_size"),
                  ("data", "path")}  # where the data lie, not what they are: a copy elsewhere is the same data


def method_sections() -> dict[str, str]:
    """Method -> its section, for the sections that only shape that method's runs (``MethodSpec.recorded``):
    recorded in each of its runs ("settings") instead, so a results file can gain these methods later
    and a change re-runs only that method."""
    return {m: get_spec(m).section for m in method_names() if get_spec(m).recorded}


def comparable(config: dict[str, Any]) -> dict[str, Any]:
    recorded = set(method_sections().values())
    return {s: {k: v for k, v in sec.items() if (s, k) not in _RUN_SELECTORS} for s, sec in config.items()
            if s not in recorded}


def run_settings(cfg: Config, method: str) -> dict[str, Any] | None:
    sections = method_sections()
    return cfg.to_dict()[sections[method]] if method in sections else None


def check_runs_base(results: dict[str, Any], base_id: str, out_dir: Path, seed: int | None = None) -> None:
    """Refuse to add runs from one base model instance to runs personalised from another (a base model
    retrained with the same settings on other hardware or library versions can differ). With federation
    replicates each seed has its own base (``seed``): only that seed's runs must share it."""
    other = sorted({r["base"] for r in results["runs"] if r.get("base") not in (None, base_id)
                    and (seed is None or r["seed"] == seed)})
    if other:
        raise UserError(f"{out_dir / 'results.json'} holds runs personalised from another base model instance "
                        f"({', '.join(other)}; this one is {base_id}); use another --out or --fresh")


def personalise_pool(
    method,
    base,
    tasks: list[ClientTask],
    budget: int | None,
    p: PersonaliseConfig,
    seed: int,
    advance: Callable[[], None] = lambda: None,
    selection: dict | None = None,
    per_client: dict | None = None,
) -> LanguageTally:
    """Personalise every client of a pool with ``method`` (each from ``base.for_client(id)`` when ``base``
    is a base source, else from ``base``); the per-language tally of every metric of the clients' task
(rows pooled by their language). A method with a
    ``prepare`` step (``*-tuned``) first makes its choice for the pool and reports it into ``selection``
    (calling ``advance`` after each of its fine-tunings too).
    ``per_client`` (given) receives each client's language, rows and score sums (for paired bootstraps)."""
    tally = LanguageTally()
    client_seed = lambda i: seed * 100_003 + i  # noqa: E731
    if selection is not None and hasattr(method, "prepare"):  # a choice made on the pool's validation data
        selection.update(method.prepare(base, tasks, budget, p, client_seed, advance))
    for i, task in enumerate(tasks):
        try:
            outputs = method.personalise(client_base(base, task.client_id), task, budget, p, client_seed(i))
        except FloatingPointError as exc:
            raise UserError(f"client {task.client_id}, method {method.name}: {exc}") from None
        languages, scores = task.score(outputs)
        tally.add_scores(languages, scores)
        if per_client is not None:
            per_client[task.client_id] = client_record(task.language, scores, languages)
        trim_freed_memory(ROUND_TRIM_BYTES)  # the client's copies and activations (when they are many MB)
        release_file_pages(row_read_tables(getattr(base, "model", base)))  # the embedding rows it read
        advance()
    return tally


def client_record(language: str, scores: dict[str, list[float]] | list[float],
                  row_languages: str | list[str] | None = None) -> dict[str, Any]:
    """One client's entry in a run's ``per_client``: its language, test rows, the sum of each metric and each
    row's score (``rows``, for a bootstrap over rows), with each row's language where the client speaks
    several (``row_languages``)."""
    if not isinstance(scores, dict):
        scores = {"accuracy": list(scores)}
    n = len(next(iter(scores.values()))) if scores else 0
    record = {"language": language, "n": n, "sums": {m: float(sum(v)) for m, v in scores.items()},
              "rows": {m: [round(float(x), 5) for x in v] for m, v in scores.items()}}
    if isinstance(row_languages, list) and any(lang != language for lang in row_languages):
        record["row_languages"] = list(row_languages)
    return record


def run_stages(method: str, budget: int | None) -> list[tuple[str, int | None]]:
    """The federated stages a method's run rests on (besides the base model): its own and the one it needs."""
    stage = get_spec(method).stage
    if stage is None:
        return []
    own = [(stage.name, budget if stage.per_budget else None)]
    return own + ([(stage.needs, None)] if stage.needs is not None else [])


def new_results(cfg: Config) -> dict[str, Any]:
    problem = task_for(cfg)
    results = {"metric": problem.metric, "config": cfg.to_dict(), "environment": environment(), "runs": []}
    if len(problem.metrics) > 1:
        results["metrics"] = list(problem.metrics)
    return results


def run_scores(tally: LanguageTally) -> dict[str, Any]:
    """A run's ``per_language`` and ``mean`` of the primary (first) metric, and with several metrics
    ``metrics``: the same for each."""
    first = tally.per_language()
    out: dict[str, Any] = {"per_language": first, "mean": mean_over_languages(first)}
    if len(tally.metrics()) > 1:
        out["metrics"] = {m: {"per_language": (pl := tally.per_language(m)), "mean": mean_over_languages(pl)}
                          for m in tally.metrics()}
    return out


def open_results(cfg: Config, out_dir: Path, fresh: bool) -> dict[str, Any]:
    config = cfg.to_dict()
    if fresh:  # drop every run now: later writes merge with the file on disk, which must not bring them back
        results = new_results(cfg)
        with results_lock(out_dir):
            write_results(out_dir, results)
        return results
    existing = load_results(out_dir / "results.json")
    if existing is not None:
        try:  # fill keys added since the file was written with their defaults
            previous = from_dict(migrate(existing.get("config", {}))).to_dict()
        except UserError:
            previous = migrate(existing.get("config", {}))
        if comparable(previous) != comparable(config):
            diff = "; ".join(settings_diff(comparable(previous), comparable(config))[:6])
            raise UserError(
                f"{out_dir / 'results.json'} holds runs of different data/model/training settings ({diff}); "
                "use another --out or --fresh (which drops them and retrains the stages that differ)"
            )
        existing["config"] = config
        existing["environment"] = environment()
        return existing
    return new_results(cfg)


def run_experiment(cfg: Config, out_dir: str | Path, fresh: bool = False, console=None) -> dict[str, Any]:
    console = console or make_console(stderr=True)
    out_dir = Path(out_dir)
    layout = RunLayout(out_dir)
    if cfg.experiment.threads:
        torch.set_num_threads(cfg.experiment.threads)
    resolve(cfg.model.name)  # fail on an unknown or unprepared model before any work
    results = open_results(cfg, out_dir, fresh)
    done = {run_key(r) for r in results["runs"] if r.get("settings") == run_settings(cfg, r["method"])}
    fed = load_federation(cfg)
    n_lang = len(fed.languages)
    console.print(f"[bold]{fed.dataset}[/]: {len(fed.clients)} clients in {n_lang} language{'s' if n_lang != 1 else ''}")
    p = cfg.personalise
    problem = task_for(cfg)
    if "none" in p.methods and not cfg.none.trains_head and cfg.base_model.kind == "off-the-shelf" \
            and isinstance(getattr(problem, "metric", None), str) and problem.metric == "accuracy":
        console.print("warning: method 'none' with none.trains_head = false scores an off-the-shelf "
                      "model's untrained head (about chance or below); set [none] trains_head = true or use a trained base")
    plan = [
        (seed, pool, m, b)
        for seed in cfg.experiment.seeds
        for pool in p.pools
        for m in p.methods
        for b in (p.budgets if get_spec(m).uses_budget else [None])
    ]
    todo = [x for x in plan if (x[2], x[3], x[1], x[0]) not in done]
    if len(todo) < len(plan):
        console.print(f"resuming: {len(plan) - len(todo)} of {len(plan)} runs already in {out_dir / 'results.json'}")
    tracked = Path(cfg.experiment.tracking_dir) if cfg.experiment.tracking_dir else out_dir / "tracking"
    with tracking.session(cfg.experiment.tracking, tracked, cfg.experiment.name, cfg.to_dict()), \
            RunProgress(console, len(todo)) as progress:
        for seed in cfg.experiment.seeds:
            seed_todo = [x for x in todo if x[0] == seed]
            if not seed_todo:
                continue
            # the seed's own federation (partition, base model, LoRA A, stages) under replicate = "federation"
            seed_cfg, seed_layout = replicate_config(cfg, seed), replicate_layout(layout, cfg, seed)
            seed_fed = fed if seed_cfg is cfg else load_federation(seed_cfg)
            source = base_source(seed_cfg, seed_layout)
            runner = stage_runner(seed_cfg)
            source.prepare(seed_cfg, seed_layout, runner, fresh, console.print)
            base: SharedBase = source.open(seed_cfg, len(seed_fed.label_names), seed)
            trim_freed_memory()  # what loading it copied through
            set_gradient_checkpointing(base.model, cfg.experiment.gradient_checkpointing == "all")
            set_precision(base.model, resolved_precision(cfg))
            check_runs_base(results, base.identity, out_dir, seed if seed_cfg is not cfg else None)
            with held(base.tokenizer):  # one tokenizer load for every pool, released after
                tasks = {pool: client_tasks(seed_fed.pool(pool), base.tokenizer, cfg.data.max_length, problem)
                         for pool in p.pools}
            resources = method_resources(seed_cfg, seed_layout, seed, base.model, base.spec, tasks,
                                         [(m, b) for _, _, m, b in seed_todo], runner, fresh, console.print,
                                         clients_base=base)
            for _, pool, method, budget in seed_todo:
                label = f"seed {seed} {pool} {method}" + (f" r={budget}" if budget else "")
                personaliser = get_method(method, seed_cfg, resources.get(method), seed)
                steps = getattr(personaliser, "fine_tunings_per_client", 1)  # a rate sweep first (*-tuned)
                advance = progress.task(label, steps * len(tasks[pool]), "client" if steps == 1 else "fine-tuning")
                start = time.perf_counter()
                selection: dict = {}
                per_client: dict = {}
                tally = personalise_pool(
                    personaliser, base, tasks[pool], budget, seed_cfg.personalise, seed, advance,
                    selection, per_client,
                )
                run = {
                    "method": method, "budget": budget, "pool": pool, "seed": seed, **run_scores(tally),
                    "clients": len(tasks[pool]), "seconds": round(time.perf_counter() - start, 2),
                }
                run["base"] = base.identity
                run["base_kind"] = cfg.base_model.kind
                run["replicate"] = cfg.experiment.replicate
                run["device"] = {"name": device_name(), "threads": torch.get_num_threads()}  # what "seconds" ran on
                run["per_client"] = per_client
                if run_settings(cfg, method) is not None:
                    run["settings"] = run_settings(cfg, method)
                if selection:
                    run["selection"] = selection
                privacy = seed_layout.privacy(run_stages(method, budget), seed)
                if privacy:  # the (ε, δ) the federated trainings it rests on spent
                    run["privacy"] = privacy
                add_run(out_dir, results, run)
                tracking.run_finished(run)
                progress.done()
                release_file_pages(base.model.state_dict().values())  # the embedding rows this pool's rows read
            del base, resources
    return results
