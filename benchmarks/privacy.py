"""What privacy costs, measured on the quickstart (issue 29).

1. **Accuracy against ε.** The quickstart (``configs/quickstart.toml``: a Standard-FL base model, then
   ``none`` and ``lora`` personalisation of both pools) without differential privacy, then with client-side
   fixed clipping and server noise on the base model's federated training at each target ε (δ = 1e-5).
   The clipping norm C is the median update norm of round 1 of the run without DP (``rounds.jsonl``:
   what half the clients' updates stay under); the noise multiplier z is the smallest that keeps the base
   model's rounds within the target ε (the accountant, bisected). Each setting runs in its own folder
   (``--work``), resumable.
2. **SecAgg+'s cost.** The quickstart's base-model stage for ``--secagg-rounds`` rounds with plain FedAvg
   and with SecAgg+: the median seconds per round of each, their ratio, and the largest difference between
   the two final states after one round (the quantisation error).

    .venv/bin/python benchmarks/privacy.py [--epsilons 8 2] [--work runs/privacy] [--out FILE.json]
    .venv/bin/python benchmarks/privacy.py --fast --out /tmp/privacy.json     # tiny model, 1 round

Writes ``benchmarks/results/privacy/results.json`` (and ``accuracy_vs_epsilon.png`` beside it).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
from pathlib import Path

from fedp2eft.benchkit import add_options, bench_config, write_result
from fedp2eft.config import Privacy
from fedp2eft.errors import UserError
from fedp2eft.fl.engines import train_stage
from fedp2eft.fl.privacy import epsilon_after
from fedp2eft.methods.standard_fl import STANDARD_FL_STAGE
from fedp2eft.pipeline import run_experiment
from fedp2eft.progress import make_console
from fedp2eft.setup.federation import load_federation

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
OUT = HERE / "results" / "privacy" / "results.json"
DELTA = 1e-5


def sample_size(cfg, population: int) -> int:
    r = cfg.federation.round
    return min(population, max(r.min_clients, int(round(r.fraction * population))))


def noise_for(epsilon: float, rounds: int, k: int, population: int) -> float:
    """The smallest noise multiplier z (rounded up to 3 decimals) whose ε after ``rounds`` is <= ``epsilon``."""
    def eps(z: float) -> float:
        return epsilon_after(Privacy(dp="client-fixed", dp_noise_multiplier=z, dp_target_delta=DELTA), rounds, k,
                             population)

    lo, hi = 0.05, 0.1
    while eps(hi) > epsilon:
        lo, hi = hi, hi * 2
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if eps(mid) <= epsilon else (mid, hi)
    return math.ceil(hi * 1000) / 1000


def means(results: dict) -> dict:
    """``{method: {pool: mean accuracy}}`` of a results file's runs."""
    out: dict = {}
    for r in results["runs"]:
        out.setdefault(r["method"], {})[r["pool"]] = r["mean"]
    return out


def round_one_median_norm(folder: Path) -> float:
    first = json.loads((folder / "base_model" / "rounds.jsonl").read_text().splitlines()[0])
    return statistics.median(c["update_norm"] for c in first["clients"].values())


def accuracy_against_epsilon(args, work: Path) -> list[dict]:
    rows = []
    plain_cfg = bench_config(args.config, args)
    plain_dir = work / "no-dp"
    run_experiment(plain_cfg, plain_dir, console=make_console(stderr=True))
    population = len(load_federation(plain_cfg).pool("seen"))
    k = sample_size(plain_cfg, population)
    rounds = plain_cfg.base_model.rounds
    clip = round_one_median_norm(plain_dir)
    rows.append({"target_epsilon": None, "noise_multiplier": 0.0, "clipping_norm": None, "epsilon": None,
                 "accuracy": means(json.loads((plain_dir / "results.json").read_text()))})
    for target in args.epsilons:
        z = noise_for(target, rounds, k, population)
        sets = ['federation.dp="client-fixed"', f"federation.dp_noise_multiplier={z}",
                f"federation.dp_clipping_norm={clip:.6g}", f"federation.dp_target_delta={DELTA}",
                f"federation.dp_target_epsilon={target}"]
        cfg = bench_config(args.config, args, sets)
        folder = work / f"eps{target:g}"
        run_experiment(cfg, folder, console=make_console(stderr=True))
        spent = json.loads((folder / "base_model" / "privacy.json").read_text())
        rows.append({"target_epsilon": target, "noise_multiplier": z, "clipping_norm": round(clip, 6),
                     "epsilon": spent["epsilon"], "delta": spent["delta"], "sample_size": k,
                     "population": population, "rounds": rounds,
                     "accuracy": means(json.loads((folder / "results.json").read_text()))})
    return rows


def secagg_cost(args, work: Path) -> dict:
    out = {}
    states = {}
    for name, sets in (("fedavg", []), ("secagg_plus", ["federation.secure_aggregation=true"])):
        for rounds in (1, args.secagg_rounds):
            cfg = bench_config(args.config, args, [*sets, f"base_model.rounds={rounds}"])
            folder = work / f"{name}-r{rounds}"
            shutil.rmtree(folder, ignore_errors=True)
            model = train_stage(cfg, STANDARD_FL_STAGE, "off-the-shelf", cfg.base_model.seed, folder, resume=False)
            if rounds == 1:
                states[name] = {k: v.detach().double().clone() for k, v in model.state_dict().items()}
                continue
            seconds = [json.loads(x)["seconds"] for x in (folder / "rounds.jsonl").read_text().splitlines()]
            out[name] = {"rounds": rounds, "seconds_per_round": seconds, "median_s": statistics.median(seconds)}
    a, b = states["fedavg"], states["secagg_plus"]
    out["ratio"] = out["secagg_plus"]["median_s"] / out["fedavg"]["median_s"]
    out["max_abs_difference_after_one_round"] = max(float((a[k] - b[k]).abs().max()) for k in a)
    return out


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    private = [r for r in rows if r["target_epsilon"] is not None]
    labels = ["no DP", *(f"ε={r['target_epsilon']:g}" for r in private)]
    for method, style in (("none", "o--"), ("lora", "s-")):
        for pool, colour in (("seen", "C0"), ("unseen", "C1")):
            ys = [100 * r["accuracy"].get(method, {}).get(pool, float("nan")) for r in rows]
            ax.plot(labels, ys, style, color=colour, label=f"{method}, {pool}")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Quickstart: DP on the base model's training")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _renderer():
    """``benchmarks/render.py``, which owns the table (the docs and this script print the same one)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("render", HERE / "render.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    ap = add_options(argparse.ArgumentParser(description=__doc__.splitlines()[0]), OUT)
    ap.add_argument("--config", default=str(REPO / "configs" / "quickstart.toml"))
    ap.add_argument("--epsilons", type=float, nargs="+", default=[8.0, 2.0])
    ap.add_argument("--secagg-rounds", type=int, default=3)
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "privacy")
    args = ap.parse_args(argv)
    args.sets = ['base_model.kind="standard-fl"', *args.sets]  # DP acts on the base model's federated training
    try:
        rows = accuracy_against_epsilon(args, args.work)
        cost = secagg_cost(args, args.work)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result = {"what": "quickstart accuracy against epsilon (client-side fixed clipping + server noise on the "
                      "base model's training) and SecAgg+'s per-round cost against FedAvg",
              "config": args.config, "fast": args.fast, "dp": rows, "secagg": cost}
    write_result(args.out, result)
    if not args.fast:
        plot(rows, args.out.parent / "accuracy_vs_epsilon.png")
    print(_renderer().privacy_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
