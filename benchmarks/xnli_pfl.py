"""Merge the XNLI base-model runs (one output folder per base, ``benchmarks/xnli_pfl.toml``) into one
results file in the shape of the paper's Table 3 (rows: base model × method; columns: seen and unseen
pools; mean accuracy over languages, ± SD over seeds).

    .venv/bin/python benchmarks/xnli_pfl.py [--root benchmarks/results/xnli_pfl]

Writes ``<root>/results.json`` (every run, each naming its base in ``base_kind``; each base's config and
base-model record under ``bases``) and ``<root>/results.md``. A base folder without results is left
out with a note; a run's base comes from its own ``base_kind`` or, for runs written before runs
recorded it, from its folder's config.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fedp2eft.atomic import write_json
from fedp2eft.evaluation.aggregate import summarise

BASES = {"standard-fl": "Standard FL", "feddpa-t": "FedDPA-T", "dept": "DEPT (SPEC)", "pf2lora": "PF2LoRA"}
METHODS = ["none", "lora", "lora-tuned", "adalora", "bt-lora", "fedl2p", "pf2lora", "fedp2eft"]
DEVIATION = ("XNLI rows: the shared copy has no train split, so each language's training rows come from dev "
             "and the first part of test and its test rows from the rest of test, premise groups whole "
             "(the paper trains on machine-translated MultiNLI); reduced setup, see benchmarks/xnli_pfl.toml.")


def merge(root: Path) -> dict:
    merged: dict = {"metric": "accuracy", "note": DEVIATION, "bases": {}, "runs": []}
    for kind in BASES:
        path = root / kind / "results.json"
        if not path.is_file():
            print(f"{path}: no results yet, left out", file=sys.stderr)
            continue
        res = json.loads(path.read_text())
        meta_file = root / kind / "base_model" / "model" / "fedp2eft_classifier.json"
        meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
        merged["bases"][kind] = {"config": res["config"], "base_model": meta, "environment": res.get("environment")}
        for run in res["runs"]:
            run_kind = run.get("base_kind", res["config"]["base_model"]["kind"])
            if run_kind != kind:
                raise SystemExit(f"{path}: a run of base {run_kind!r} in the {kind!r} folder")
            merged["runs"].append({**run, "base_kind": kind})
    return merged


def table(merged: dict) -> str:
    lines = ["# XNLI, FedP²EFT and the baselines on four base models (r = 2)", "", merged["note"], "",
             "Mean accuracy over languages, % (± SD over seeds; n = seeds).", "",
             "| base model | method | seen | unseen |", "|---|---|---:|---:|"]
    for kind, label in BASES.items():
        runs = [r for r in merged["runs"] if r["base_kind"] == kind]
        if not runs:
            continue
        summary = summarise(runs)
        for method in METHODS:
            cells = []
            for pool in ("seen", "unseen"):
                row = summary.get((pool, 2, method)) or summary.get((pool, None, method))
                cells.append(f"{100 * row['mean'][0]:.1f} ± {100 * row['mean'][1]:.1f} (n={row['mean'][2]})"
                             if row else "–")
            if any(c != "–" for c in cells):
                lines.append(f"| {label} | {method} | {cells[0]} | {cells[1]} |")
        meta = merged["bases"][kind]["base_model"]
        if meta.get("unseen"):
            lines.append(f"| {label} | *clients with a part* | {meta['clients_with_parts']} of "
                         f"{meta['seen_clients']} seen | 0 (unseen: {meta['unseen']}) |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parent / "results" / "xnli_pfl")
    args = ap.parse_args()
    merged = merge(args.root)
    if not merged["runs"]:
        raise SystemExit(f"no runs under {args.root}")
    write_json(args.root / "results.json", merged)
    text = table(merged)
    tmp = args.root / "results.md.tmp"
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(args.root / "results.md")
    print(text)


if __name__ == "__main__":
    main()
