"""Overhead of the in-process Flower engine over a bare Python loop running the same client code.

Both run the same N-round Standard-FL job (tiny-bert, real MasakhaNEWS clients): the bare loop
calls ``fedp2eft.fl.worker.train`` and a hand-written weighted average directly; the engine goes
through ``InProcessGrid`` -> ClientApp -> records -> ``FedAvg.aggregate_train``, with discovery,
per-round JSON lines and a checkpoint at the end. Both sample the same clients with the same seeds
and must end with the same weights. Prints the time ratio (target <= 1.10) and writes
``benchmarks/results/engine_overhead.json``. Run as a script it preloads the allocator the ``fedp2eft``
command runs with (``memory.preload_allocator``; ``FEDP2EFT_ALLOCATOR=system`` for glibc's).

    .venv/bin/python benchmarks/engine_overhead.py [--rounds 10] [--repeats 3] [--data ../shared/data/masakhanews]
    .venv/bin/python benchmarks/engine_overhead.py --fast --out /tmp/overhead.json   # tiny-bert, 2 rounds, once
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from fedp2eft.benchkit import add_options, write_result
from fedp2eft.config import load_config
from fedp2eft.fl import worker
from fedp2eft.fl.client_app import app as client_app
from fedp2eft.fl.engines import loop_settings, stage_job
from fedp2eft.fl.inprocess import InProcessGrid
from fedp2eft.fl.server_loop import run_rounds, sample
from fedp2eft.methods.standard_fl import STANDARD_FL_STAGE
from fedp2eft.setup.base_models import cached_base
from fedp2eft.setup.federation import cached_federation

HERE = Path(__file__).resolve().parent


JOBS = {
    # worst case for the engine: a tiny model whose 8M-parameter embedding table travels every
    # message (32 MB) while a client computes for only ~0.3 s
    "tiny-bert-full": {"model.name": "tiny-bert", "data.max_length": 32, "base_model.freeze_embeddings": "false"},
    # the quickstart's Standard-FL job: e5-small, full fine-tuning with frozen embeddings (22M params travel)
    "e5-small-quickstart": {"model.name": "e5-small", "data.max_length": 64, "base_model.freeze_embeddings": "true",
                            "base_model.batch_size": 16},
}


def config(data: str, rounds: int, job: str, extra: list[str]):
    sets = {
        "data.path": json.dumps(data), "data.languages": '["hau","yor","swa","ibo"]',
        "data.clients_per_language": 3, "data.max_train_per_client": 32,
        "base_model.kind": '"standard-fl"', "base_model.rounds": rounds,
        "base_model.local_epochs": 1, "base_model.batch_size": 8, "federation.fraction": 0.25,
        "federation.min_clients": 2, "federation.checkpoint_every": rounds, **JOBS[job],
    }
    return load_config(None, [*(f"{k}={v}" for k, v in sets.items()), *extra])


def bare_loop(cfg, job, init):
    """The same rounds without Flower: sample, call the client code, weighted average."""
    settings = loop_settings(cfg, STANDARD_FL_STAGE, job.seed)
    clients = worker.client_ids(job.experiment)
    seen = [i + 1 for i, (_, pool) in enumerate(clients) if pool == "seen"]  # node ids as in InProcessGrid
    state = init
    for round_ in range(1, settings.rounds + 1):
        results = []
        for node in sample(seen, settings, round_):
            results.append(worker.train(job.for_round(round_), clients[node - 1][0], state)[:2])
        total = sum(n for _, n in results)
        state = {k: sum(s[k] * (n / total) for s, n in results) for k in state}
    return state


def engine(cfg, job, init, tmp: Path):
    grid = InProcessGrid(client_app, job.num_clients)
    return run_rounds(grid, job, init, loop_settings(cfg, STANDARD_FL_STAGE, job.seed), tmp)


def measure(args, job_name: str) -> dict:
    cached_federation.cache_clear()
    cached_base.cache_clear()
    cfg = config(args.data, args.rounds, job_name, args.sets)
    job = stage_job(cfg, STANDARD_FL_STAGE, "off-the-shelf", cfg.base_model.seed)
    base, _ = worker.base_model(job)
    init = STANDARD_FL_STAGE.initial_state(base, cfg.base_model, worker.stage_context(job))
    bare_loop(cfg, job, init)  # warm the caches (federation, base model, tokenizer)
    times = {"bare": [], "engine": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            # alternate the order so neither side always runs second (allocator and cache state)
            order = ("bare", "engine") if r % 2 == 0 else ("engine", "bare")
            for side in order:
                gc.collect()
                t = time.perf_counter()
                if side == "bare":
                    a = bare_loop(cfg, job, init)
                else:
                    b = engine(cfg, job, init, Path(tmp) / f"e{r}")
                times[side].append(time.perf_counter() - t)
    max_diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    bare, eng = statistics.median(times["bare"]), statistics.median(times["engine"])
    print(f"{job_name}: bare loop {bare:.2f} s, in-process engine {eng:.2f} s (median of {args.repeats}), "
          f"ratio {eng / bare:.3f} (target <= 1.10); max |weight difference| {max_diff:.2e}")
    return {
        "rounds": args.rounds, "clients": job.num_clients, "repeats": args.repeats,
        "bare_loop_s": times["bare"], "inprocess_engine_s": times["engine"],
        "median_bare_s": round(bare, 3), "median_engine_s": round(eng, 3), "ratio": round(eng / bare, 4),
        "max_abs_weight_difference": max_diff,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--jobs", default=",".join(JOBS), help=f"comma-separated, from {list(JOBS)}")
    ap.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "masakhanews"))
    args = add_options(ap, HERE / "results" / "engine_overhead.json").parse_args(argv)
    if args.fast:  # the worst case for the engine, 2 rounds, once
        args.jobs, args.rounds, args.repeats = "tiny-bert-full", 2, 1
    unknown = [j for j in args.jobs.split(",") if j not in JOBS]
    if unknown:
        print(f"error: --jobs: unknown job {unknown[0]!r} (known: {', '.join(JOBS)})", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads or 2)
    results = {name: measure(args, name) for name in args.jobs.split(",")}
    from fedp2eft.memory import allocator_in_use

    write_result(args.out, {"target": 1.10, "allocator": allocator_in_use(), "jobs": results})
    return 0


if __name__ == "__main__":
    from fedp2eft.memory import preload_allocator

    preload_allocator()  # as the fedp2eft command runs (tcmalloc when installed; FEDP2EFT_ALLOCATOR=system: glibc)
    sys.exit(main())
