"""Run a benchmark's methods over several seeds as separate ``fedp2eft run`` jobs on a few CPU slots.

One ``fedp2eft run`` trains its stages one after another on all its threads; on a small CPU, two 1-thread
jobs side by side get more done than one 2-thread job (measured: 1.2x on 2 cores, BENCHMARKS.md "Mixed
precision"). This script splits a config into one job per (seed, method) and runs them on ``--slots``
slots, ``--threads`` threads each, in this order:

- the seed's base model first, with ``none`` (or the first method), on every free slot's threads: every
  other job of the seed reads it, so none may start before it is there;
- then the seed's methods, longest first (``--order``), each as soon as a slot is free and what it needs
  is trained: a method whose stage needs another method's stage (``fedp2eft-step`` needs the
  ``fedp2eft`` PSG) waits for that method's job;
- the next seed's base as soon as a slot is free (the remaining jobs of a seed do not hold it back).

Every job writes the same ``--out`` folder (``results.json`` is shared under its file lock) and resumes
what an earlier run of it left: running the script again finishes what is missing. Each job's output goes
to ``<out>/jobs/<seed>-<method>.log``; a failed job is reported, its dependants skipped, and the script
exits non-zero at the end. SIGTERM or Ctrl-C stops every running job the same way (each keeps its finished
runs and its stages' last checkpoints) and exits 143 / 130; the same command resumes.

    .venv/bin/python benchmarks/replicates.py benchmarks/masakhanews_paper.toml \\
        --out benchmarks/results/masakhanews_paper_replicates --seeds 0 1 2 \\
        --methods none lora lora-tuned fedp2eft fedp2eft-step fedl2p \\
        --set 'experiment.replicate="federation"' --set 'experiment.precision="bf16"'
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
from fedp2eft.errors import UserError  # noqa: E402
from fedp2eft.methods import get_spec  # noqa: E402

# seconds per client of each method's personalisation and stage, as measured on federation 0 (results.md):
# the longest go first so the last job of a seed is a short one
DEFAULT_ORDER = ["fedl2p", "fedp2eft", "lora-tuned", "fedp2eft-tuned", "fedp2eft-step", "pf2lora", "adalora",
                 "bt-lora", "lora"]


@dataclass
class Job:
    seed: int
    method: str
    base: bool = False  # trains the seed's base model
    needs: list[str] = field(default_factory=list)  # methods of the same seed whose jobs go first
    state: str = "waiting"  # waiting | running | done | failed | skipped
    proc: subprocess.Popen | None = None
    threads: int = 1
    started: float = 0.0


def plan(seeds: list[int], methods: list[str], order: list[str]) -> list[Job]:
    """The jobs in the order they are offered a slot: per seed, the base job, then the methods by ``order``
    (methods it does not name keep their given order, after it)."""
    if not methods:
        raise SystemExit("--methods: name at least one method")
    for m in methods:
        try:
            get_spec(m)  # an unknown method fails here, before any job starts
        except UserError as exc:
            raise SystemExit(f"--methods: {exc}") from None
    first = "none" if "none" in methods else methods[0]
    rest = [m for m in methods if m != first]
    rank = {m: i for i, m in enumerate(order)}
    rest.sort(key=lambda m: (rank.get(m, len(order)), methods.index(m)))
    owners = {get_spec(m).stage.name: m for m in methods if get_spec(m).stage is not None}
    jobs = []
    for s in seeds:
        jobs.append(Job(s, first, base=True))
        for m in rest:
            stage = get_spec(m).stage
            needed = owners.get(stage.needs) if stage is not None and stage.needs else None
            jobs.append(Job(s, m, needs=[first] + ([needed] if needed and needed != m else [])))
    return jobs


def command(args, job: Job) -> list[str]:
    """The job's ``fedp2eft run``: the given ``--set``s, then the job's own seed, threads and method (last, so
    they win)."""
    cmd = [sys.executable, "-m", "fedp2eft", "run", args.config, "--out", str(args.out)]
    for s in [*args.sets, f"experiment.seeds=[{job.seed}]", f"experiment.threads={job.threads}",
              f"personalise.methods=['{job.method}']"]:
        cmd += ["--set", s]
    return cmd


def run(args) -> int:
    jobs = plan(args.seeds, args.methods, args.order or DEFAULT_ORDER)
    args.out = args.out if args.out.is_absolute() else args.cwd / args.out
    logs = args.out / "jobs"
    logs.mkdir(parents=True, exist_ok=True)
    free = args.slots

    def status(seed: int, method: str) -> str:
        return next(j.state for j in jobs if j.seed == seed and j.method == method)

    def stop(signum, _frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        return loop(args, jobs, logs, free, status)
    except (SystemExit, KeyboardInterrupt) as exc:
        running = [j for j in jobs if j.state == "running"]
        for j in running:  # each job stops as its own SIGTERM handling does: runs and checkpoints kept
            j.proc.send_signal(signal.SIGTERM)
        for j in running:
            j.proc.wait()
        print(f"stopped: {len(running)} running job(s) told to stop; run the same command again to resume",
              file=sys.stderr, flush=True)
        return exc.code if isinstance(exc, SystemExit) and isinstance(exc.code, int) else 130
    finally:
        signal.signal(signal.SIGTERM, previous)


def loop(args, jobs: list[Job], logs: Path, free: int, status) -> int:
    """Start, reap and skip jobs until none is waiting or running; 0 when every job finished."""
    while any(j.state in ("waiting", "running") for j in jobs):
        for j in jobs:  # reap
            if j.state == "running" and j.proc.poll() is not None:
                j.state = "done" if j.proc.returncode == 0 else "failed"
                free += j.threads // args.threads
                print(f"{time.strftime('%H:%M:%S')} seed {j.seed} {j.method}: {j.state} "
                      f"({time.perf_counter() - j.started:.0f} s)", flush=True)
        for j in jobs:  # skip what can no longer run
            if j.state == "waiting" and any(status(j.seed, n) in ("failed", "skipped") for n in j.needs):
                j.state = "skipped"
                print(f"seed {j.seed} {j.method}: skipped (a job it needs failed)", flush=True)
        for j in jobs:  # start what is ready, in plan order
            if free == 0:
                break
            if j.state != "waiting" or any(status(j.seed, n) != "done" for n in j.needs):
                continue
            slots = free if j.base else 1  # a base job takes every free slot's threads
            j.threads, j.state, j.started = slots * args.threads, "running", time.perf_counter()
            free -= slots
            env = os.environ | {"OMP_NUM_THREADS": str(j.threads), "PYTHONPATH": str(REPO / "src")}
            with open(logs / f"{j.seed}-{j.method}.log", "a") as log:
                j.proc = subprocess.Popen(command(args, j), cwd=args.cwd, env=env, stdout=log,
                                          stderr=subprocess.STDOUT)
            print(f"{time.strftime('%H:%M:%S')} seed {j.seed} {j.method}: started on {j.threads} thread(s)",
                  flush=True)
        time.sleep(args.poll)
    failed = [f"seed {j.seed} {j.method}" for j in jobs if j.state in ("failed", "skipped")]
    if failed:
        print(f"not finished: {', '.join(failed)} (logs in {logs})", file=sys.stderr)
        return 1
    print(f"every job finished; results in {args.out / 'results.json'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", type=int, nargs="+", required=True)
    ap.add_argument("--methods", nargs="+", required=True)
    ap.add_argument("--slots", type=int, default=2, help="jobs side by side")
    ap.add_argument("--threads", type=int, default=1, help="threads per slot")
    ap.add_argument("--order", nargs="*", help="methods, longest first (default: as measured on federation 0)")
    ap.add_argument("--set", action="append", default=[], dest="sets", metavar="SECTION.KEY=VALUE")
    ap.add_argument("--cwd", type=Path, default=Path.cwd(), help="where the jobs run (relative paths resolve)")
    ap.add_argument("--poll", type=float, default=5.0, help="seconds between looks at the jobs")
    args = ap.parse_args(argv)
    if args.slots < 1 or args.threads < 1:
        raise SystemExit("--slots and --threads must be >= 1")
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
