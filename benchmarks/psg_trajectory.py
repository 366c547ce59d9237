"""How the PSG's λ develops over federated rounds: for PSG states saved every few rounds (a run's
snapshots, ``[fedp2eft] snapshot_every``, or checkpoints copied aside while it trains), the λ it generates
for the benchmark's unseen clients — mean, and SD over ranks / modules / clients.

    .venv/bin/python benchmarks/psg_trajectory.py STATE.safetensors... [--config benchmarks/masakhanews_small.toml]
        [--base benchmarks/results/masakhanews_small/base_model/model] [--set section.key=value ...] [--out FILE.json]

Used for the longer-PSG experiment of BENCHMARKS.md (states ``state-000NN.safetensors``, round NN).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from fedp2eft.benchkit import add_options, bench_config, open_bench, write_result
from fedp2eft.methods.fedp2eft import PSG_STAGE
from fedp2eft.psg import feature_modules, meta_features
from fedp2eft.setup.federation import stage_context

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("states", nargs="+", type=Path)
    ap.add_argument("--config", type=Path, default=HERE / "masakhanews_small.toml")
    ap.add_argument("--base", default=str(HERE / "results" / "masakhanews_small" / "base_model" / "model"),
                    help="a base-model folder, or off-the-shelf")
    args = add_options(ap).parse_args(argv)
    missing = [p for p in args.states if not p.is_file()]
    if missing:
        print(f"error: {missing[0]}: no such PSG state", file=sys.stderr)
        return 2
    cfg = bench_config(args.config, args)
    bench = open_bench(cfg, "off-the-shelf" if args.fast else args.base)
    tasks = bench.tasks("unseen")
    head = cfg.personalise.recipe.head
    names = feature_modules(bench.base, head)
    feats = [meta_features(bench.base, t.train, head=head) for t in tasks]  # they do not depend on the PSG
    settings = PSG_STAGE.client_settings(cfg)
    rows = []
    for path in sorted(args.states):
        psg = PSG_STAGE.finalize(bench.base, load_file(str(path)), settings, path.parent, stage_context(cfg, 0))
        with torch.no_grad():
            lam = torch.stack([torch.stack(list(psg.lambdas(f, names).values())) for f in feats]).double()
        m = re.search(r"(\d+)", path.stem)
        row = {"state": path.name, "round": int(m.group(1)) if m else None, "mean": float(lam.mean()),
               "sd_over_ranks": float(lam.std(-1).mean()), "sd_over_modules": float(lam.mean(-1).std(-1).mean()),
               "sd_over_clients": float(lam.std(0).mean())}
        row["cv_over_ranks"] = row["sd_over_ranks"] / row["mean"]
        rows.append(row)
        print(json.dumps(row))
    if args.out:
        write_result(args.out, {"clients": len(tasks), "pool": "unseen", "states": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
