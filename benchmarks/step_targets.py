"""Why a learned step falls short of a validated rate (issue 26): the step head's sweep against a real one.

``fedp2eft-step`` learns its rate from a *linearised* local sweep scored by held-out *loss*: fine-tune once at
rate η, then score w_0 + c·Δ for multipliers c (to first order, fine-tuning at c·η moves the weights by
c·Δ). ``lora-tuned`` chooses by a *real* sweep scored by held-out *accuracy*: one fine-tuning per rate.
On a federation's base and real clients, this script measures both on the same fit / held-out split of each
client's train rows (never test), for LoRA at rank r and every rate in ``--rates``:

- the real sweep: each rate's fine-tuning scored on the held-out rows (accuracy and loss);
- the linearised sweep from each rate η: w_0 + (η'/η)·Δ(η) scored at every other rate η' of the grid;
- which rate each criterion picks, for the pool (held-out rows pooled per language, then averaged over
  languages, as ``lora-tuned``) and per client.

Two hypotheses for the step head's rate sitting below the validated one: the linearisation undervalues
larger rates (its predicted loss at η' > η is above the real one), or loss and accuracy disagree (the
loss-optimal rate is smaller than the accuracy-optimal one). The table tells them apart.

    .venv/bin/python benchmarks/step_targets.py benchmarks/masakhanews_paper.toml \\
        --base benchmarks/results/masakhanews_paper_replicates_bf16/federation0/base_model/model \\
        --set 'experiment.precision="bf16"' [--pool seen] [--clients 16] [--rates 3e-4 1e-3 3e-3 1e-2]
    .venv/bin/python benchmarks/step_targets.py configs/quickstart.toml --fast --out /tmp/step_targets.json
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
from fedp2eft.benchkit import add_options, bench_config, open_bench, write_result  # noqa: E402
from fedp2eft.evaluation import mean_over_languages  # noqa: E402
from fedp2eft.methods.fedp2eft.step import adapter_groups, train_at_rates  # noqa: E402
from fedp2eft.methods.lora import lora_model  # noqa: E402
from fedp2eft.setup.federation import client_tasks  # noqa: E402
from fedp2eft.training import model_inputs, to_device  # noqa: E402


@torch.no_grad()
def held_out(model, data, problem, batch_size: int) -> tuple[float, int, int]:
    """(summed loss, correct rows, rows) of ``model`` on ``data``."""
    model.eval()
    device = next(model.parameters()).device
    loss, correct, rows = 0.0, 0, 0
    for batch in data.batches(batch_size):
        batch = to_device(batch, device)
        logits = model(**model_inputs(batch))
        n = len(batch["input_ids"])
        loss += float(problem.loss(logits, batch)) * n
        correct += int((logits.argmax(-1) == batch["labels"]).sum())
        rows += n
    return loss, correct, rows


def client_sweep(base, task, rates: list[float], budget: int, recipe, seed: int, val_fraction: float,
                 batch_size: int) -> dict:
    """One client: ``scores[i][k]`` = (loss sum, correct, rows) of the update learned at ``rates[i]`` scaled to
    ``rates[k]`` (the diagonal: the real fine-tuning at each rate)."""
    fit, val = task.train.split(val_fraction, seed)
    scores = []
    for lr in rates:
        torch.manual_seed(seed)
        model = lora_model(base, budget, recipe, task.problem)
        groups = adapter_groups(model)
        init = {t: [p.detach().clone() for p in ps] for t, ps in groups.items()}
        train_at_rates(model, fit, dict.fromkeys(groups, lr), recipe, seed, task.problem)
        trained = {t: [p.detach().clone() for p in ps] for t, ps in groups.items()}
        row = []
        for target in rates:
            with torch.no_grad():
                for t, ps in groups.items():
                    for p, w0, w in zip(ps, init[t], trained[t], strict=True):
                        p.copy_(w0 + (target / lr) * (w - w0))
            row.append(held_out(model, val, task.problem, batch_size))
        scores.append(row)
        del model
    return {"client": task.client_id, "language": task.language, "rows": len(val), "scores": scores}


def pooled(clients: list[dict], i: int, k: int) -> tuple[float, float]:
    """(accuracy, mean loss) of cell (i, k): rows pooled per language, then the mean over languages."""
    acc, loss = {}, {}
    for c in clients:
        lo, co, n = c["scores"][i][k]
        a, b = acc.setdefault(c["language"], [0, 0]), loss.setdefault(c["language"], [0.0, 0])
        a[0], a[1], b[0], b[1] = a[0] + co, a[1] + n, b[0] + lo, b[1] + n
    return (mean_over_languages({g: {"value": s / n} for g, (s, n) in acc.items() if n}),
            mean_over_languages({g: {"value": s / n} for g, (s, n) in loss.items() if n}))


def pick(values: list[float], best) -> int:
    """The index of the best value (the smaller rate on a tie, as ``lora-tuned``)."""
    target = best(values)
    return next(i for i, v in enumerate(values) if v == target)


def summarise(clients: list[dict], rates: list[float]) -> dict:
    n = len(rates)
    cells = [[pooled(clients, i, k) for k in range(n)] for i in range(n)]
    real_acc, real_loss = [cells[k][k][0] for k in range(n)], [cells[k][k][1] for k in range(n)]
    per_client = {"accuracy": [0] * n, "loss": [0] * n}
    for c in clients:
        diag = [c["scores"][k][k] for k in range(n)]
        per_client["accuracy"][pick([d[1] for d in diag], max)] += 1
        per_client["loss"][pick([d[0] for d in diag], min)] += 1
    linearised = {}
    for i, lr in enumerate(rates):  # the step head's sweep from rate lr: its loss-optimal multiple
        k = pick([cells[i][k][1] for k in range(n)], min)
        linearised[f"{lr:g}"] = {"picks": rates[k], "loss": [round(cells[i][k][1], 4) for k in range(n)],
                                 "accuracy": [round(cells[i][k][0], 4) for k in range(n)]}
    return {"rates": rates, "clients": len(clients),
            "real": {"accuracy": [round(v, 4) for v in real_acc], "loss": [round(v, 4) for v in real_loss]},
            "pool_picks": {"by_accuracy": rates[pick(real_acc, max)], "by_loss": rates[pick(real_loss, min)]},
            "clients_picking": {k: {f"{r:g}": v for r, v in zip(rates, c, strict=True)} for k, c in per_client.items()},
            "linearised_from": linearised,
            "per_client_geomean": {k: math.exp(sum(math.log(r) * v for r, v in zip(rates, c, strict=True)) / len(clients))
                                   for k, c in per_client.items()}}


def main(argv: list[str] | None = None) -> int:
    ap = add_options(argparse.ArgumentParser(description=__doc__.splitlines()[0]),
                     REPO / "benchmarks" / "results" / "step_targets.json")
    ap.add_argument("config")
    ap.add_argument("--base", default="off-the-shelf", help="a base-model folder (default: the model as published)")
    ap.add_argument("--pool", default="seen")
    ap.add_argument("--clients", type=int, default=16, help="clients of the pool, one per language first")
    ap.add_argument("--rates", type=float, nargs="+", default=[3e-4, 1e-3, 3e-3, 1e-2])
    ap.add_argument("--budget", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--val-fraction", type=float, default=0.2)
    args = ap.parse_args(argv)
    cfg = bench_config(REPO / args.config, args)
    bench = open_bench(cfg, args.base, args.seed)
    if bench.problem.name != "classification":
        raise SystemExit(f"{args.config}: step_targets.py measures classification (accuracy) configs")
    by_language: dict[str, list] = {}
    for c in bench.federation.pool(args.pool):
        by_language.setdefault(c.language, []).append(c)
    rounds = max(len(v) for v in by_language.values())  # one client per language first, then the next of each
    chosen = [v[j] for j in range(rounds) for v in by_language.values() if j < len(v)][:args.clients]
    tasks = client_tasks(chosen, bench.tokenizer, cfg.data.max_length, bench.problem)
    recipe = cfg.personalise.recipe
    clients = []
    for i, task in enumerate(tasks):
        if len(task.train) < 2:
            continue
        clients.append(client_sweep(bench.base, task, sorted(args.rates), args.budget, recipe,
                                    args.seed * 100_003 + i, args.val_fraction, cfg.personalise.eval_batch_size))
        print(f"{task.client_id}: done ({len(clients)}/{len(tasks)})", flush=True)
    result = {"config": args.config, "base": str(args.base), "pool": args.pool, "budget": args.budget,
              "sets": args.sets, "fast": args.fast, **summarise(clients, sorted(args.rates)), "per_client": clients}
    rates = result["rates"]
    print("rate      real acc  real loss  | linearised from the rate below: acc  loss")
    for k, r in enumerate(rates):
        below = result["linearised_from"][f"{rates[k - 1]:g}"] if k else None
        lin = f"{100 * below['accuracy'][k]:5.1f}  {below['loss'][k]:.4f}" if below else "   –      –"
        print(f"{r:<9g} {100 * result['real']['accuracy'][k]:5.1f}     {result['real']['loss'][k]:.4f}     | {lin}")
    print(f"pool picks: by accuracy {result['pool_picks']['by_accuracy']:g}, by loss {result['pool_picks']['by_loss']:g}; "
          "linearised (loss) from each rate: " + ", ".join(f"{k} -> {v['picks']:g}" for k, v in result["linearised_from"].items()))
    if args.out is not None:
        write_result(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
