"""What else could make a run cheaper (issue 28), each measured against the code as it runs today, in one
run of this script, on the config's real client rows:

1. **attention**: one training step (forward + backward through every layer, the frozen base as in
   personalisation) per real batch with the backbone's attention ``eager`` against ``sdpa``
   (PyTorch's fused ``scaled_dot_product_attention``, what transformers loads by default);
2. **torch.compile**: the same steps with the backbone compiled (``dynamic=True``, the batches' lengths
   differ): seconds of the first step (the compile) and the steady-state ratio eager / compiled, and how
   many steps pay for the compile. A personalised client is a new set of adapter modules, so a run
   would pay the compile at least once per process and again when the graph changes;
3. **length-sorted evaluation**: a pool's test rows predicted in their order (each batch padded to its
   longest row) against sorted by length (less padding, predictions put back in order): time ratio,
   padded tokens saved, and whether every prediction is the same.

Median over ``--repeats`` passes, each alternating the variants so drift hits both. Writes
``benchmarks/results/speedups.json`` under the device and config (other entries kept).

    .venv/bin/python benchmarks/speedups.py [--config benchmarks/masakhanews_paper.toml] [--threads 2]
    .venv/bin/python benchmarks/speedups.py --fast --out /tmp/speedups.json   # tiny-bert, seconds
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
from fedp2eft.benchkit import add_measurement, add_options, bench_config, open_bench  # noqa: E402
from fedp2eft.models.precision import set_precision  # noqa: E402
from fedp2eft.tasks.classification import predict  # noqa: E402
from fedp2eft.training import model_inputs, to_device  # noqa: E402


def training_batches(bench, batches: int) -> list[dict]:
    """The first ``batches`` shuffled batches of the seen pool's train rows, at the personalisation batch."""
    tasks = bench.tasks("seen", clients=4, largest_first=True)
    gen = torch.Generator().manual_seed(0)
    out = []
    for task in tasks:
        for b in task.train.batches(bench.cfg.personalise.recipe.batch_size, gen, shuffle=True):
            out.append({k: v for k, v in b.items() if k in ("input_ids", "attention_mask", "token_type_ids")})
            if len(out) == batches:
                return out
    return out


def step_seconds(model, batches: list[dict]) -> list[float]:
    """Seconds of forward + backward of each batch (gradients through every layer to the head)."""
    times = []
    for b in batches:
        t = time.perf_counter()
        model(**b).float().sum().backward()
        times.append(time.perf_counter() - t)
    return times


def set_attention(model, impl: str) -> None:
    model.backbone.set_attn_implementation(impl)


def attention(model, batches: list[dict], repeats: int) -> dict:
    runs = {"eager": [], "sdpa": []}
    for _ in range(repeats + 1):  # the first pass warms up and is dropped
        for impl in runs:
            set_attention(model, impl)
            runs[impl].append(sum(step_seconds(model, batches)))
    set_attention(model, "sdpa")
    med = {k: statistics.median(v[1:]) for k, v in runs.items()}
    return {"median_s": {k: round(v, 4) for k, v in med.items()}, "ratio_eager_over_sdpa": round(med["eager"] / med["sdpa"], 3)}


def compiled(model, batches: list[dict], repeats: int) -> dict:
    eager_pass = [sum(step_seconds(model, batches)) for _ in range(repeats + 1)][1:]
    original = model.backbone
    t = time.perf_counter()
    model.backbone = torch.compile(original, dynamic=True)
    try:
        first = step_seconds(model, batches[:1])[0]
        first_pass = time.perf_counter() - t
        passes = [sum(step_seconds(model, batches)) for _ in range(repeats)]
    finally:
        model.backbone = original
    eager, steady = statistics.median(eager_pass), statistics.median(passes)
    saved_per_step = (eager - steady) / len(batches)
    return {"first_step_s": round(first, 2), "first_step_with_wrapping_s": round(first_pass, 2),
            "median_pass_s": {"eager": round(eager, 4), "compiled": round(steady, 4)},
            "ratio_eager_over_compiled": round(eager / steady, 3),
            "steps_to_pay_for_the_compile": None if saved_per_step <= 0 else round(first / saved_per_step)}


