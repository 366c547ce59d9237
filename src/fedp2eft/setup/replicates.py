"""What an experiment seed varies (``experiment.replicate``).

- ``"personalisation"`` (the default, and the paper's apparent practice): every seed personalises the same
  federation — one partition (``data.partition_seed``), one base model (``base_model.seed``), one fixed
  LoRA A (``personalise.lora_a_seed``) — and varies only batch order, stage initialisation and client
  sampling. A spread over such seeds says nothing about another federation.
- ``"federation"``: seed S draws its own federation. Its config is the experiment's with
  ``data.partition_seed + S``, ``base_model.seed + S`` and (when fixed) ``personalise.lora_a_seed + S``, and
  every trained thing of it — the base model and every stage (PSG, FedL2P, PF2LoRA, …) — lies in its own
  folder ``<out>/federation<S>/``. Seed 0 is therefore the federation the personalisation seeds share.

``replicate_config`` and ``replicate_layout`` are the only places that know this: everything downstream
reads the per-seed config and layout as if it were the experiment's.
"""

from __future__ import annotations

import dataclasses

from .layout import RunLayout


def replicate_config(cfg, seed: int):
    """The config seed ``seed`` runs with: ``cfg`` itself for personalisation replicates; for federation
    replicates, ``cfg`` with the partition, base-model and fixed-A seeds offset by ``seed``."""
    if cfg.experiment.replicate != "federation":
        return cfg
    recipe = cfg.personalise.recipe
    return dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, partition_seed=cfg.data.partition_seed + seed),
        base_model=dataclasses.replace(cfg.base_model, seed=cfg.base_model.seed + seed),
        personalise=dataclasses.replace(cfg.personalise, recipe=dataclasses.replace(
            recipe, lora_a_seed=recipe.lora_a_seed + seed if recipe.lora_a_seed >= 0 else -1)),
    )


def replicate_layout(layout: RunLayout, cfg, seed: int) -> RunLayout:
    """Where seed ``seed``'s base model and stages lie: the run's folder, or ``<out>/federation<S>/``."""
    if cfg.experiment.replicate != "federation":
        return layout
    return RunLayout(layout.root / f"federation{seed}")


def replicate_label(replicate: str, seeds: list[int]) -> str:
    """How a table's spread reads: over federations or over personalisation seeds of one federation."""
    n = len(seeds)
    if replicate == "federation":
        return f"{n} federation{'s' if n != 1 else ''} (seeds {seeds}: partition, base model, LoRA A and stages each)"
    return f"{n} personalisation seed{'s' if n != 1 else ''} of one federation (seeds {seeds})"
