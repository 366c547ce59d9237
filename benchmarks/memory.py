"""Peak resident memory (RSS) and time of the quickstart and of one client's round per method, against
the model's own size, each measured in a fresh process: with the allocator the ``fedp2eft`` command
preloads (tcmalloc, else jemalloc: ``fedp2eft.memory``) and with the system allocator (glibc) as the
reference measured in the same run.

    .venv/bin/python benchmarks/memory.py [CONFIG] [--skip-quickstart | --quickstart-reference] [--threads 2]
        [--methods none,lora,...] [--set section.key=value ...] [--out benchmarks/results/memory.json]
    .venv/bin/python benchmarks/memory.py --fast --methods lora --out /tmp/memory.json   # tiny-bert, seconds

Prints, per measurement, the peak RSS in MB, its ratio to the model's parameter bytes, the wall time
and the time ratio against the reference. Whole runs (each in a fresh process): the quickstart (target: a
peak of at most 1.5 GB), the same without gradient checkpointing (its previous set-up: what checkpointing
costs in time) and the generation quickstart (target 3 GB).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
from fedp2eft.benchkit import fast_sets  # noqa: E402
from fedp2eft.memory import find_allocator  # noqa: E402

PRELOADED, REFERENCE = "preloaded allocator", "system (reference)"

# one client's round of a method: personalisation, or a federated stage's client round (FedP²EFT's PSG, the
# Standard-FL base model)
STAGE_ROUNDS = {"fedp2eft (PSG round)": "psg", "standard-fl (round)": "base_model"}


def probe(args) -> dict:
    """In a fresh process (``--probe METHOD``): the model loaded, then one client's round of the method."""
    from fedp2eft import benchkit

    cfg = benchkit.bench_config(args.config, args, ["fedp2eft.r_init=8", "fedp2eft.lora_alpha=16"])
    bench = benchkit.open_bench(cfg)
    task = bench.tasks("seen", 1)[0]

    def peak():
        return int(next(ln for ln in open("/proc/self/status") if ln.startswith("VmHWM")).split()[1]) // 1024

    loaded = peak()
    if args.probe in STAGE_ROUNDS:
        secs = benchkit.client_round(STAGE_ROUNDS[args.probe], cfg, bench.base, task, 2)
    else:
        secs = benchkit.personalise_seconds(args.probe, cfg, bench.base, task, 2)
    return {"loaded_mb": loaded, "peak_mb": peak(), "seconds": secs}


METHODS = ["none", "lora", "adalora", "bt-lora", "fedp2eft", "fedp2eft (PSG round)", "standard-fl (round)"]


def model_mb(argv: list[str]) -> float:
    """The configured model's parameter bytes (MB), measured in a child process."""
    out = subprocess.run([sys.executable, __file__, *argv, "--probe", "model-size"], capture_output=True, text=True,
                         check=True, cwd=REPO)
    return float(out.stdout.strip().splitlines()[-1])


