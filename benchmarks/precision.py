"""bf16 mixed precision (``experiment.precision``) against fp32, both measured in one run of this script:

1. **kernel**: the configured model's forward pass and forward + backward (gradients through every layer
   to a LoRA-sized trainable head, the frozen base as in personalisation) on one batch of the config's
   shape, alternating fp32 and bf16 repeats: the median time ratio fp32 / bf16;
2. **runs**: whole ``fedp2eft run``s of the config (default the quickstart; a paper-protocol seed with
   ``--config benchmarks/masakhanews_paper.toml --set 'experiment.seeds=[0]'``), one per precision, each in
   a fresh process: wall time ratio fp32 / bf16, and every method's accuracy difference bf16 − fp32 per
   pool with a paired bootstrap 95 % interval over clients (``evaluation.paired``);
3. **seed noise**: a third run at fp32 with ``--noise-set`` (default ``base_model.seed=1``: another base
   instance, the variation a bf16 base is: a different training trajectory from the same data). bf16 is
   *within seed noise* for a method and pool where its interval holds 0 or |bf16 − fp32| is at most
   |fp32 (other seed) − fp32|.

Runs are resumable (their folders are under ``--work``; a run stopped part-way is finished by running the
same command again, and its wall time is the sum of its parts, ``timing.json``). Writes
``benchmarks/results/precision.json`` under the device it ran on (``native_bf16``: what ``"auto"`` goes by)
and the config, keeping the other devices' and configs' measurements.

    .venv/bin/python benchmarks/precision.py [--config configs/quickstart.toml] [--set k=v ...] [--threads 2]
    .venv/bin/python benchmarks/precision.py --fast --out /tmp/precision.json   # tiny-bert, seconds

``--compare FP32_DIR BF16_DIR`` compares two finished runs' ``results.json`` instead (same config and seeds,
e.g. the paper protocol's federation 0 in fp32 and again in bf16): every method's bf16 − fp32 with its
paired bootstrap over clients, under ``--name`` (no timing: the two may have run on different machines).

``--noise-set`` names what the fp32 reference run changes (default ``base_model.seed=1``; an off-the-shelf
base has no seed of its own: give it e.g. ``personalise.lora_a_seed=7``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
from fedp2eft.atomic import write_json  # noqa: E402
from fedp2eft.benchkit import add_measurement, add_options, bench_config, fast_sets, open_bench  # noqa: E402
from fedp2eft.evaluation.paired import bootstrap_clients  # noqa: E402
from fedp2eft.models.precision import set_precision  # noqa: E402
from fedp2eft.report import environment  # noqa: E402
from fedp2eft.setup.base_models import default_device  # noqa: E402
from fedp2eft.setup.federation import task_name  # noqa: E402

PRECISIONS = ("fp32", "bf16")
NOISE = "fp32-other-seed"  # the seed-noise reference run


def kernel(cfg, batch_size: int, repeats: int) -> dict:
    """Median seconds of the forward pass and of forward + backward per precision, and their ratios."""
    bench = open_bench(cfg)
    model = bench.base.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    head = getattr(model, "head", None)
    trained = [p for p in head.parameters()] if isinstance(head, torch.nn.Linear) else []
    for p in trained:
        p.requires_grad_(True)
    length = cfg.data.max_length
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 1000, (batch_size, length), generator=gen)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    times: dict[str, dict[str, list[float]]] = {p: {"forward": [], "forward_backward": []} for p in PRECISIONS}

    def out_sum() -> torch.Tensor:
        out = model(**inputs)
        return out.float().sum() if torch.is_tensor(out) else out.logits().float().sum()

    for _ in range(repeats + 1):  # the first round warms up and is dropped
        for precision in PRECISIONS:
            set_precision(model, precision)
            t = time.perf_counter()
            with torch.no_grad():
                out_sum()
            forward = time.perf_counter() - t
            t = time.perf_counter()
            loss = out_sum()
            if loss.requires_grad:
                loss.backward()
            both = time.perf_counter() - t
            times[precision]["forward"].append(forward)
            times[precision]["forward_backward"].append(both)
    med = {p: {k: statistics.median(v[1:]) for k, v in t.items()} for p, t in times.items()}
    return {"model": cfg.model.name, "batch": [batch_size, length], "repeats": repeats,
            "median_s": {p: {k: round(v, 4) for k, v in m.items()} for p, m in med.items()},
            "speed_ratio": {k: round(med["fp32"][k] / med["bf16"][k], 3) for k in med["fp32"]}}


def run_once(config: str, sets: list[str], precision: str, folder: Path, threads: int) -> dict:
    """One ``fedp2eft run`` at ``precision`` in a fresh process (resuming ``folder``); its results and the
    summed wall time of every part that ran."""
    timing_path = folder / "timing.json"
    timing = json.loads(timing_path.read_text()) if timing_path.is_file() else {"parts_s": [], "complete": False}
    if not timing["complete"]:
        cmd = [sys.executable, "-m", "fedp2eft", "run", config, "--out", str(folder),
               "--set", f'experiment.precision="{precision}"', "--set", f"experiment.threads={threads}"]
        for s in sets:
            cmd += ["--set", s]
        folder.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, env=os.environ | {"PYTHONPATH": str(REPO / "src")},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        timing["parts_s"].append(round(time.perf_counter() - start, 2))
        timing["complete"] = proc.returncode == 0
        write_json(timing_path, timing)
        if proc.returncode != 0:
            raise SystemExit(f"{precision} run failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    results = json.loads((folder / "results.json").read_text())
    return {"wall_s": round(sum(timing["parts_s"]), 2), "parts": len(timing["parts_s"]), "results": results}


def compare(runs: dict[str, dict]) -> list[dict]:
    """Per (method, budget, pool, seed): the means, bf16 − fp32 with its bootstrap interval over clients, and
    the seed-noise reference (fp32 on another seed − fp32) beside it."""
    keyed = {p: {(r["method"], r["budget"], r["pool"], r["seed"]): r for r in run["results"]["runs"]}
             for p, run in runs.items()}
    rows = []
    for key in sorted(set(keyed["fp32"]) & set(keyed["bf16"]), key=str):
        a, b = keyed["bf16"][key], keyed["fp32"][key]
        interval = bootstrap_clients([(a, b)])
        delta = 100 * (a["mean"] - b["mean"])
        row = {"method": key[0], "budget": key[1], "pool": key[2], "seed": key[3],
               "fp32": round(100 * b["mean"], 2), "bf16": round(100 * a["mean"], 2), "delta": round(delta, 2),
               "interval": None if interval is None else [round(100 * x, 2) for x in interval]}
        other = keyed.get(NOISE, {}).get(key)
        noise = None if other is None else 100 * (other["mean"] - b["mean"])
        if noise is not None:
            row["seed_noise_delta"] = round(noise, 2)
        holds_zero = interval is not None and interval[0] <= 0 <= interval[1]
        row["within_noise"] = bool(holds_zero or (noise is not None and abs(delta) <= abs(noise) + 1e-9))
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = add_options(argparse.ArgumentParser(description=__doc__.splitlines()[0]),
                     REPO / "benchmarks" / "results" / "precision.json")
    ap.add_argument("--config", default="configs/quickstart.toml")
    ap.add_argument("--work", type=Path, default=None, help="the runs' folders (default runs/precision/<config>)")
    ap.add_argument("--batch-size", type=int, default=32, help="the kernel's batch")
    ap.add_argument("--repeats", type=int, default=5, help="the kernel's repeats per precision")
    ap.add_argument("--skip-runs", action="store_true", help="the kernel only")
    ap.add_argument("--compare", nargs=2, type=Path, metavar=("FP32_DIR", "BF16_DIR"),
                    help="compare two finished runs' results.json instead of running anything")
    ap.add_argument("--name", default="", help="the entry's name with --compare (default: the bf16 folder's)")
    ap.add_argument("--noise-set", default="base_model.seed=1",
                    help="what the fp32 seed-noise reference run changes ('' for none)")
    args = ap.parse_args(argv)
    if args.compare:
        return compare_folders(args)
    cfg = bench_config(REPO / args.config, args)
    threads = torch.get_num_threads()
    repeats = 1 if args.fast else args.repeats
    result = {"config": args.config, "sets": args.sets, "fast": args.fast, "device": str(default_device()),
              "kernel": kernel(cfg, 4 if args.fast else args.batch_size, repeats)}
    k = result["kernel"]
    print(f"kernel ({k['model']}, batch {k['batch'][0]} x {k['batch'][1]}): fp32 / bf16 time "
          f"{k['speed_ratio']['forward']} forward, {k['speed_ratio']['forward_backward']} forward + backward")
    if not args.skip_runs:
        work = args.work or REPO / "runs" / "precision" / (Path(args.config).stem + ("-fast" if args.fast else ""))
        sets = [*(fast_sets(task_name(cfg) == "generation", cfg.data.dataset) if args.fast else []), *args.sets]
        runs = {p: run_once(args.config, sets, p, work / p, threads) for p in PRECISIONS}
        if args.noise_set:
            runs[NOISE] = run_once(args.config, [*sets, args.noise_set], "fp32", work / NOISE, threads)
        rows = compare(runs)
        result["runs"] = {"work": str(work), "wall_s": {p: r["wall_s"] for p, r in runs.items()},
                          "parts": {p: r["parts"] for p, r in runs.items()},
                          "speed_ratio": round(runs["fp32"]["wall_s"] / runs["bf16"]["wall_s"], 3),
                          "noise_set": args.noise_set or None, "accuracy": rows,
                          "bf16_within_noise": all(r["within_noise"] for r in rows)}
        print(f"runs: fp32 {runs['fp32']['wall_s']:.0f} s, bf16 {runs['bf16']['wall_s']:.0f} s, ratio "
              f"{result['runs']['speed_ratio']}")
        for r in rows:
            iv = "" if r["interval"] is None else f" [{r['interval'][0]:+.2f}, {r['interval'][1]:+.2f}]"
            noise = f"  (seed noise {r['seed_noise_delta']:+.2f})" if "seed_noise_delta" in r else ""
            print(f"  {r['method']:<14} {r['pool']:<7} fp32 {r['fp32']:.2f}  bf16 {r['bf16']:.2f}  "
                  f"delta {r['delta']:+.2f}{iv}{noise}  {'within' if r['within_noise'] else 'OUTSIDE'} noise")
        print(f"bf16 within seed noise everywhere: {result['runs']['bf16_within_noise']}")
    if args.out is not None:
        write_measurement(args.out, result)
    return 0


def compare_folders(args) -> int:
    """``--compare``: the accuracy rows of two finished runs, written under ``--name``."""
    runs = {}
    for precision, folder in zip(PRECISIONS, args.compare, strict=True):
        path = folder / "results.json"
        if not path.is_file():
            raise SystemExit(f"{path}: no results.json to compare")
        runs[precision] = {"results": json.loads(path.read_text())}
    recorded = {p: runs[p]["results"]["config"]["experiment"].get("precision", "fp32") for p in PRECISIONS}
    if recorded != {"fp32": "fp32", "bf16": "bf16"}:
        raise SystemExit(f"--compare wants an fp32 folder then a bf16 one; their configs say {recorded}")
    rows = compare(runs)
    if not rows:
        raise SystemExit("--compare: the two folders share no (method, budget, pool, seed) run")
    name = args.name or args.compare[1].name
    result = {"config": name, "sets": [], "fast": False, "compared": [str(f) for f in args.compare],
              "devices": {p: runs[p]["results"].get("environment", {}).get("device") for p in PRECISIONS},
              "runs": {"accuracy": rows}}
    for r in rows:
        iv = "" if r["interval"] is None else f" [{r['interval'][0]:+.2f}, {r['interval'][1]:+.2f}]"
        print(f"  {r['method']:<14} {r['pool']:<7} fp32 {r['fp32']:.2f}  bf16 {r['bf16']:.2f}  delta {r['delta']:+.2f}{iv}")
    if args.out is not None:
        d = result["devices"]
        write_measurement(args.out, result, f"fp32 on {d['fp32']}, bf16 on {d['bf16']}")
    return 0


def write_measurement(path: Path, result: dict, device: str | None = None) -> None:
    """Add ``result`` under ``device`` (default: this machine's, marked where it runs bf16 natively)."""
    env = environment()
    add_measurement(path, result, device or env["device"] + (" (native bf16)" if env["native_bf16"] else ""))


if __name__ == "__main__":
    raise SystemExit(main())
