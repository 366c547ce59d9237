"""Does taking module width out of the rank selection give clients their own structure? (issue 26, item 4)

Reads the every-client λ a PSG stage reported (``lambdas_<pool>.safetensors`` and ``lambda_report.json``
in its folder, written whenever a run uses the PSG) and, for the budget r, compares two selections of
the global top-(r·L) ranks:

- ``lambda``: the PSG's λ as it is (FedP²EFT, Alg. 2);
- ``width-free``: λ·√(d̄/d_out) (``methods.bt_training.width_free_scores``; method ``fedp2eft-widthfree``).

Per pool and selection it prints and writes: the share of kept ranks per module type (mean over clients),
how many distinct structures (sets of kept (module, rank) pairs) the clients get, the mean Jaccard overlap
of two clients' structures, within a language and between languages. λ itself is unchanged by the
selection, so its client share (``lambda_client_signal.py``) is unchanged too; what can change is whether
the module-type gap still outweighs the client's own part of λ.

    .venv/bin/python benchmarks/width_free_structure.py benchmarks/results/masakhanews_paper/psg/seed0 \
        [--budget 2] [--model e5-small] [--num-labels 7] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections import Counter
from pathlib import Path

import torch
from safetensors.torch import load_file

from fedp2eft.adapters import select_ranks
from fedp2eft.errors import UserError
from fedp2eft.methods.fedp2eft.training import module_widths, width_free_scores
from fedp2eft.models import load_classifier
from fedp2eft.psg.module_types import module_type


def structure(index: dict[str, torch.Tensor]) -> frozenset:
    return frozenset((n, int(i)) for n, ids in index.items() for i in ids.tolist())


def jaccard(a: frozenset, b: frozenset) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def summarise(structures: dict[str, frozenset], languages: dict[str, str]) -> dict:
    """Type shares, distinct structures and within/between-language overlap of the clients' structures."""
    shares: Counter = Counter()
    for s in structures.values():
        for n, _ in s:
            shares[module_type(n)] += 1 / len(s)
    within, between = [], []
    for a, b in itertools.combinations(sorted(structures), 2):
        (within if languages[a] == languages[b] else between).append(jaccard(structures[a], structures[b]))
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    return {"clients": len(structures), "distinct_structures": len(set(structures.values())),
            "type_share": {k: v / len(structures) for k, v in sorted(shares.items())},
            "jaccard_within_language": mean(within), "jaccard_between_languages": mean(between)}


def analyse(folder: Path, budget: int, model: str, num_labels: int) -> dict:
    report_file = folder / "lambda_report.json"
    if not report_file.is_file():
        raise UserError(f"{report_file}: missing (a run that uses this PSG writes it)")
    names = json.loads(report_file.read_text())["modules"]
    base, _ = load_classifier(model, num_labels)  # the classifier's width is the number of labels
    try:
        widths = module_widths(base, names)
    except AttributeError as exc:
        raise UserError(f"{folder}: its modules do not belong to model {model!r} ({exc})") from None
    out = {"folder": str(folder), "budget": budget, "model": model,
           "widths": dict(sorted(Counter(widths.values()).items())), "pools": {}}
    for path in sorted(folder.glob("lambdas_*.safetensors")):
        pool = path.stem.removeprefix("lambdas_")
        lams = load_file(str(path))
        languages = {cid: cid.split("-")[0] for cid in lams}
        per = {}
        for how in ("lambda", "width-free"):
            structures = {}
            for cid, lam in lams.items():
                by_module = {n: lam[i] for i, n in enumerate(names)}
                scores = width_free_scores(by_module, widths) if how == "width-free" else by_module
                structures[cid] = structure(select_ranks(scores, budget))
            per[how] = summarise(structures, languages)
        out["pools"][pool] = per
    if not out["pools"]:
        raise UserError(f"{folder}: no lambdas_<pool>.safetensors")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+", type=Path, help="PSG stage folders (e.g. .../psg/seed0)")
    ap.add_argument("--budget", type=int, default=2)
    ap.add_argument("--model", default="e5-small")
    ap.add_argument("--num-labels", type=int, default=7, help="the classifier's width (MasakhaNEWS: 7)")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    try:
        results = [analyse(f, args.budget, args.model, args.num_labels) for f in args.folders]
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for r in results:
        print(f"{r['folder']} (r = {r['budget']}; module widths {r['widths']})")
        for pool, per in r["pools"].items():
            for how, s in per.items():
                top = ", ".join(f"{k} {100 * v:.0f}%" for k, v in sorted(s["type_share"].items(), key=lambda x: -x[1]))
                print(f"  {pool:6s} {how:10s}: {s['distinct_structures']:2d} structures over {s['clients']} clients; "
                      f"Jaccard within language {s['jaccard_within_language']:.3f}, between "
                      f"{s['jaccard_between_languages']:.3f}; kept ranks: {top}")
    if args.out is not None:
        from fedp2eft.atomic import write_json

        write_json(args.out, {"results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
