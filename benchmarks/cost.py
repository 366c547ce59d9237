"""Cost of FedP²EFT on one client (FedP²EFT Table 6 analogue): the config's model on its largest seen client.

1. One federated round on one client: FedP²EFT's PSG round (features, BT-LoRA stage 1 at r_init, the L1
   regression steps) vs plain LoRA fine-tuning of the same rows at rank r_init: latency and peak RSS, each
   measured in a fresh process.
2. One training step of BT-LoRA vs one of peft LoRA at rank r_init (median over steps; target ratio <= 1.10).
3. The PSG payload (what a FedP²EFT client sends per round) as % of the base model's parameters.
4. One federated round on the same client of FedL2P (paper Table 6: FedP²EFT 8.3x faster) and of PF2LoRA at
   the budget, with their payloads.

Every round runs through the registered stage with the config's settings (``fedp2eft.benchkit``).

    .venv/bin/python benchmarks/cost.py [CONFIG] [--base off-the-shelf] [--rows 0 (all)] [--budget 2] [--steps 20]
        [--only fedl2p,pf2lora] [--set section.key=value ...] [--out benchmarks/results/cost.json]
    .venv/bin/python benchmarks/cost.py --fast --out /tmp/cost.json   # tiny-bert, a few rows and steps

Writes ``--out`` (``--only`` re-measures the named client rounds and keeps the rest of the file).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROUNDS = {"lora": None, "fedp2eft": "psg", "fedl2p": "fedl2p", "pf2lora": "pf2lora"}  # what -> stage


def client_task(bench, rows: int):
    """The largest seen client, its train rows capped at ``rows``."""
    from dataclasses import replace

    task = bench.tasks("seen", 1, largest_first=True)[0]
    return replace(task, train=task.train.subset(list(range(min(rows or len(task.train), len(task.train))))))


def child(args, cfg) -> dict:
    """One client round of ``args.child`` in this (fresh) process: seconds and peak RSS."""
    from fedp2eft import benchkit

    bench = benchkit.open_bench(cfg, args.base)
    task = client_task(bench, args.rows)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    stage = ROUNDS[args.child]
    if stage is None:
        secs = benchkit.personalise_seconds("lora", cfg, bench.base, task, cfg.fedp2eft.prior.r_init)
    else:
        secs = benchkit.client_round(stage, cfg, bench.base, task, args.budget)
    return {"seconds": secs, "rows": len(task.train), "client": task.client_id,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "rss_before_mib": before / 1024}


def without_option(argv: list[str], option: str) -> list[str]:
    """``argv`` without ``option VALUE`` and ``option=VALUE``."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == option:
            skip = True
        elif not a.startswith(option + "="):
            out.append(a)
    return out


def client_round(what: str, argv: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, *argv, "--child", what], capture_output=True, text=True,
                         timeout=3600)
    if out.returncode != 0:
        raise SystemExit(f"{what} client round failed: {out.stderr.strip()[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def step_times(cfg, bench, task, steps: int) -> dict:
    """Median seconds of one training step, BT-LoRA vs peft LoRA, at rank r_init on one batch of the client."""
    import copy

    import torch
    from peft import LoraConfig, get_peft_model

    from fedp2eft.adapters import bt_penalty
    from fedp2eft.adapters.bt_lora import bt_lora_config
    from fedp2eft.training.loop import model_inputs

    rank = cfg.fedp2eft.prior.r_init
    targets = bench.problem.adapted_modules(bench.base, cfg.personalise.recipe.head)
    batch = task.train.batch(list(range(min(len(task.train), cfg.fedp2eft.batch_size))))
    models = {
        "lora": get_peft_model(copy.deepcopy(bench.base), LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets)),
        "bt_lora": get_peft_model(copy.deepcopy(bench.base), bt_lora_config(targets, r=rank, lora_alpha=2 * rank)),
    }
    times: dict[str, list[float]] = {k: [] for k in models}
    opts = {k: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4) for k, m in models.items()}
    for i in range(steps + 3):
        for name in (("lora", "bt_lora") if i % 2 == 0 else ("bt_lora", "lora")):
            m = models[name]
            t = time.perf_counter()
            loss = bench.problem.loss(m(**model_inputs(batch)), batch)
            if name == "bt_lora":
                loss = loss + bt_penalty(m, len(task.train))
            opts[name].zero_grad()
            loss.backward()
            opts[name].step()
            if i >= 3:  # warm-up
                times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"rank": rank, "steps": steps, "median_step_s": med, "ratio_bt_over_lora": med["bt_lora"] / med["lora"]}


