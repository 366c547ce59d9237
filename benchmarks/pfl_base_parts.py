"""What a personalised base's client parts are worth: accuracy (mean over languages) of the shared model
alone and of each client's own base (shared + its part), on each pool's test rows, no fine-tuning.

    .venv/bin/python benchmarks/pfl_base_parts.py feddpa-t [dept pf2lora ...] [--root benchmarks/results/xnli_pfl]
        [--config benchmarks/xnli_pfl.toml] [--set section.key=value ...] [--out FILE.json]

Reads ``<root>/<base>/base_model/model`` (written by ``fedp2eft run benchmarks/xnli_pfl.toml``), prints one
line per base, pool and model, and writes them to ``--out`` (default ``<root>/pfl_base_parts.json``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from fedp2eft.bases import FolderBase
from fedp2eft.benchkit import add_options, bench_config, write_result
from fedp2eft.evaluation import LanguageTally, mean_over_languages
from fedp2eft.setup.federation import client_tasks, load_federation, task_for

HERE = Path(__file__).resolve().parent
MODELS = {"shared model alone": False, "each client's own base": True}


def base_parts(cfg, folder: Path) -> dict:
    """``{pool: {model: mean accuracy over languages}}`` of one personalised base folder."""
    fed, task = load_federation(cfg), task_for(cfg)
    shared = FolderBase(folder).open(cfg, len(fed.label_names), 0)
    out: dict = {}
    with torch.no_grad():
        for pool in ("seen", "unseen"):
            tasks = client_tasks(fed.pool(pool), shared.tokenizer, cfg.data.max_length, task)
            for label, own in MODELS.items():
                tally = LanguageTally()
                for t in tasks:
                    model = shared.for_client(t.client_id) if own else shared.model
                    tally.add_scores(*t.score(task.predict(model, t.test)))
                out.setdefault(pool, {})[label] = mean_over_languages(tally.per_language())
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bases", nargs="+")
    ap.add_argument("--root", type=Path, default=HERE / "results" / "xnli_pfl")
    ap.add_argument("--config", type=Path, default=HERE / "xnli_pfl.toml")
    args = add_options(ap).parse_args(argv)
    result: dict = {"config": str(args.config), "sets": args.sets, "bases": {}}
    for kind in args.bases:
        folder = args.root / kind / "base_model" / "model"
        if not folder.is_dir():
            print(f"error: {folder}: no base model (run {args.config} with base_model.kind = {kind!r})", file=sys.stderr)
            return 2
        cfg = bench_config(args.config, args, [f"base_model.kind={json.dumps(str(folder))}"])
        result["bases"][kind] = base_parts(cfg, folder)
        for pool, models in result["bases"][kind].items():
            for label, acc in models.items():
                print(f"{kind} {pool}: {label} {100 * acc:.1f}", flush=True)
    write_result(args.out or args.root / "pfl_base_parts.json", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
