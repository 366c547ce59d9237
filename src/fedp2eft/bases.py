"""Base sources: where the model that personalisation starts from comes from (``base_model.kind``).

A source ``prepare``s itself — possibly as a federated stage — and ``open``s as a :class:`SharedBase`
whose ``for_client(client_id)`` gives each client its model (the seam for bases that differ per
client, e.g. FedDPA-T's or DEPT's). The first sources:

- ``off-the-shelf``: the configured model as published (a fresh head seeded per experiment seed);
- ``standard-fl``: FedAvg of full or LoRA fine-tuning from the off-the-shelf model, trained once as the
  registered stage ``base_model`` into ``<out>/base_model/model`` (resumable; refused or, with
  ``--fresh``, retrained when its recorded settings differ);
- any other value: a base-model folder written by an earlier run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from .errors import UserError
from .methods.standard_fl import STANDARD_FL_STAGE
from .models import load_tokenizer
from .setup.base_models import OFF_THE_SHELF, cached_base, folder_fingerprint, load_base, save_base_model
from .setup.federation import cached_federation
from .setup.jobs import experiment_json
from .setup.layout import RunLayout
from .setup.stage_state import base_settings, claim_stage
from .stages import Runner, round_line


@dataclass
class SharedBase:
    """One base model that every client starts from. ``identity`` names the instance (a fingerprint of
    a trained base's weights, or ``off-the-shelf:<model>``): runs from different instances never mix."""

    model: nn.Module
    tokenizer: object
    identity: str
    spec: str  # what federated stages start from: "off-the-shelf" or the base-model folder

    def for_client(self, client_id: str) -> nn.Module:
        return self.model


class OffTheShelf:
    spec = OFF_THE_SHELF

    def prepare(self, cfg, layout: RunLayout, runner: Runner | None, fresh: bool, log: Callable) -> None:
        return None

    def open(self, cfg, num_labels: int, seed: int) -> SharedBase:
        model, tok = load_base(cfg, OFF_THE_SHELF, num_labels, seed)
        return SharedBase(model, tok, f"off-the-shelf:{cfg.model.name}", OFF_THE_SHELF)


@dataclass
class FolderBase:
    folder: Path

    @property
    def spec(self) -> str:
        return str(self.folder)

    def prepare(self, cfg, layout: RunLayout, runner: Runner | None, fresh: bool, log: Callable) -> None:
        return None

    def open(self, cfg, num_labels: int, seed: int) -> SharedBase:
        model, tok = load_base(cfg, str(self.folder), num_labels, seed)
        return SharedBase(model, tok, folder_fingerprint(self.folder) or f"folder:{self.folder}", str(self.folder))


@dataclass
class StandardFL:
    """FedAvg's global model (``[base_model]`` mode full or lora), trained as the ``base_model`` stage."""

    layout: RunLayout

    @property
    def spec(self) -> str:
        return str(self.layout.base_model.resolve())

    def ready(self) -> bool:
        return (self.layout.base_model / "fedp2eft_classifier.json").is_file()

    def prepare(self, cfg, layout: RunLayout, runner: Runner | None, fresh: bool, log: Callable = print) -> None:
        claim_stage(layout.base_stage, base_settings(cfg), fresh)
        if self.ready():
            return
        if runner is None:
            raise UserError(f"{layout.base_model} missing: train the base model first (ServerApp stage 'base')")
        stage, seed = STANDARD_FL_STAGE, cfg.base_model.seed
        log(f"standard FL ({cfg.base_model.mode}) base model: {stage.rounds(cfg)} rounds on the "
            f"{cfg.federation.engine} engine, checkpoints in {layout.base_stage / 'checkpoint'}")
        state = runner(stage, OFF_THE_SHELF, seed, None, layout.base_stage, lambda r: log(round_line(r)))
        experiment = experiment_json(cfg)
        base, _ = cached_base(experiment, len(cached_federation(experiment)[1].label_names), seed, OFF_THE_SHELF)
        model = stage.finalize(base, state, stage.client_settings(cfg, seed, None), layout.base_stage)
        save_base_model(model, load_tokenizer(cfg.model.name), layout.base_model,
                        {"kind": "standard-fl", "mode": cfg.base_model.mode, "rounds": cfg.base_model.rounds,
                         "engine": cfg.federation.engine})

    def open(self, cfg, num_labels: int, seed: int) -> SharedBase:
        if not self.ready():
            raise UserError(f"no base model in {self.layout.base_model}; run fedp2eft run first")
        return FolderBase(self.layout.base_model).open(cfg, num_labels, seed)


def base_source(cfg, layout: RunLayout):
    """The configured base source (``base_model.kind``)."""
    kind = cfg.base_model.kind
    if kind == OFF_THE_SHELF:
        return OffTheShelf()
    if kind == "standard-fl":
        return StandardFL(layout)
    return FolderBase(Path(kind))
