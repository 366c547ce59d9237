"""Merge the XNLI base-model runs (one output folder per base, ``benchmarks/xnli_pfl.toml``) into one
results file in the shape of the paper's Table 3 (rows: base model × method; columns: seen and unseen
pools; mean accuracy over languages, ± SD over seeds).

    .venv/bin/python benchmarks/xnli_pfl.py [--root benchmarks/results/xnli_pfl]

Writes ``<root>/results.json`` (every run, each naming its base in ``base_kind``; each base's config and
base-model record under ``bases``) and ``<root>/results.md``. A base folder without results is left
out with a note; a run's base comes from its own ``base_kind`` or, for runs written before runs
recorded it, from its folder's config. Runs in ``<root>/head-only/<base>/`` (the same base model with
``none.trains_head = true``: the head alone trained on each client) appear as method
``head-only``. Per base, the analysis part gives FedP²EFT − LoRA per language and the PSG's λ: its
spread and where the top-(r·L) ranks go by module type.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fedp2eft.atomic import write_json, write_text
from fedp2eft.evaluation.aggregate import summarise

BASES = {"standard-fl": "Standard FL", "feddpa-t": "FedDPA-T", "dept": "DEPT (SPEC)", "pf2lora": "PF2LoRA"}
METHODS = ["none", "head-only", "lora", "lora-tuned", "adalora", "bt-lora", "fedl2p", "pf2lora", "fedp2eft"]
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
        probe = root / "head-only" / kind / "results.json"
        if probe.is_file():
            for run in json.loads(probe.read_text())["runs"]:
                merged["runs"].append({**run, "method": "head-only", "base_kind": kind})
    return merged


def majority_label(config: dict) -> dict[str, float]:
    """Mean accuracy over languages of predicting, on each client's test rows, its most frequent train
    label: the label prior the clients' Dirichlet skew gives away (no model)."""
    from collections import Counter

    from fedp2eft.config import from_dict
    from fedp2eft.setup.federation import load_federation

    fed = load_federation(from_dict(config))
    out = {}
    for pool in ("seen", "unseen"):
        per: dict[str, list[int]] = {}
        for c in fed.pool(pool):
            major = Counter(e.label for e in c.train).most_common(1)[0][0]
            hit = per.setdefault(c.language, [0, 0])
            hit[0] += sum(e.label == major for e in c.test)
            hit[1] += len(c.test)
        out[pool] = sum(a / b for a, b in per.values()) / len(per)
    return out


def paired(merged: dict, kind: str, pool: str, a: str = "fedp2eft", b: str = "lora") -> str:
    """``a − b`` per language (percentage points): mean, how many languages each way, and the range."""
    runs = {r["method"]: r for r in merged["runs"] if r["base_kind"] == kind and r["pool"] == pool and r["seed"] == 0}
    if a not in runs or b not in runs:
        return "–"
    pa, pb = runs[a]["per_language"], runs[b]["per_language"]
    d = [100 * (pa[k]["value"] - pb[k]["value"]) for k in pa if k in pb]
    wins, losses = sum(x > 0 for x in d), sum(x < 0 for x in d)
    return f"{sum(d) / len(d):+.1f} ({wins} up / {losses} down of {len(d)}; {min(d):+.1f} … {max(d):+.1f})"


def lambda_summary(root: Path, kind: str, budget: int = 2) -> str:
    """The PSG's λ over the unseen clients: its range, and the share of the top-(r·L) ranks per module type."""
    import torch
    from safetensors.torch import load_file

    from fedp2eft.psg.module_types import module_type

    folder = root / kind / "psg" / "seed0"
    if not (folder / "lambdas_unseen.safetensors").is_file():
        return "–"
    names = json.loads((folder / "lambda_report.json").read_text())["modules"]
    lams = load_file(str(folder / "lambdas_unseen.safetensors"))
    shares: dict[str, float] = {}
    for lam in lams.values():  # modules x ranks, one client
        keep = lam.flatten().topk(budget * lam.shape[0]).indices // lam.shape[1]
        for i in keep.tolist():
            shares[module_type(names[i])] = shares.get(module_type(names[i]), 0) + 1 / (len(keep) * len(lams))
    stack = torch.stack(list(lams.values()))
    spread = f"λ {stack.min():.4f} … {stack.max():.4f}"
    return spread + "; ranks kept: " + ", ".join(f"{t} {100 * v:.0f}%" for t, v in sorted(shares.items(), key=lambda x: -x[1]))


def table(merged: dict, root: Path) -> str:
    lines = ["# XNLI, FedP²EFT and the baselines on four base models (r = 2)", "", merged["note"], "",
             "Mean accuracy over languages, % (one seed; with several: ± SD over seeds, n = seeds).", "",
             "| base model | method | seen | unseen |", "|---|---|---:|---:|"]
    if merged["bases"]:
        prior = majority_label(next(iter(merged["bases"].values()))["config"])
        merged["majority_label"] = prior
        lines.append(f"| (no model) | each client's majority train label | {100 * prior['seen']:.1f} | "
                     f"{100 * prior['unseen']:.1f} |")
    for kind, label in BASES.items():
        runs = [r for r in merged["runs"] if r["base_kind"] == kind]
        if not runs:
            continue
        summary = summarise(runs)
        for method in METHODS:
            cells = []
            for pool in ("seen", "unseen"):
                row = summary.get((pool, 2, method)) or summary.get((pool, None, method))
                m, sd, n = row["mean"] if row else (0.0, 0.0, 0)
                cells.append("–" if not row else f"{100 * m:.1f} ± {100 * sd:.1f} (n={n})" if n >= 2 else f"{100 * m:.1f}")
            if any(c != "–" for c in cells):
                lines.append(f"| {label} | {method} | {cells[0]} | {cells[1]} |")
        meta = merged["bases"][kind]["base_model"]
        if meta.get("unseen"):
            lines.append(f"| {label} | *clients with a part* | {meta['clients_with_parts']} of "
                         f"{meta['seen_clients']} seen | 0 (unseen: {meta['unseen']}) |")
    lines += ["", "## FedP²EFT − LoRA per language (seed 0, percentage points), and the PSG's λ", "",
              "| base model | seen | unseen | λ over unseen clients; where the r = 2 ranks go |", "|---|---|---|---|"]
    for kind, label in BASES.items():
        if kind in merged["bases"]:
            lines.append(f"| {label} | {paired(merged, kind, 'seen')} | {paired(merged, kind, 'unseen')} | "
                         f"{lambda_summary(root, kind)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parent / "results" / "xnli_pfl")
    args = ap.parse_args(argv)
    merged = merge(args.root)
    if not merged["runs"]:
        print(f"error: no runs under {args.root}", file=sys.stderr)
        return 2
    text = table(merged, args.root)
    write_json(args.root / "results.json", merged)
    write_text(args.root / "results.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
