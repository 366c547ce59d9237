"""Learned learning rates beside the validated one (issue 26): for each replicate of a run, the rate per
module type that each rate-learning stage gives the clients of each pool (FedL2P's generator, FedP²EFT's
step head: their ``rate_report.json``), and the rates ``lora-tuned-client`` chose client by client on their own
held-out rows, next to the rate ``lora-tuned`` chose for the pool on held-out train rows.

    .venv/bin/python benchmarks/learned_rates.py benchmarks/results/masakhanews_paper_replicates [--out FILE.json]

Reads ``<root>/results.json`` (lora-tuned's ``selection``) and every ``rate_report.json`` under ``<root>``
(``federation<S>/<stage>/seed<S>/r<B>/`` or ``<stage>/seed<S>/r<B>/``). Prints one markdown table per pool:
rows stage × replicate × module type (geometric mean over clients, range, SD of log10 η over clients: 0 =
one rate for everyone), and the validated rate of the same replicate and budget. Writes the rows as JSON
(default ``<root>/learned_rates.json``).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

from fedp2eft.atomic import write_json

STAGES = ("fedl2p", "fedl2p-paper", "fedp2eft-step", "fedp2eft-sweep", "lora-step")


def replicate_of(path: Path, root: Path) -> tuple[int, int | None]:
    """``(seed, budget)`` of a stage folder: ``[federation<S>/]<stage>/seed<S>/r<B>``."""
    rel = path.relative_to(root).as_posix()
    seed = int(re.search(r"seed(\d+)", rel).group(1))
    fed = re.match(r"federation(\d+)/", rel)
    budget = re.search(r"/r(\d+)(/|$)", rel)
    return (int(fed.group(1)) if fed else seed), (int(budget.group(1)) if budget else None)


def validated(root: Path) -> dict[tuple[str, int, int | None], float]:
    """lora-tuned's chosen rate per (pool, seed, budget)."""
    path = root / "results.json"
    if not path.is_file():
        return {}
    runs = json.loads(path.read_text())["runs"]
    return {(r["pool"], r["seed"], r["budget"]): r["selection"]["lr"] for r in runs
            if r["method"] == "lora-tuned" and "selection" in r}


def per_client_choices(root: Path, chosen: dict) -> list[dict]:
    """One row per ``lora-tuned-client`` run: the per-client rates its selection recorded, summarised as the
    stages' are (module type "all": one rate for every adapter)."""
    path = root / "results.json"
    if not path.is_file():
        return []
    rows = []
    for r in json.loads(path.read_text())["runs"]:
        rates = list(r.get("selection", {}).get("per_client_lr", {}).values())
        if r["method"] != "lora-tuned-client" or not rates:
            continue
        logs = [math.log10(x) for x in rates]
        mean = sum(logs) / len(logs)
        sd = math.sqrt(sum((v - mean) ** 2 for v in logs) / (len(logs) - 1)) if len(logs) > 1 else 0.0
        rows.append({"stage": "lora-tuned-client", "seed": r["seed"], "budget": r["budget"], "pool": r["pool"],
                     "group": "all", "clients": len(rates), "geomean": 10 ** mean, "min": min(rates),
                     "max": max(rates), "sd_log10": sd, "lora_tuned_lr": chosen.get((r["pool"], r["seed"], r["budget"]))})
    return rows


def collect(root: Path) -> list[dict]:
    chosen = validated(root)
    rows = per_client_choices(root, chosen)
    for report in sorted(root.rglob("rate_report.json")):
        folder = report.parent
        stage = next((s for s in STAGES if f"/{s}/" in f"/{folder.relative_to(root).as_posix()}/"), None)
        if stage is None:
            continue
        seed, budget = replicate_of(folder, root)
        data = json.loads(report.read_text())
        for pool, entry in data["pools"].items():
            for group, s in entry["summary"].items():
                rows.append({"stage": stage, "seed": seed, "budget": budget, "pool": pool, "group": group,
                             "clients": len(entry["clients"]), **s,
                             "lora_tuned_lr": chosen.get((pool, seed, budget))})
    return rows


def table(rows: list[dict], pool: str) -> str:
    out = [f"### {pool} pool", "", "| stage | replicate | r | module type | learned η (geomean) | range over clients "
           "| SD log10 η | lora-tuned's η |", "|---|---:|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        if r["pool"] != pool:
            continue
        tuned = f"{r['lora_tuned_lr']:.0e}" if r["lora_tuned_lr"] is not None else "–"
        out.append(f"| {r['stage']} | {r['seed']} | {r['budget']} | {r['group']} | {r['geomean']:.3g} "
                   f"| {r['min']:.3g} – {r['max']:.3g} | {r['sd_log10']:.2g} | {tuned} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if not args.root.is_dir():
        print(f"error: {args.root}: no such run folder", file=sys.stderr)
        return 2
    rows = collect(args.root)
    if not rows:
        print(f"error: {args.root}: no rate_report.json of {', '.join(STAGES)}", file=sys.stderr)
        return 2
    for pool in sorted({r["pool"] for r in rows}):
        print(table(rows, pool) + "\n")
    write_json(args.out or args.root / "learned_rates.json", {"root": str(args.root), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