def payloads(cfg, base, budget: int) -> tuple[dict, dict]:
    from fedp2eft.benchkit import payload

    n_base = sum(p.numel() for p in base.parameters())
    n_psg = payload("psg", cfg, base, budget)
    n_gen, n_pf = payload("fedl2p", cfg, base, budget), payload("pf2lora", cfg, base, budget)
    psg = {"psg_parameters": n_psg, "base_parameters": n_base, "percent": 100 * n_psg / n_base,
           "r_init": cfg.fedp2eft.prior.r_init}
    baseline = {"fedl2p_parameters": n_gen, "fedl2p_percent": 100 * n_gen / n_base,
                "pf2lora_parameters": n_pf, "pf2lora_percent": 100 * n_pf / n_base, "budget": budget}
    return psg, baseline


def main(argv: list[str] | None = None) -> int:
    from fedp2eft import benchkit
    from fedp2eft.errors import UserError

    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", nargs="?", default=str(HERE / "masakhanews_paper.toml"))
    ap.add_argument("--base", default="off-the-shelf", help="a base-model folder, or off-the-shelf")
    ap.add_argument("--rows", type=int, default=0, help="train rows of the client (0: all it has)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--budget", type=int, default=2, help="rank budget FedL2P and PF2LoRA train at")
    ap.add_argument("--only", default="", help=f"comma-separated client rounds to re-measure ({','.join(ROUNDS)})")
    ap.add_argument("--child", choices=list(ROUNDS), help=argparse.SUPPRESS)  # one round, in a fresh process
    args = benchkit.add_options(ap, HERE / "results" / "cost.json").parse_args(argv)
    if args.fast:
        args.rows, args.steps, args.budget = min(args.rows or 8, 8), min(args.steps, 2), 1
    try:
        cfg = benchkit.bench_config(args.config, args)
        if args.child:
            print(json.dumps(child(args, cfg)))
            return 0
        names = [w for w in args.only.split(",") if w] or list(ROUNDS)
        for w in names:
            if w not in ROUNDS:
                raise UserError(f"--only: unknown client round {w!r} (known: {', '.join(ROUNDS)})")
        child_argv = without_option(argv, "--only")
        previous = json.loads(args.out.read_text()) if args.only and args.out.is_file() else {}
        rounds = dict(previous.get("client_round", {}))
        rounds.update({w: client_round(w, child_argv) for w in names})
        bench = benchkit.open_bench(cfg, args.base)
        task = client_task(bench, args.rows)
        steps = step_times(cfg, bench, task, args.steps)
        psg, baseline = payloads(cfg, bench.base, args.budget)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    def ratio(a, b):
        return rounds[a]["seconds"] / rounds[b]["seconds"] if a in rounds and b in rounds else None

    result = {"config": str(args.config), "base": args.base, "sets": args.sets, "fast": args.fast,
              "client_round": rounds, "round_ratio_fedp2eft_over_lora": ratio("fedp2eft", "lora"),
              "round_ratio_fedl2p_over_fedp2eft": ratio("fedl2p", "fedp2eft"),
              "round_ratio_pf2lora_over_lora": ratio("pf2lora", "lora"), "step": steps, "payload": psg,
              "baseline_payloads": baseline, "args": {k: str(v) for k, v in vars(args).items()},
              "measured_together": names}
    benchkit.write_result(args.out, result)
    for w, r in rounds.items():
        print(f"{w:9s} client round ({r['rows']} rows): {r['seconds']:.1f} s, peak RSS {r['peak_rss_mib']:.0f} MiB")
    print(f"training step at r={steps['rank']}: peft LoRA {steps['median_step_s']['lora'] * 1000:.0f} ms, "
          f"BT-LoRA {steps['median_step_s']['bt_lora'] * 1000:.0f} ms, ratio {steps['ratio_bt_over_lora']:.3f} "
          "(target <= 1.10)")
    if result["round_ratio_fedl2p_over_fedp2eft"]:
        print(f"FedL2P / FedP²EFT client-round time: {result['round_ratio_fedl2p_over_fedp2eft']:.2f} (paper: 8.3)")
    print(f"payloads: PSG {psg['psg_parameters']:,} ({psg['percent']:.2f}% of {psg['base_parameters']:,}), "
          f"FedL2P generator {baseline['fedl2p_parameters']:,} ({baseline['fedl2p_percent']:.2f}%), "
          f"PF2LoRA level 1 + head {baseline['pf2lora_parameters']:,} ({baseline['pf2lora_percent']:.2f}%)")
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
