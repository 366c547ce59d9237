"""Peak resident memory (RSS) and time of the quickstart and of one client's round per method, against
the model's own size, each measured in a fresh process: with the allocator the ``fedp2eft`` command
preloads (tcmalloc, else jemalloc: ``fedp2eft.memory``) and with the system allocator (glibc) as the
reference measured in the same run.

    .venv/bin/python benchmarks/memory.py [--skip-quickstart | --quickstart-reference] [--threads 2]
        [--out benchmarks/results/memory.json]

Prints, per measurement, the peak RSS in MB, its ratio to the model's parameter bytes, the wall time
and the time ratio against the reference; the quickstart's target is a peak of at most 2 GB without
being slower than the reference.
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
from fedp2eft.memory import find_allocator  # noqa: E402

PRELOADED, REFERENCE = "preloaded allocator", "system (reference)"

# one client's round of a method: personalisation, or the method's federated stage (FedP²EFT's PSG)
CLIENT_ROUND = r'''
import json, sys, time, torch
torch.set_num_threads(int(sys.argv[2]))
from fedp2eft.config import load_config
from fedp2eft.methods import get_method
from fedp2eft.methods.registry import StageContext
from fedp2eft.setup.base_models import load_base
from fedp2eft.setup.federation import client_tasks, load_federation
cfg = load_config("configs/quickstart.toml", ["fedp2eft.r_init=8", "fedp2eft.lora_alpha=16"])
fed = load_federation(cfg)
base, tok = load_base(cfg, "off-the-shelf", len(fed.label_names), 0)
task = client_tasks(fed.pool("seen")[:1], tok, cfg.data.max_length)[0]
def peak():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) // 1024
loaded = peak()
method = sys.argv[1]
start = time.perf_counter()
if method == "fedp2eft (PSG round)":
    from fedp2eft.methods.fedp2eft import PSG_STAGE
    s = PSG_STAGE.client_settings(cfg, 0, None)
    PSG_STAGE.client_update(base, PSG_STAGE.initial_state(base, s), task, s, StageContext(seed=0))
elif method == "standard-fl (round)":
    from fedp2eft.methods.standard_fl import STANDARD_FL_STAGE as st
    s = st.client_settings(cfg, 0, None)
    st.client_update(base, st.initial_state(base, s), task, s, StageContext(seed=0))
else:
    resources = {}
    if method == "fedp2eft":
        from fedp2eft.methods.fedp2eft import PSG_STAGE
        s = PSG_STAGE.client_settings(cfg, 0, None)
        resources = {None: PSG_STAGE.finalize(base, PSG_STAGE.initial_state(base, s), s, None)}
    get_method(method, cfg, resources, 0).personalise(base, task, 2, cfg.personalise.train_settings(0))
print(json.dumps({"loaded_mb": loaded, "peak_mb": peak(), "seconds": time.perf_counter() - start}))
'''

METHODS = ["none", "lora", "adalora", "bt-lora", "fedp2eft", "fedp2eft (PSG round)", "standard-fl (round)"]


def model_mb() -> float:
    code = ("import torch; from fedp2eft.config import load_config; from fedp2eft.setup.base_models import load_base; "
            "m, _ = load_base(load_config('configs/quickstart.toml'), 'off-the-shelf', 7, 0); "
            "print(sum(p.numel() * p.element_size() for p in m.parameters()) / 2**20)")
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                cwd=REPO).stdout.strip().splitlines()[-1])


def peak_of(cmd: list[str], env: dict) -> tuple[float, float, int]:
    """``(peak RSS MB, seconds, exit code)`` of a child process (``wait4``'s ``ru_maxrss``)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    proc.stdout_text = proc.stdout.read()
    return usage.ru_maxrss / 1024, time.perf_counter() - start, proc.returncode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--skip-quickstart", action="store_true")
    ap.add_argument("--quickstart-reference", action="store_true",
                    help="also run the quickstart with glibc's default allocator behaviour (twice the time)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "memory.json")
    args = ap.parse_args()
    size = model_mb()
    print(f"e5-small parameters: {size:.0f} MB (fp32)")
    library = find_allocator()
    results: dict = {"model_mb": size, "threads": args.threads, "allocator_library": library,
                     "client_round": {}, "quickstart": {}}
    base_env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    base_env["OMP_NUM_THREADS"] = str(args.threads)
    modes = [(REFERENCE, {**base_env, "FEDP2EFT_ALLOCATOR": "system"})]
    if library is None:
        print("no tcmalloc or jemalloc installed (Debian: libtcmalloc-minimal4): the system allocator only")
    else:
        print(f"preloaded allocator: {library}")
        modes.insert(0, (PRELOADED, {**base_env, "LD_PRELOAD": library}))
    for mode, env in modes:
        reference = mode == REFERENCE
        for method in METHODS:
            peak, secs, rc = peak_of([sys.executable, "-c", CLIENT_ROUND, method, str(args.threads)], env)
            if rc != 0:
                raise SystemExit(f"{method}: the probe failed (exit {rc})")
            results["client_round"].setdefault(method, {})[mode] = {"peak_mb": round(peak), "seconds": round(secs, 1)}
            print(f"{mode:>24} | {method:<22} peak {peak:6.0f} MB = {peak / size:4.1f} x model, {secs:5.1f} s")
        if not args.skip_quickstart and (not reference or args.quickstart_reference or library is None):
            with tempfile.TemporaryDirectory() as tmp:
                # python -m fedp2eft: the command's own allocator choice (LD_PRELOAD from env, or system)
                cmd = [sys.executable, "-m", "fedp2eft", "run", "configs/quickstart.toml", "--out", tmp,
                       "--set", f"experiment.threads={args.threads}"]
                peak, secs, rc = peak_of(cmd, env)
            if rc != 0:
                raise SystemExit(f"quickstart failed (exit {rc})")
            results["quickstart"][mode] = {"peak_mb": round(peak), "seconds": round(secs, 1)}
            verdict = "<= 2 GB" if peak <= 2048 else "> 2 GB"
            print(f"{mode:>24} | quickstart             peak {peak:6.0f} MB = {peak / size:4.1f} x model, "
                  f"{secs:5.0f} s ({verdict})")
    ratios = {m: round(r[PRELOADED]["seconds"] / r[REFERENCE]["seconds"], 2)
              for m, r in results["client_round"].items() if PRELOADED in r}
    if len(results["quickstart"]) == 2:
        q = results["quickstart"]
        ratios["quickstart"] = round(q[PRELOADED]["seconds"] / q[REFERENCE]["seconds"], 2)
    if ratios:
        results["time_ratio_preloaded_over_reference"] = ratios
        print("time, preloaded / reference: " + ", ".join(f"{m} {r:.2f}" for m, r in ratios.items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(args.out)
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
