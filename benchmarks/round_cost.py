"""Seconds of one client's federated round for each named stage, against the PSG's round measured in the
same run (issue 26: a step-learning round may cost ~2× a PSG round; FedL2P's round, 7.66× with the
authors' settings, decides whether it is affordable).

Every stage runs through the registry's own pieces (client settings from the config, the initial state
— with the needed stage's under its prefix —, ``client_update``) on the same clients of the seen pool
and the same base model, one after another in this process, at the config's thread count.

    .venv/bin/python benchmarks/round_cost.py benchmarks/masakhanews_paper.toml \
        --base benchmarks/results/masakhanews_paper_replicates/federation0/base_model/model \
        --stages psg,fedp2eft-step,fedl2p,fedl2p-paper --clients 2 [--set section.key=value ...] [--out FILE]

``--base off-the-shelf`` uses the configured model as published. Prints seconds per client round and
the ratio to ``psg``; ``--out`` writes them as JSON.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from fedp2eft.benchkit import client_round
from fedp2eft.config import load_config
from fedp2eft.errors import UserError
from fedp2eft.methods.registry import get_stage
from fedp2eft.setup.base_models import load_base
from fedp2eft.setup.federation import client_tasks, load_federation, task_for


def measure(cfg, base, tasks, names: list[str], budget: int) -> dict:
    out = {}
    for name in names:
        seconds = [client_round(name, cfg, base, task, budget, seed=1000 + i) for i, task in enumerate(tasks)]
        out[name] = {"seconds_per_client": sum(seconds) / len(seconds), "clients": len(seconds),
                     "rows": [len(t.train) for t in tasks]}
    if "psg" in out:
        for r in out.values():
            r["ratio_to_psg"] = r["seconds_per_client"] / out["psg"]["seconds_per_client"]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("--base", default="off-the-shelf", help="a base-model folder, or off-the-shelf")
    ap.add_argument("--stages", default="psg,fedp2eft-step,fedl2p")
    ap.add_argument("--clients", type=int, default=2, help="seen clients timed per stage (the largest first)")
    ap.add_argument("--budget", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], dest="sets", help="section.key=value")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config, args.sets)
        if cfg.experiment.threads:
            torch.set_num_threads(cfg.experiment.threads)
        names = [s for s in args.stages.split(",") if s]
        for name in names:
            get_stage(name)
        fed = load_federation(cfg)
        base, tok = load_base(cfg, args.base, len(fed.label_names), 0)
        seen = sorted(fed.pool("seen"), key=lambda c: -len(c.train))[: args.clients]
        tasks = client_tasks(seen, tok, cfg.data.max_length, task_for(cfg))
        result = measure(cfg, base, tasks, names, args.budget)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name, r in result.items():
        ratio = f", {r['ratio_to_psg']:.2f}x the PSG's" if "ratio_to_psg" in r else ""
        print(f"{name:16s} {r['seconds_per_client']:8.1f} s per client round{ratio}")
    if args.out is not None:
        from fedp2eft.atomic import write_json

        write_json(args.out, {"config": args.config, "base": args.base, "sets": args.sets,
                              "threads": torch.get_num_threads(), "stages": result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