def peak_of(cmd: list[str], env: dict) -> tuple[float, float, int]:
    """``(peak RSS MB, seconds, exit code)`` of a child process (``wait4``'s ``ru_maxrss``)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    proc.stdout_text = proc.stdout.read()
    return usage.ru_maxrss / 1024, time.perf_counter() - start, proc.returncode


QUICKSTART_MB, GENERATION_MB = 1500 * 10**6 / 2**20, 3 * 10**9 / 2**20  # the targets: 1.5 GB and 3 GB


def quickstarts(args, threads: int) -> list[tuple[str, str, list[str], float | None]]:
    """``(name, config, --set values, target MB)`` of each whole run measured: the quickstart as set up, the
    same without gradient checkpointing (the previous default: what it costs in time), and the generation
    quickstart (not in ``--fast``)."""
    common = [*(fast_sets() if args.fast else []), *args.sets, f"experiment.threads={threads}"]
    runs = [("quickstart", args.config, common, round(QUICKSTART_MB)),
            ("quickstart without gradient checkpointing", args.config,
             [*common, 'experiment.gradient_checkpointing="off"'], None),
            ("quickstart, gradient checkpointing everywhere", args.config,
             [*common, 'experiment.gradient_checkpointing="all"'], round(QUICKSTART_MB))]
    if not args.fast:
        runs.append(("generation quickstart", "configs/generation_quickstart.toml",
                     [f"experiment.threads={threads}"], round(GENERATION_MB)))
    return runs


def main(argv: list[str] | None = None) -> int:
    from fedp2eft.benchkit import add_options, bench_config, open_bench, write_result

    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config", nargs="?", default="configs/quickstart.toml")
    ap.add_argument("--skip-quickstart", action="store_true")
    ap.add_argument("--quickstart-reference", action="store_true",
                    help="also run the quickstart with glibc's default allocator behaviour (twice the time)")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, from {METHODS}")
    ap.add_argument("--probe", default=None, help=argparse.SUPPRESS)  # one measurement, in a child process
    args = add_options(ap, REPO / "benchmarks" / "results" / "memory.json").parse_args(argv)
    if args.probe == "model-size":
        m = open_bench(bench_config(args.config, args)).base
        print(sum(p.numel() * p.element_size() for p in m.parameters()) / 2**20)
        return 0
    if args.probe:
        print(json.dumps(probe(args)))
        return 0
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        print(f"error: --methods: unknown {unknown[0]!r} (known: {', '.join(METHODS)})", file=sys.stderr)
        return 2
    threads = args.threads or 2
    child_argv = [a for a in argv if a != "--quickstart-reference" and a != "--skip-quickstart"]
    size = model_mb(child_argv)
    print(f"model parameters: {size:.0f} MB (fp32)")
    library = find_allocator()
    results: dict = {"config": args.config, "sets": args.sets, "fast": args.fast, "model_mb": size,
                     "threads": threads, "allocator_library": library, "client_round": {}, "quickstart": {},
                     **{name: {} for name, *_ in quickstarts(args, threads) if name != "quickstart"}}
    base_env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    base_env["OMP_NUM_THREADS"] = str(threads)
    modes = [(REFERENCE, {**base_env, "FEDP2EFT_ALLOCATOR": "system"})]
    if library is None:
        print("no tcmalloc or jemalloc installed (Debian: libtcmalloc-minimal4): the system allocator only")
    else:
        print(f"preloaded allocator: {library}")
        modes.insert(0, (PRELOADED, {**base_env, "LD_PRELOAD": library}))
    for mode, env in modes:
        reference = mode == REFERENCE
        for method in methods:
            peak, secs, rc = peak_of([sys.executable, __file__, *child_argv, "--threads", str(threads),
                                      "--probe", method], env)
            if rc != 0:
                raise SystemExit(f"{method}: the probe failed (exit {rc})")
            results["client_round"].setdefault(method, {})[mode] = {"peak_mb": round(peak), "seconds": round(secs, 1)}
            print(f"{mode:>24} | {method:<22} peak {peak:6.0f} MB = {peak / size:4.1f} x model, {secs:5.1f} s")
        if args.skip_quickstart or (reference and not args.quickstart_reference and library is not None):
            continue
        for name, config, sets, target in quickstarts(args, threads):
            if reference and name != "quickstart":
                continue  # the reference allocator runs the quickstart alone
            with tempfile.TemporaryDirectory() as tmp:
                # python -m fedp2eft: the command's own allocator choice (LD_PRELOAD from env, or system)
                cmd = [sys.executable, "-m", "fedp2eft", "run", config, "--out", tmp,
                       *(x for s in sets for x in ("--set", s))]
                peak, secs, rc = peak_of(cmd, env)
            if rc != 0:
                raise SystemExit(f"{name} failed (exit {rc})")
            results["quickstart" if name == "quickstart" else name][mode] = {
                "peak_mb": round(peak), "seconds": round(secs, 1), "target_mb": target}
            verdict = "" if target is None else (f" (<= {target} MB)" if peak <= target else f" (> {target} MB)")
            print(f"{mode:>24} | {name:<34} peak {peak:6.0f} MB = {peak / size:4.1f} x model, {secs:5.0f} s{verdict}")
    ratios = {m: round(r[PRELOADED]["seconds"] / r[REFERENCE]["seconds"], 2)
              for m, r in results["client_round"].items() if PRELOADED in r}
    if len(results["quickstart"]) == 2:
        q = results["quickstart"]
        ratios["quickstart"] = round(q[PRELOADED]["seconds"] / q[REFERENCE]["seconds"], 2)
    off = results.get("quickstart without gradient checkpointing", {}).get(PRELOADED)
    if off and PRELOADED in results["quickstart"]:
        q = results["quickstart"][PRELOADED]
        results["checkpointing"] = {"time_ratio": round(q["seconds"] / off["seconds"], 2),
                                    "peak_ratio": round(q["peak_mb"] / off["peak_mb"], 2)}
        print(f"quickstart with / without gradient checkpointing: time {results['checkpointing']['time_ratio']:.2f}, "
              f"peak {results['checkpointing']['peak_ratio']:.2f}")
    if ratios:
        results["time_ratio_preloaded_over_reference"] = ratios
        print("time, preloaded / reference: " + ", ".join(f"{m} {r:.2f}" for m, r in ratios.items()))
    write_result(args.out, results)
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
