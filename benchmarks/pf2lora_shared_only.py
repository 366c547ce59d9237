"""Diagnostic for the six-method comparison: how much of PF2LoRA's accuracy comes from its shared,
federatedly trained level 1 alone? Predicts every client's test split with the base model plus
PF2LoRA's trained level 1 and head of one seed and budget, with no level 2 and no local fine-tuning
(B·A only), and reports the mean over languages per pool next to the base model as is.

    .venv/bin/python benchmarks/pf2lora_shared_only.py [--seed 1] [--budget 2]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from fedp2eft.atomic import write_json
from fedp2eft.config import load_config
from fedp2eft.evaluation import LanguageTally, mean_over_languages
from fedp2eft.methods.pf2lora import PF2LoRASettings, load_shared_state, two_level_model
from fedp2eft.models import load_classifier
from fedp2eft.setup.federation import client_tasks, load_federation
from fedp2eft.tasks.classification import predict

HERE = Path(__file__).resolve().parent
RUN = HERE / "results" / "masakhanews_small"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--budget", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(2)
    cfg = load_config(HERE / "masakhanews_small.toml")
    fed = load_federation(cfg)
    base, tok = load_classifier(str(RUN / "base_model" / "model"), len(fed.label_names))
    shared = load_file(str(RUN / "pf2lora" / f"seed{args.seed}" / f"r{args.budget}" / "shared.safetensors"))
    model, layers = two_level_model(base, args.budget, PF2LoRASettings(budget=args.budget).r_local, 0)
    load_shared_state(model, layers, shared)  # level 2 keeps D = 0: it adds nothing
    result = {"seed": args.seed, "budget": args.budget}
    for pool in ("seen", "unseen"):
        tallies = {name: LanguageTally() for name in ("base", "level1")}
        for task in client_tasks(fed.pool(pool), tok, cfg.data.max_length):
            tallies["base"].add(task.language, predict(base, task.test), task.test.labels)
            tallies["level1"].add(task.language, predict(model, task.test), task.test.labels)
        result[pool] = {name: mean_over_languages(t.per_language()) for name, t in tallies.items()}
        print(f"{pool}: base model {100 * result[pool]['base']:.1f}, base + PF2LoRA level 1 (no personalisation) "
              f"{100 * result[pool]['level1']:.1f}")
    write_json(RUN / f"pf2lora_shared_only_seed{args.seed}_r{args.budget}.json", result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
