"""What a personalised base's client parts are worth: accuracy (mean over languages) of the shared model
alone and of each client's own base (shared + its part), on each pool's test rows, no fine-tuning.

    .venv/bin/python benchmarks/pfl_base_parts.py feddpa-t [dept pf2lora ...] [--root benchmarks/results/xnli_pfl]

Reads ``<root>/<base>/base_model/model`` (written by ``fedp2eft run benchmarks/xnli_pfl.toml``) and
prints one line per base, pool and model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from fedp2eft.bases import FolderBase
from fedp2eft.config import load_config
from fedp2eft.evaluation import LanguageTally, mean_over_languages
from fedp2eft.setup.federation import client_tasks, load_federation, task_for


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bases", nargs="+")
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parent / "results" / "xnli_pfl")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for kind in args.bases:
        folder = args.root / kind / "base_model" / "model"
        cfg = load_config(str(Path(__file__).resolve().parent / "xnli_pfl.toml"), [f"base_model.kind={str(folder)!r}"])
        fed, task = load_federation(cfg), task_for(cfg)
        shared = FolderBase(folder).open(cfg, len(fed.label_names), 0)
        for pool in ("seen", "unseen"):
            tasks = client_tasks(fed.pool(pool), shared.tokenizer, cfg.data.max_length, task)
            for label, own in (("shared model alone", False), ("each client's own base", True)):
                tally = LanguageTally()
                for t in tasks:
                    model = shared.for_client(t.client_id) if own else shared.model
                    tally.add_scores(*t.score(task.predict(model, t.test)))
                print(f"{kind} {pool}: {label} {100 * mean_over_languages(tally.per_language()):.1f}", flush=True)


if __name__ == "__main__":
    main()