def sorted_evaluation(bench, model, repeats: int) -> dict:
    tasks = bench.tasks("unseen")
    size = bench.cfg.personalise.eval_batch_size

    def padded(data, order):
        return sum(len(idx) * max(len(data.input_ids[i]) for i in idx)
                   for idx in (order[s:s + size] for s in range(0, len(order), size)))

    real = sum(len(ids) for t in tasks for ids in t.test.input_ids)
    as_given = sum(padded(t.test, list(range(len(t.test)))) for t in tasks)
    by_length = sum(padded(t.test, sorted(range(len(t.test)), key=lambda i: len(t.test.input_ids[i]))) for t in tasks)
    times = {"in_order": [], "sorted": []}
    same = True
    for _ in range(repeats + 1):
        t = time.perf_counter()
        plain = [predict(model, task.test, size) for task in tasks]
        times["in_order"].append(time.perf_counter() - t)
        t = time.perf_counter()
        bucketed = [predict_sorted(model, task.test, size) for task in tasks]
        times["sorted"].append(time.perf_counter() - t)
        same = same and plain == bucketed
    med = {k: statistics.median(v[1:]) for k, v in times.items()}
    return {"rows": sum(len(t.test) for t in tasks), "tokens": real, "padded_tokens": {"in_order": as_given,
            "sorted": by_length}, "median_s": {k: round(v, 4) for k, v in med.items()},
            "ratio_in_order_over_sorted": round(med["in_order"] / med["sorted"], 3), "same_predictions": same}


def predict_sorted(model, data, batch_size: int) -> list[int]:
    """``predict`` with the rows batched in order of length; the predictions in the rows' order."""
    order = sorted(range(len(data)), key=lambda i: len(data.input_ids[i]))
    out = [0] * len(data)
    model.eval()
    with torch.no_grad():
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            batch = to_device(data.batch(idx), next(model.parameters()).device)
            for i, p in zip(idx, model(**model_inputs(batch)).argmax(-1).tolist(), strict=True):
                out[i] = p
    return out


def main(argv: list[str] | None = None) -> int:
    ap = add_options(argparse.ArgumentParser(description=__doc__.splitlines()[0]),
                     REPO / "benchmarks" / "results" / "speedups.json")
    ap.add_argument("--config", default="benchmarks/masakhanews_paper.toml")
    ap.add_argument("--batches", type=int, default=6, help="training batches per pass")
    ap.add_argument("--repeats", type=int, default=3, help="passes per variant (after a warm-up pass)")
    ap.add_argument("--skip-compile", action="store_true", help="leave torch.compile out (it takes minutes)")
    args = ap.parse_args(argv)
    cfg = bench_config(REPO / args.config, args)
    bench = open_bench(cfg)
    if bench.problem.name != "classification":
        raise SystemExit(f"{args.config}: speedups.py measures classification configs, not {bench.problem.name}")
    model = bench.base
    precision = set_precision(model, cfg.experiment.precision)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.head.parameters():
        p.requires_grad_(True)
    repeats = 1 if args.fast else args.repeats
    batches = training_batches(bench, 2 if args.fast else args.batches)
    result = {"config": args.config, "sets": args.sets, "fast": args.fast, "precision": precision,
              "threads": torch.get_num_threads(), "batches": len(batches),
              "tokens_per_batch": [int(b["attention_mask"].sum()) for b in batches],
              "attention": attention(model, batches, repeats)}
    a = result["attention"]
    print(f"attention: eager / sdpa time {a['ratio_eager_over_sdpa']} ({a['median_s']})")
    if not args.skip_compile:
        c = result["compile"] = compiled(model, batches, repeats)
        print(f"torch.compile: first step {c['first_step_s']} s, steady eager / compiled "
              f"{c['ratio_eager_over_compiled']}, steps to pay for it {c['steps_to_pay_for_the_compile']}")
    e = result["sorted_evaluation"] = sorted_evaluation(bench, model, repeats)
    print(f"length-sorted evaluation: in order / sorted time {e['ratio_in_order_over_sorted']}, padded tokens "
          f"{e['padded_tokens']['in_order']} -> {e['padded_tokens']['sorted']} ({e['tokens']} real), "
          f"same predictions: {e['same_predictions']}")
    if args.out is not None:
        add_measurement(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
