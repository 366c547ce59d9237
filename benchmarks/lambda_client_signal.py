"""How much of FedP²EFT's λ is the client's own, and how much is the module's width (issue 10)?

Reads a PSG stage's ``rounds.jsonl`` (one record per federated round, with each sampled client's
stage-1 result: ``lambda_hat_mean`` — the PSG's λ̂ for that client — and ``lambda_mean`` /
``lambda_mean_<module type>`` — the λ its local BT-LoRA training (paper eq. 1) ended with, i.e. the
PSG's regression target) and separates three sizes:

- **per-visit move**: λ − λ̂ of one client visit (what stage 1 adds to the PSG's guess);
- **client signal**: each client's λ relative to the mean of the clients sampled in the same round
  (removes the rounds' common drift), averaged over its visits; the SD of those client means against
  what noise alone gives (within-client SD / √visits) says whether a client has a λ of its own;
- **width gap**: the spread between module types in the same records (what decides which ranks a
  budget keeps).

    .venv/bin/python benchmarks/lambda_client_signal.py ROUNDS_JSONL [--from-round 75] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics as st
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from fedp2eft.psg.module_types import MODULE_TYPES  # noqa: E402  (the types rounds.jsonl records)


def read_rounds(path: Path, from_round: int) -> list[dict]:
    if not path.is_file():
        raise SystemExit(f"{path}: no such rounds file")
    rounds = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            rnd, clients = int(rec["round"]), rec["clients"]
        except (ValueError, KeyError, TypeError) as e:
            raise SystemExit(f"{path}:{n}: not a round record ({e})") from None
        if rnd >= from_round and clients:
            rounds.append(rec)
    if not rounds:
        raise SystemExit(f"{path}: no rounds with clients from round {from_round}")
    return rounds


def client_signal(rounds: list[dict], key: str) -> dict | None:
    """SD over clients of their round-relative λ means, against the SD noise alone would give."""
    visits: dict[str, list[float]] = defaultdict(list)
    for rec in rounds:
        vals = {c: m[key] for c, m in rec["clients"].items() if key in m}
        if len(vals) < 2:
            continue
        mu = st.fmean(vals.values())
        for c, v in vals.items():
            visits[c].append(v - mu)
    multi = {c: v for c, v in visits.items() if len(v) >= 2}
    if len(multi) < 2:
        return None
    within_sd = st.fmean(st.pvariance(v) for v in multi.values()) ** 0.5
    mean_visits = st.fmean(len(v) for v in multi.values())
    level = st.fmean(m[key] for rec in rounds for m in rec["clients"].values() if key in m)
    sd_means = st.pstdev([st.fmean(v) for v in multi.values()])
    return {"clients": len(multi), "mean_visits": mean_visits, "level": level,
            "within_client_sd": within_sd, "client_means_sd": sd_means,
            "noise_only_sd": within_sd / mean_visits ** 0.5, "client_means_sd_rel": sd_means / level}


def analyse(rounds: list[dict]) -> dict:
    moves = [m["lambda_mean"] - m["lambda_hat_mean"] for rec in rounds for m in rec["clients"].values()]
    keys = ["lambda_mean"] + [f"lambda_mean_{k}" for k in MODULE_TYPES]
    signal = {k: s for k in keys if (s := client_signal(rounds, k)) is not None}
    levels = {k[len("lambda_mean_"):]: s["level"] for k, s in signal.items() if k != "lambda_mean"}
    return {
        "rounds": [rounds[0]["round"], rounds[-1]["round"]], "visits": len(moves),
        "per_visit_move": {"mean": st.fmean(moves), "sd": st.pstdev(moves), "max_abs": max(map(abs, moves))},
        "client_signal": signal, "module_type_levels": levels,
        "width_gap_rel": (max(levels.values()) - min(levels.values())) / st.fmean(levels.values()) if levels else None,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rounds_jsonl", type=Path)
    ap.add_argument("--from-round", type=int, default=1, help="ignore earlier rounds (λ still far from its fixed point)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)
    out = analyse(read_rounds(args.rounds_jsonl, args.from_round))
    mv = out["per_visit_move"]
    print(f"rounds {out['rounds'][0]}-{out['rounds'][1]}, {out['visits']} client visits; "
          f"per-visit move λ − λ̂: mean {mv['mean']:+.4f}, SD {mv['sd']:.4f}, max |.| {mv['max_abs']:.4f}")
    print(f"{'λ mean of':<24}{'level':>8}{'client SD':>11}{'(rel)':>8}{'noise SD':>10}{'within SD':>11}")
    for k, s in out["client_signal"].items():
        print(f"{k:<24}{s['level']:>8.3f}{s['client_means_sd']:>11.5f}{100 * s['client_means_sd_rel']:>7.2f}%"
              f"{s['noise_only_sd']:>10.5f}{s['within_client_sd']:>11.5f}")
    if out["width_gap_rel"] is not None:
        print(f"module types: highest − lowest level = {100 * out['width_gap_rel']:.0f}% of their mean")
    if args.json:
        from fedp2eft.atomic import write_json

        write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
