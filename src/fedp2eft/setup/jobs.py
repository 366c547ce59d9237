"""The job every federated message carries: which stage the clients run, on which base model, with
which settings — typed, frozen, and sent as one JSON string."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass


@dataclass(frozen=True)
class Job:
    """``experiment``: the JSON of the sections a node needs to load its client and the base model
    (``data``, ``model``); ``stage``: the registered stage; ``base``: ``"off-the-shelf"`` or a base-model
    folder; ``seed``: the stage's seed (a round's clients use ``round_seed``); ``settings``: the stage's
    client settings (JSON form); ``client_state_dir``: where clients keep state between rounds."""

    stage: str
    experiment: str
    base_spec: str  # "off-the-shelf" or a base-model folder
    seed: int
    settings: dict
    num_clients: int
    budget: int | None = None
    client_state_dir: str | None = None
    round: int = 0
    gradient_checkpointing: bool = False  # the clients' local training recomputes activations (memory)
    precision: str = "fp32"  # the clients' forward passes: "fp32" or "bf16", as the server resolved the setting

    def for_round(self, round_: int) -> Job:
        return dataclasses.replace(self, round=int(round_))

    @property
    def round_seed(self) -> int:
        """The seed of one client update: unique per (stage seed, round)."""
        return int(self.seed) * 1_000_003 + int(self.round)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, text: str) -> Job:
        return cls(**json.loads(text))


def experiment_json(cfg) -> str:
    """The sections a node needs (data and model), as the key that caches its federation and base."""
    full = cfg.to_dict()
    return json.dumps({k: full[k] for k in ("data", "model")}, sort_keys=True)
