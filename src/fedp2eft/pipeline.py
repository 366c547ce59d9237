"""``fedp2eft run``: build the federation, personalise every client of each pool with each method
and budget, aggregate per language, and write ``results.json`` / ``results.md`` after every run.

Runs are keyed by (method, budget, pool, seed); a run already present in ``DIR/results.json``
(written by the same data/model/training settings) is skipped, so an interrupted job resumes
and a later job with more methods or seeds merges into the same file.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from .config import Config, from_dict
from .data import FederationSpec, build_federation, load_dataset_by_name
from .data.partition import Client, Federation
from .errors import UserError
from .evaluation import LanguageTally, mean_over_languages
from .methods import ClientTask, TrainSettings, get_method
from .methods.batches import encode
from .models import load_classifier, resolve
from .report import add_run, environment, load_results, results_lock, run_key, write_results
from .stages import (  # noqa: F401 (re-exported)
    base_model_dir,
    base_settings,
    bt_settings,
    claim_stage,
    method_resources,
    psg_dir,
)

# Config parts that do not change what a single run computes (so results may merge across them).
_RUN_SELECTORS = {("federation", "engine"), ("federation", "num_cpus"), ("federation", "num_gpus"),
                  ("federation", "client_timeout_s"), ("experiment", "seeds"), ("experiment", "output_dir"), ("experiment", "name"),
                  ("experiment", "threads"), ("personalise", "methods"), ("personalise", "budgets"),
                  ("personalise", "pools"), ("personalise", "eval_batch_size"),
                  ("data", "path")}  # where the data lie, not what they are: a copy elsewhere is the same data


# Sections that only shape one method's runs (method -> its section): recorded in each of its runs
# ("settings") instead, so a results file can gain these methods later and a change re-runs only that method.
METHOD_SECTIONS = {"fedl2p": "fedl2p", "pf2lora": "pf2lora", "fedp2eft-paper": "fedp2eft_paper"}


def comparable(config: dict[str, Any]) -> dict[str, Any]:
    return {s: {k: v for k, v in sec.items() if (s, k) not in _RUN_SELECTORS} for s, sec in config.items()
            if s not in METHOD_SECTIONS.values()}


def run_settings(cfg: Config, method: str) -> dict[str, Any] | None:
    return cfg.to_dict()[METHOD_SECTIONS[method]] if method in METHOD_SECTIONS else None


def load_federation(cfg: Config) -> Federation:
    d = cfg.data
    dataset = load_dataset_by_name(d.dataset, d.path or None, d.languages or None)
    spec = FederationSpec(
        clients_per_language=d.clients_per_language,
        alpha=d.dirichlet_alpha,
        seed=d.partition_seed,
        train_per_pool=d.train_per_pool or None,
        test_per_pool=d.test_per_pool or None,
        min_train_per_client=d.min_train_per_client,
        scheme=d.partition,
    )
    fed = build_federation(dataset, spec)
    for c in fed.clients:
        if d.max_train_per_client:
            c.train = c.train[: d.max_train_per_client]
        if d.max_test_per_client:
            c.test = c.test[: d.max_test_per_client]
    return fed


def train_settings(cfg: Config, seed: int) -> TrainSettings:
    p = cfg.personalise
    return TrainSettings(
        epochs=p.epochs, batch_size=p.batch_size, lr=p.lr, head_lr=p.head_lr, weight_decay=p.weight_decay,
        eval_batch_size=p.eval_batch_size, seed=seed, none_trains_head=p.none_trains_head, head=p.head,
        max_grad_norm=p.max_grad_norm, lora_a_seed=p.lora_a_seed,
    )


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_base_model(cfg: Config, num_labels: int, seed: int, out_dir: Path | None = None, base_override=None,
                    fresh: bool = False, console=None):
    """The model personalisation starts from: off-the-shelf, Standard FL (trained once, in
    ``<out>/base_model``, resumable; refused or, with ``fresh``, retrained if its recorded settings
    differ) or a folder written by an earlier run."""
    kind = base_override or cfg.base_model.kind
    torch.manual_seed(seed)  # a fresh head's initialisation
    if kind == "off-the-shelf":
        model, tok = load_classifier(cfg.model.name, num_labels, cfg.model.pooling or None)
    elif kind == "standard-fl":
        if out_dir is None:
            raise UserError("base_model.kind = 'standard-fl' needs an output folder")
        folder = base_model_dir(out_dir)
        claim_stage(Path(out_dir) / "base_model", base_settings(cfg), fresh)
        if not (folder / "fedp2eft_classifier.json").is_file():
            train_standard_fl_base(cfg, Path(out_dir), console)
        model, tok = load_classifier(str(folder), num_labels, cfg.model.pooling or None)
    else:
        model, tok = load_classifier(kind, num_labels, cfg.model.pooling or None)
    return model.to(default_device()).eval(), tok


def train_standard_fl_base(cfg: Config, out_dir: Path, console=None) -> Path:
    from .fl.engines import run_standard_fl, save_base_model
    from .models import load_tokenizer

    work = out_dir / "base_model"
    log = (console.print if console else print)
    log(f"standard FL ({cfg.base_model.mode}) base model: {cfg.base_model.rounds} rounds on the "
        f"{cfg.federation.engine} engine, checkpoints in {work / 'checkpoint'}")
    model = run_standard_fl(cfg, work, resume=True,
                            on_round=lambda r: log(f"  round {r['round']}: {len(r['sampled'])} clients, "
                                                   f"loss {r.get('train_loss', float('nan')):.4f}, {r['seconds']} s"))
    save_base_model(model, load_tokenizer(cfg.model.name), base_model_dir(out_dir),
                    {"kind": "standard-fl", "mode": cfg.base_model.mode, "rounds": cfg.base_model.rounds})
    return base_model_dir(out_dir)


def base_identity(cfg: Config, out_dir: Path) -> str:
    """Which base model instance runs start from: the fingerprint a trained base model folder records,
    or ``off-the-shelf:<model>``."""
    import json

    kind = cfg.base_model.kind
    if kind == "off-the-shelf":
        return f"off-the-shelf:{cfg.model.name}"
    folder = base_model_dir(out_dir) if kind == "standard-fl" else Path(kind)
    meta_file = folder / "fedp2eft_classifier.json"
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    return meta.get("fingerprint") or f"folder:{folder}"


def check_runs_base(results: dict[str, Any], base_id: str, out_dir: Path) -> None:
    """Refuse to add runs from one base model instance to runs personalised from another (a base model
    retrained with the same settings on other hardware or library versions can differ)."""
    other = sorted({r["base"] for r in results["runs"] if r.get("base") not in (None, base_id)})
    if other:
        raise UserError(f"{out_dir / 'results.json'} holds runs personalised from another base model instance "
                        f"({', '.join(other)}; this one is {base_id}); use another --out or --fresh")


def personalise_pool(
    method_name: str,
    base: torch.nn.Module,
    tasks: list[ClientTask],
    budget: int | None,
    settings: TrainSettings,
    advance: Callable[[], None] = lambda: None,
    resources: dict | None = None,
    selection: dict | None = None,
) -> dict[str, dict]:
    """Personalise every client of a pool; per-language accuracy. A method with a ``prepare`` step
    (``lora-tuned``) first makes its choice for the pool and reports it into ``selection``."""
    method = get_method(method_name, **(resources or {}))
    tally = LanguageTally()
    client_settings = lambda i: replace(settings, seed=settings.seed * 100_003 + i)  # noqa: E731
    if selection is not None and hasattr(method, "prepare"):  # a choice made on the pool's validation data
        selection.update(method.prepare(base, tasks, budget, settings, client_settings))
    for i, task in enumerate(tasks):
        try:
            preds = method.personalise(base, task, budget, client_settings(i))
        except FloatingPointError as exc:
            raise UserError(f"client {task.client_id}, method {method_name}: {exc}") from None
        tally.add(task.language, preds, task.test.labels)
        advance()
    return tally.per_language()


def client_tasks(clients: list[Client], tokenizer, max_length: int) -> list[ClientTask]:
    return [
        ClientTask(c.cid, c.language, encode(tokenizer, c.train, max_length), encode(tokenizer, c.test, max_length))
        for c in clients
    ]


def open_results(cfg: Config, out_dir: Path, fresh: bool) -> dict[str, Any]:
    config = cfg.to_dict()
    if fresh:  # drop every run now: later writes merge with the file on disk, which must not bring them back
        results = {"metric": "accuracy", "config": config, "environment": environment(), "runs": []}
        with results_lock(out_dir):
            write_results(out_dir, results)
        return results
    existing = load_results(out_dir / "results.json")
    if existing is not None:
        try:  # fill keys added since the file was written with their defaults
            previous = from_dict(existing.get("config", {})).to_dict()
        except UserError:
            previous = existing.get("config", {})
        if comparable(previous) != comparable(config):
            from .stages import settings_diff

            diff = "; ".join(settings_diff(comparable(previous), comparable(config))[:6])
            raise UserError(
                f"{out_dir / 'results.json'} holds runs of different data/model/training settings ({diff}); "
                "use another --out or --fresh (which drops them and retrains the stages that differ)"
            )
        existing["config"] = config
        existing["environment"] = environment()
        return existing
    return {"metric": "accuracy", "config": config, "environment": environment(), "runs": []}


def run_experiment(cfg: Config, out_dir: str | Path, fresh: bool = False, console=None) -> dict[str, Any]:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = console or Console(stderr=True)
    out_dir = Path(out_dir)
    if cfg.experiment.threads:
        torch.set_num_threads(cfg.experiment.threads)
    resolve(cfg.model.name)  # fail on an unknown or unprepared model before any work
    results = open_results(cfg, out_dir, fresh)
    done = {run_key(r) for r in results["runs"] if r.get("settings") == run_settings(cfg, r["method"])}
    fed = load_federation(cfg)
    console.print(f"[bold]{fed.dataset}[/]: {len(fed.clients)} clients in {len(fed.languages)} languages")
    p = cfg.personalise
    plan = [
        (seed, pool, m, b)
        for seed in cfg.experiment.seeds
        for pool in p.pools
        for m in p.methods
        for b in (p.budgets if get_method(m).uses_budget else [None])
    ]
    todo = [x for x in plan if (x[2], x[3], x[1], x[0]) not in done]
    if len(todo) < len(plan):
        console.print(f"resuming: {len(plan) - len(todo)} of {len(plan)} runs already in {out_dir / 'results.json'}")
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        overall = progress.add_task("runs", total=len(todo))
        for seed in cfg.experiment.seeds:
            seed_todo = [x for x in todo if x[0] == seed]
            if not seed_todo:
                continue
            base, tok = load_base_model(cfg, len(fed.label_names), seed, out_dir, fresh=fresh, console=console)
            base_id = base_identity(cfg, out_dir)
            check_runs_base(results, base_id, out_dir)
            tasks = {pool: client_tasks(fed.pool(pool), tok, cfg.data.max_length) for pool in p.pools}
            resources = method_resources(cfg, out_dir, seed, base, tasks, [(m, b) for _, _, m, b in seed_todo], console,
                                         fresh=fresh)
            for _, pool, method, budget in seed_todo:
                label = f"seed {seed} {pool} {method}" + (f" r={budget}" if budget else "")
                bar = progress.add_task(label, total=len(tasks[pool]))
                start = time.perf_counter()
                selection: dict = {}
                per_language = personalise_pool(
                    method, base, tasks[pool], budget, train_settings(cfg, seed), lambda b=bar: progress.advance(b),
                    resources, selection,
                )
                run = {
                    "method": method, "budget": budget, "pool": pool, "seed": seed,
                    "per_language": per_language, "mean": mean_over_languages(per_language),
                    "clients": len(tasks[pool]), "seconds": round(time.perf_counter() - start, 2),
                }
                run["base"] = base_id
                if run_settings(cfg, method) is not None:
                    run["settings"] = run_settings(cfg, method)
                if selection:
                    run["selection"] = selection
                add_run(out_dir, results, run)
                progress.advance(overall)
            del base
    return results
