"""Diagnostic for the MasakhaNEWS finding: how much rank structure does BT-LoRA's λ develop on one
client within a given number of local steps? Trains stage 1 (eq. 1, the config's ``[fedp2eft]``
settings) from λ = 1e-4 on the first seen client of one language and prints the spread of λ.

    .venv/bin/python benchmarks/lambda_structure.py [--config benchmarks/masakhanews_small.toml]
        [--base benchmarks/results/masakhanews_small/base_model/model] [--language yor] [--rows 64]
        [--epochs 2,8] [--set section.key=value ...] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import torch

from fedp2eft.benchkit import add_options, bench_config, open_bench, write_result
from fedp2eft.methods.fedp2eft.training import train_lambdas

HERE = Path(__file__).resolve().parent


def spread(lam: dict[str, torch.Tensor]) -> dict:
    """λ's mean and its spread: overall, over ranks (within a module) and over modules."""
    x = torch.stack(list(lam.values())).double()
    return {"mean": float(x.mean()), "sd": float(x.std()), "cv": float(x.std() / x.mean()),
            "sd_over_ranks": float(x.std(1).mean()), "sd_over_modules": float(x.mean(1).std()),
            "min": float(x.min()), "max": float(x.max())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, default=HERE / "masakhanews_small.toml")
    ap.add_argument("--base", default=str(HERE / "results" / "masakhanews_small" / "base_model" / "model"),
                    help="a base-model folder, or off-the-shelf")
    ap.add_argument("--language", default="yor")
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--epochs", default=None, help="comma-separated local epochs (default 2,8; --fast: 1)")
    args = add_options(ap).parse_args(argv)
    if args.fast:
        args.base, args.rows = "off-the-shelf", min(args.rows, 8)
    epochs_list = args.epochs or ("1" if args.fast else "2,8")
    cfg = bench_config(args.config, args, [f'data.languages=["{args.language}"]'])
    bench = open_bench(cfg, args.base)
    task = bench.tasks("seen", 1)[0]
    data = task.train.subset(list(range(min(args.rows, len(task.train)))))
    bt = cfg.fedp2eft.bt_settings(cfg.personalise)
    rows = []
    for epochs in map(int, epochs_list.split(",")):
        lam, losses = train_lambdas(bench.base, data, 1e-4, replace(bt, recipe=replace(bt.recipe, epochs=epochs)), 0,
                                    bench.problem)
        row = {"rows": len(data), "epochs": epochs, "steps": len(losses), **spread(lam)}
        rows.append(row)
        print(f"{row['rows']} rows, {epochs} epochs = {row['steps']} steps: λ mean {row['mean']:.4f}, SD {row['sd']:.4f} "
              f"(CV {row['cv']:.3f}), SD over ranks {row['sd_over_ranks']:.5f}, SD over modules "
              f"{row['sd_over_modules']:.5f}, range [{row['min']:.4f}, {row['max']:.4f}]")
    if args.out:
        write_result(args.out, {"config": str(args.config), "base": args.base, "client": task.client_id,
                                "sets": args.sets, "results": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
