"""FedP²EFT accuracy against PSG rounds, for several PSG settings (issue 10, item 5).

Each variant is the config's ``[fedp2eft]`` section with some keys changed; its PSG is trained
federatedly (same base model, clients and seed as the benchmark) with snapshots every
``snapshot_every`` rounds, and every snapshot personalises each client of the chosen pools at budget
r on its train split minus a held-out validation part (``--val-fraction``, seeded per client) and
is scored on that held-out part — never on test. The curve chooses the recommended settings.

    .venv/bin/python benchmarks/psg_rounds.py benchmarks/masakhanews_paper.toml [--rounds 60]
        [--variant paper] [--variant init1] ... [--seed 0] [--budget 2]
        [--stage-snapshots fedp2eft-paper]   # score the snapshots a `fedp2eft run` PSG stage kept

Writes ``<output_dir>/psg_rounds/<variant>/`` (the PSG, rounds.jsonl, snapshots, λ trajectory) and
``<output_dir>/psg_rounds/accuracy_vs_rounds.{json,png}``; re-running resumes (trained PSGs and
scored snapshots are kept; variants are refused if their recorded settings differ).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

# Each variant: [fedp2eft] overrides on top of the authors' values (the section's defaults).
VARIANTS = {
    "paper": {},  # the authors' recipe: first λ̂ 1e-4, lr_λ 0.01, 2 local epochs
    "init1": {"psg_init": 1.0},  # the PSG starts at λ̂ = 1 (LoRA's scale) instead of 1e-4
    "init1-lr0.1": {"psg_init": 1.0, "lambda_lr": 0.1},  # ... and λ moves 10x faster
    "epochs6": {"local_epochs": 6},  # 3x the local BT-LoRA steps per round
}


def evaluate_method(method, base, tasks, budget, p, seed, val_fraction):
    """``method`` personalising every client on its train split minus a held-out part, scored there."""
    from fedp2eft.evaluation import LanguageTally, mean_over_languages
    from fedp2eft.methods import ClientTask

    tally = LanguageTally()
    for i, task in enumerate(tasks):
        if len(task.train) < 2:
            continue
        client_seed = seed * 100_003 + i
        fit, val = task.train.split(val_fraction, client_seed)
        preds = method.personalise(base, ClientTask(task.client_id, task.language, fit, val, task.problem), budget, p,
                                   client_seed)
        tally.add_scores(task.language, task.problem.score(preds, val))
    return mean_over_languages(tally.per_language())


def plot(curves: dict, path: Path, budget: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fedp2eft.atomic import atomic_path

    pools = sorted({pool for v in curves.values() for pool in v["accuracy"]})
    fig, axes = plt.subplots(1, len(pools), figsize=(6 * len(pools), 4), squeeze=False)
    for ax, pool in zip(axes[0], pools):
        for name, v in curves.items():
            pts = sorted((int(r), a) for r, a in v["accuracy"].get(pool, {}).items())
            if pts:
                ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker="o", label=name)
            lora = v.get("lora", {}).get(pool)
            if lora is not None:
                ax.axhline(100 * lora, color="grey", linestyle="--", linewidth=1)
        ax.set_xlabel("PSG rounds")
        ax.set_ylabel(f"validation accuracy %, r = {budget}")
        ax.set_title(f"{pool} clients (dashed: LoRA at the same rate)")
        ax.legend(fontsize=8)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config")
    ap.add_argument("--variant", action="append", choices=sorted(VARIANTS), help="default: all")
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--every", type=int, default=10, help="snapshot (and score) every k rounds")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budget", type=int, default=2)
    ap.add_argument("--pools", default="seen,unseen")
    ap.add_argument("--val-fraction", type=float, default=0.2)
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--out", help="default: <experiment.output_dir>/psg_rounds")
    ap.add_argument("--stage-snapshots", action="append", default=[], metavar="METHOD",
                    help="also score the snapshots of the PSG a run of the config trained for METHOD "
                         "(e.g. fedp2eft-paper: <output_dir>/psg-paper/seed<S>/snapshots), or of any other "
                         "stage with snapshots (e.g. fedp2eft-step: <...>/fedp2eft-step/seed<S>/r<B>/); trains "
                         "nothing. With experiment.replicate = 'federation', the seed's own federation")
    args = ap.parse_args(argv)

    import torch
    from safetensors.torch import load_file

    from fedp2eft.atomic import write_json
    from fedp2eft.bases import base_source
    from fedp2eft.config import load_config
    from fedp2eft.fl.engines import stage_runner
    from fedp2eft.methods import ClientTask
    from fedp2eft.methods.fedp2eft import PSG_STAGE, new_psg
    from fedp2eft.methods.lora import finetune_lora
    from fedp2eft.methods.registry import get_method, get_spec
    from fedp2eft.models.precision import set_precision
    from fedp2eft.schema import with_keys
    from fedp2eft.setup.base_models import resolved_precision
    from fedp2eft.setup.federation import client_tasks, load_federation, stage_context, task_for
    from fedp2eft.setup.layout import RunLayout
    from fedp2eft.setup.replicates import replicate_config, replicate_layout
    from fedp2eft.stages import load_or_train

    cfg = load_config(args.config, args.set)
    if cfg.experiment.threads:
        torch.set_num_threads(cfg.experiment.threads)
    out_dir = Path(cfg.experiment.output_dir)
    work = Path(args.out) if args.out else out_dir / "psg_rounds"
    pools = [p for p in args.pools.split(",") if p]
    layout = replicate_layout(RunLayout(out_dir), cfg, args.seed)  # the seed's own federation, if so
    cfg = replicate_config(cfg, args.seed)
    fed = load_federation(cfg)
    shared = base_source(cfg, layout).open(cfg, len(fed.label_names), args.seed)
    base, tok = shared.model, shared.tokenizer
    set_precision(base, resolved_precision(cfg))  # as the run whose stages it scores
    tasks = {pool: client_tasks(fed.pool(pool), tok, cfg.data.max_length, task_for(cfg)) for pool in pools}
    p = cfg.personalise
    results_path = work / "accuracy_vs_rounds.json"
    curves = json.loads(results_path.read_text()) if results_path.is_file() else {}

    def lora_reference(pool):  # LoRA on the same fit/val split, at the personalisation rate
        from fedp2eft.evaluation import LanguageTally, mean_over_languages

        tally = LanguageTally()
        for i, task in enumerate(tasks[pool]):
            client_seed = args.seed * 100_003 + i
            fit, val = task.train.split(args.val_fraction, client_seed)
            model = finetune_lora(base, ClientTask(task.client_id, task.language, fit, val, task.problem), args.budget,
                                  p.recipe, client_seed)
            tally.add_scores(task.language, task.problem.score(task.problem.predict(model, val, p.eval_batch_size), val))
        return mean_over_languages(tally.per_language())

    def score_snapshots(name, folder, overrides, method_for):
        """Score every snapshot in ``folder/snapshots``; ``method_for(state)`` makes the method it personalises with."""
        entry = curves.setdefault(name, {"overrides": overrides, "accuracy": {}, "lora": {}})
        for snap in sorted((folder / "snapshots").glob("round*.safetensors")):
            rnd = str(int(snap.stem[len("round"):]))
            method = None
            for pool in pools:
                if rnd in entry["accuracy"].get(pool, {}):
                    continue
                method = method or method_for(load_file(str(snap)))
                acc = evaluate_method(method, base, tasks[pool], args.budget, p, args.seed, args.val_fraction)
                entry["accuracy"].setdefault(pool, {})[rnd] = acc
                print(f"{name} round {rnd} {pool}: {100 * acc:.1f}", flush=True)
                write_json(results_path, curves)
        for pool in pools:
            if pool not in lora:
                lora[pool] = lora_reference(pool)
            entry["lora"][pool] = lora[pool]
        write_json(results_path, curves)
        return entry

    def psg_method(section):  # a snapshot of a PSG stage → FedP²EFT with that PSG
        from fedp2eft.methods.fedp2eft import FedP2EFTMethod

        bt = section.bt_settings(cfg.personalise)

        def make(state):
            psg = new_psg(base, section.prior.r_init, args.seed, cfg.personalise.recipe.head,
                          section.regression.psg_init)
            psg.load_state_dict(state)
            return FedP2EFTMethod(psg, bt)
        return make

    lora = {}
    for name in args.variant or ([] if args.stage_snapshots else list(VARIANTS)):
        section = with_keys(cfg.fedp2eft.__class__(), **VARIANTS[name], rounds=args.rounds,
                            snapshot_every=args.every)
        vcfg = dataclasses.replace(cfg, fedp2eft=section)
        folder = work / name
        t0 = time.perf_counter()
        load_or_train(vcfg, PSG_STAGE, layout, args.seed, None, base, shared.spec, stage_runner(vcfg), folder=folder)
        trained_seconds = round(time.perf_counter() - t0, 1)
        entry = score_snapshots(name, folder, VARIANTS[name], psg_method(section))
        entry["train_seconds"] = entry.get("train_seconds") or trained_seconds
        write_json(results_path, curves)
    def stage_method(method, spec, folder):  # a snapshot of any stage → the method with that resource
        stage_settings = spec.stage.client_settings(cfg)
        budget = args.budget if spec.stage.per_budget else None
        return lambda state: get_method(method, cfg, {budget: spec.stage.finalize(
            base, state, stage_settings, folder, stage_context(cfg, args.seed, budget))}, args.seed)

    for method in args.stage_snapshots:  # a stage the run itself trained (e.g. fedp2eft-paper's psg-paper)
        spec = get_spec(method)
        if spec.stage is None:
            sys.exit(f"--stage-snapshots {method}: not a method with a federated stage")
        if spec.stage.per_budget:
            folder = layout.stage(spec.stage.name, args.seed, args.budget)
            if not any((folder / "snapshots").glob("round*.safetensors")):
                sys.exit(f"--stage-snapshots {method}: no snapshots in {folder / 'snapshots'} "
                         f"(train it with {spec.section}.snapshot_every > 0)")
            score_snapshots(f"{method} (run)", folder, {"section": spec.section}, stage_method(method, spec, folder))
            continue
        if not spec.stage.name.startswith("psg"):
            sys.exit(f"--stage-snapshots {method}: not a method with a PSG stage")
        folder = layout.stage(spec.stage.name, args.seed)
        if not any((folder / "snapshots").glob("round*.safetensors")):
            sys.exit(f"--stage-snapshots {method}: no PSG snapshots in {folder / 'snapshots'} "
                     f"(train it with {spec.section}.snapshot_every > 0)")
        section = getattr(cfg, spec.section)
        score_snapshots(f"{method} (run)", folder, {"section": spec.section}, psg_method(section))
    plot(curves, work / "accuracy_vs_rounds.png", args.budget)
    print(f"wrote {results_path} and {work / 'accuracy_vs_rounds.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
