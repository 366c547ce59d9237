"""Learning curve of a federated base model (issue 28, item 2): what ``none`` scores against base steps.

The config's base stage (default ``benchmarks/xnli_pfl.toml``, Standard FL) trains with
``base_model.snapshot_every`` = ``--every`` into ``<out>/base_model/``, resumable like any run (the same
folder a ``fedp2eft run`` with the same settings uses: the final base model is written there too). Every
snapshot is then scored as ``none`` (the shared model and its head, nothing fitted) on rows the base never
trained on — **the unseen pool's train rows** — and on the seen pool's train rows (what it fitted). Neither
is a test split, so the curve can choose a config. Per snapshot: the round, the local steps taken so far
(each sampled client's ``ceil(rows / batch) x local_epochs``, from ``rounds.jsonl``), the FedAvg train
loss and the mean accuracy over languages of both pools; chance is ``1 / labels``.

    .venv/bin/python benchmarks/base_curve.py [CONFIG] [--every 4] [--set base_model.rounds=64 ...]
    .venv/bin/python benchmarks/base_curve.py --fast --out-dir /tmp/curve    # tiny-bert, seconds

Writes ``<out>/base_curve.json`` and ``<out>/base_curve.png``; snapshots already scored are kept.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from fedp2eft.atomic import write_json  # noqa: E402
from fedp2eft.bases import base_source  # noqa: E402
from fedp2eft.benchkit import add_options, bench_config, open_bench  # noqa: E402
from fedp2eft.errors import UserError  # noqa: E402
from fedp2eft.evaluation import LanguageTally, mean_over_languages  # noqa: E402
from fedp2eft.fl.engines import stage_runner  # noqa: E402
from fedp2eft.methods.registry import base_kinds  # noqa: E402
from fedp2eft.methods.standard_fl import build_trainable, load_state  # noqa: E402
from fedp2eft.report import environment  # noqa: E402
from fedp2eft.setup.layout import RunLayout  # noqa: E402

POOLS = {"unseen": "unseen clients' train rows (held out)", "seen": "seen clients' train rows (fitted)"}


def local_steps(rounds_file: Path, rows: dict[str, int], batch: int, epochs: int) -> dict[int, int]:
    """Cumulative local steps after each round: every sampled client's ``ceil(rows / batch) x epochs``."""
    total, out = 0, {}
    for line in rounds_file.read_text().splitlines():
        rec = json.loads(line)
        total += sum(math.ceil(rows[c] / batch) * epochs for c in rec["sampled"] if c not in rec.get("failed", {}))
        out[int(rec["round"])] = total
    return out


def score(model, tasks, batch_size: int) -> float:
    """``none``'s mean accuracy over languages on every task's train rows."""
    tally = LanguageTally()
    for task in tasks:
        preds = task.problem.predict(model, task.train, batch_size)
        tally.add_scores(task.language, task.problem.score(preds, task.train))
    return mean_over_languages(tally.per_language())


def main(argv: list[str] | None = None) -> int:
    ap = add_options(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    ap.add_argument("config", nargs="?", default="benchmarks/xnli_pfl.toml")
    ap.add_argument("--every", type=int, default=4, help="score every k-th round's snapshot")
    ap.add_argument("--out-dir", type=Path, default=None, help="the base's run folder (default the config's "
                                                                  "output_dir with /curve)")
    args = ap.parse_args(argv)
    if args.every < 1:
        print("error: --every must be >= 1", file=sys.stderr)
        return 2
    cfg = bench_config(ROOT / args.config, args, [f"base_model.snapshot_every={args.every}"])
    if cfg.base_model.kind not in base_kinds() or cfg.base_model.kind != "standard-fl":
        print(f"error: base_model.kind = {cfg.base_model.kind!r}: the curve is of a Standard-FL base",
              file=sys.stderr)
        return 2
    out = args.out_dir or Path(cfg.experiment.output_dir) / "curve"
    out = out if out.is_absolute() else ROOT / out
    layout = RunLayout(out)
    try:
        base_source(cfg, layout).prepare(cfg, layout, stage_runner(cfg), False, print)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    bench = open_bench(cfg)
    tasks = {pool: bench.tasks(pool) for pool in POOLS}
    rows = {t.client_id: len(t.train) for t in tasks["seen"]}
    hp = cfg.base_model
    steps = local_steps(layout.base_stage / "rounds.jsonl", rows, hp.batch_size, hp.local_epochs)
    losses = {json.loads(ln)["round"]: json.loads(ln)["train_loss"]
              for ln in (layout.base_stage / "rounds.jsonl").read_text().splitlines()}
    path = out / "base_curve.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    points = {int(k): v for k, v in old.get("points", {}).items()} if old.get("settings") == hp.__dict__ else {}
    from safetensors.torch import load_file

    model = build_trainable(bench.base, hp, bench.problem)
    snapshots = sorted((layout.base_stage / "snapshots").glob("round*.safetensors"))
    for snap in snapshots:
        round_ = int(snap.stem.removeprefix("round"))
        if round_ in points:
            continue
        load_state(model, load_file(snap))
        with torch.no_grad():
            acc = {pool: round(100 * score(model, tasks[pool], cfg.personalise.eval_batch_size), 2) for pool in POOLS}
        points[round_] = {"round": round_, "local_steps": steps.get(round_), "train_loss": losses.get(round_),
                          "accuracy": acc}
        print(f"round {round_:4d}  steps {steps.get(round_)}  train loss {losses.get(round_):.3f}  "
              + "  ".join(f"{p} {a:.1f}" for p, a in acc.items()))
        write_json(path, {"config": args.config, "sets": args.sets, "settings": hp.__dict__,
                          "chance": round(100 / len(bench.federation.label_names), 2), "pools": POOLS,
                          "points": {str(k): points[k] for k in sorted(points)}, "environment": environment()})
    if not points:
        print("error: no snapshots to score", file=sys.stderr)
        return 1
    plot(path, out / "base_curve.png")
    return 0


def plot(results: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads(results.read_text())
    pts = sorted(data["points"].values(), key=lambda p: p["round"])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    x = [p["local_steps"] if p["local_steps"] is not None else p["round"] for p in pts]
    for pool, label in data["pools"].items():
        ax.plot(x, [p["accuracy"][pool] for p in pts], marker="o", label=label)
    ax.axhline(data["chance"], color="grey", linestyle=":", label="chance")
    ax.set_xlabel("local steps (all sampled clients)")
    ax.set_ylabel("none: mean accuracy over languages (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
