"""Where everything of a run lies, in one place:

- ``results.json`` / ``results.md``: the runs;
- ``base_model/``: the Standard-FL stage (``checkpoint/``, ``rounds.jsonl``, ``settings.json``), its
  model in ``base_model/model/``;
- ``<stage>/seed<S>/`` for a stage trained once per seed (``psg``, ``psg-paper``), and
  ``<stage>/seed<S>/r<B>/`` for one trained per budget (``fedl2p``, ``pf2lora``; PF2LoRA's clients keep
  their level 2 in ``…/clients/``). Every stage folder has ``settings.json``, ``checkpoint/`` and
  ``rounds.jsonl``, and its final state in the stage's artifact file; one trained under differential
  privacy also ``privacy.json`` (its mechanism and the (ε, δ) it spent).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunLayout:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def results(self) -> Path:
        return self.root / "results.json"

    @property
    def base_stage(self) -> Path:
        return self.root / "base_model"

    @property
    def base_model(self) -> Path:
        return self.root / "base_model" / "model"

    def stage(self, name: str, seed: int, budget: int | None = None) -> Path:
        folder = self.root / name / f"seed{seed}"
        return folder / f"r{budget}" if budget is not None else folder

    def privacy(self, stages: list[tuple[str, int | None]], seed: int) -> dict:
        """``{stage: its privacy.json}`` of the base model's stage and of ``stages`` (name, budget), for
        those trained under differential privacy."""
        folders = {"base_model": self.base_stage, **{n: self.stage(n, seed, b) for n, b in stages}}
        return {n: json.loads((f / "privacy.json").read_text()) for n, f in folders.items()
                if (f / "privacy.json").is_file()}
