"""How the PSG's λ develops over federated rounds: for PSG states saved every few rounds (the
run's checkpoints, copied aside while it trains, since a run keeps only its latest), the λ it
generates for the benchmark's unseen clients — mean, and SD over ranks / modules / clients.

    .venv/bin/python benchmarks/psg_trajectory.py STATE.safetensors... [--out FILE.json]

Used for the longer-PSG experiment of BENCHMARKS.md (states ``state-000NN.safetensors``, round NN).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file

from fedp2eft.atomic import write_json
from fedp2eft.config import load_config
from fedp2eft.methods.fedp2eft import new_psg
from fedp2eft.models import load_classifier
from fedp2eft.psg import feature_modules, meta_features
from fedp2eft.setup.federation import client_tasks, load_federation

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("states", nargs="+")
    ap.add_argument("--config", default=str(HERE / "masakhanews_small.toml"))
    ap.add_argument("--base", default=str(HERE / "results" / "masakhanews_small" / "base_model" / "model"))
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    torch.set_num_threads(2)
    cfg = load_config(args.config)
    fed = load_federation(cfg)
    base, tok = load_classifier(args.base, len(fed.label_names))
    tasks = client_tasks(fed.pool("unseen"), tok, cfg.data.max_length)
    names = feature_modules(base)
    feats = [meta_features(base, t.train) for t in tasks]  # once per client: they do not depend on the PSG
    rows = []
    for path in sorted(args.states):
        psg = new_psg(base, cfg.fedp2eft.r_init)
        psg.load_state_dict(load_file(path))
        lam = torch.stack([torch.stack(list(psg.lambdas(f, names).values())) for f in feats]).double()
        m = re.search(r"(\d+)", Path(path).stem)
        row = {"state": Path(path).name, "round": int(m.group(1)) if m else None, "mean": float(lam.mean()),
               "sd_over_ranks": float(lam.std(-1).mean()), "sd_over_modules": float(lam.mean(-1).std(-1).mean()),
               "sd_over_clients": float(lam.std(0).mean())}
        row["cv_over_ranks"] = row["sd_over_ranks"] / row["mean"]
        rows.append(row)
        print(json.dumps(row))
    if args.out:
        write_json(args.out, {"clients": len(tasks), "pool": "unseen", "states": rows})


if __name__ == "__main__":
    main()
