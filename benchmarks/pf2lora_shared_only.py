"""Diagnostic for the six-method comparison: how much of PF2LoRA's accuracy comes from its shared,
federatedly trained level 1 alone? Predicts every client's test split with the base model plus
PF2LoRA's trained level 1 and head of one seed and budget, with no level 2 and no local fine-tuning
(B·A only), and reports the mean over languages per pool next to the base model as is.

    .venv/bin/python benchmarks/pf2lora_shared_only.py [--config benchmarks/masakhanews_small.toml]
        [--run benchmarks/results/masakhanews_small] [--seed 1] [--budget 2] [--set section.key=value ...]

The base model is the run's (``<run>/base_model/model``) when it has one, else the config's. Writes
``--out`` (default ``<run>/pf2lora_shared_only_seed<S>_r<B>.json``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from fedp2eft.benchkit import add_options, bench_config, open_bench, write_result
from fedp2eft.evaluation import LanguageTally, mean_over_languages
from fedp2eft.methods.pf2lora import load_shared_state, two_level_model
from fedp2eft.methods.registry import get_stage
from fedp2eft.setup.layout import RunLayout

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, default=HERE / "masakhanews_small.toml")
    ap.add_argument("--run", type=Path, default=HERE / "results" / "masakhanews_small")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--budget", type=int, default=2)
    args = add_options(ap).parse_args(argv)
    layout = RunLayout(args.run)
    stage = get_stage("pf2lora")
    shared_file = layout.stage(stage.name, args.seed, args.budget) / stage.artifact
    if not shared_file.is_file():
        print(f"error: {shared_file}: missing (a run with pf2lora at seed {args.seed}, r = {args.budget})", file=sys.stderr)
        return 2
    cfg = bench_config(args.config, args)
    bench = open_bench(cfg, layout.base_model if layout.base_model.is_dir() else cfg.base_model.kind)
    s = stage.client_settings(cfg)
    model, layers = two_level_model(bench.base, args.budget, s.training.r_local(args.budget), 0, s.head)
    load_shared_state(model, layers, load_file(str(shared_file)))  # level 2 keeps D = 0: it adds nothing
    result = {"seed": args.seed, "budget": args.budget, "run": str(args.run)}
    with torch.no_grad():
        for pool in ("seen", "unseen"):
            tallies = {name: LanguageTally() for name in ("base", "level1")}
            for task in bench.tasks(pool):
                tallies["base"].add_scores(*task.score(bench.problem.predict(bench.base, task.test)))
                tallies["level1"].add_scores(*task.score(bench.problem.predict(model, task.test)))
            result[pool] = {name: mean_over_languages(t.per_language()) for name, t in tallies.items()}
            print(f"{pool}: base model {100 * result[pool]['base']:.1f}, base + PF2LoRA level 1 (no personalisation) "
                  f"{100 * result[pool]['level1']:.1f}")
    write_result(args.out or args.run / f"pf2lora_shared_only_seed{args.seed}_r{args.budget}.json", result)
    print(json.dumps({k: v for k, v in result.items() if k in ("seen", "unseen")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
