"""Base sources: where the model that personalisation starts from comes from (``base_model.kind``).

A source ``prepare``s itself — possibly as a federated stage — and ``open``s as a :class:`SharedBase`
whose ``for_client(client_id)`` gives each client its model. The sources:

- ``off-the-shelf``: the configured model as published (a fresh head seeded per experiment seed);
- ``standard-fl``: FedAvg of full or LoRA fine-tuning from the off-the-shelf model;
- the personalised-FL bases, whose clients differ: ``feddpa-t`` (a global LoRA plus each client's local
  LoRA, ``methods.feddpa``), ``dept`` (DEPT SPEC: each client's own embedding tables, ``methods.dept``),
  ``pf2lora`` (level 1 plus each client's level 2, ``methods.pf2lora.base_kind``). A client's base is the shared
  model with its own part applied (``adapters.client_part``), read from that client's storage; a client
  without one (unseen, or never sampled) gets the shared model, as each module documents;
- any other value: a base-model folder written by an earlier run (a personalised one keeps serving each
  client its part).

Every trained kind is one stage registered as a base kind (``methods.registry.register_base_kind``, in the
kind's own module) and trained once (``base_model.seed``) into ``<out>/base_model/``,
its shared model in ``<out>/base_model/model`` (resumable; refused or, with ``--fresh``, retrained when
its recorded settings differ; the clients' parts in ``<out>/base_model/clients/``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from .errors import UserError
from .methods.registry import BaseWithParts, FederatedStage, base_kinds
from .models import load_tokenizer
from .setup.base_models import (
    OFF_THE_SHELF,
    cached_base,
    client_parts_dir,
    folder_fingerprint,
    folder_meta,
    load_base,
    personal_model,
    release_cached_base,
    save_base_model,
)
from .setup.federation import cached_federation, stage_context
from .setup.jobs import experiment_json
from .setup.layout import RunLayout
from .setup.stage_state import base_settings, claim_stage, flatten
from .stages import Runner, round_logger, training_line


@dataclass
class SharedBase:
    """The base model clients start from. ``identity`` names the instance (a fingerprint of a trained
    base's weights, or ``off-the-shelf:<model>``): runs from different instances never mix. ``spec`` is
    what federated stages start from ("off-the-shelf" or the base-model folder); a personalised base's
    folder serves each client its own part (``for_client``)."""

    model: nn.Module
    tokenizer: object
    identity: str
    spec: str

    def for_client(self, client_id: str) -> nn.Module:
        return personal_model(self.model, self.spec, client_id)


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
        parts = client_parts_dir(str(self.folder))
        if parts is not None and not parts.is_dir():
            raise UserError(f"base model {self.folder}: its clients' parts folder {parts} is missing")
        model, tok = load_base(cfg, str(self.folder), num_labels, seed)
        return SharedBase(model, tok, folder_fingerprint(self.folder) or f"folder:{self.folder}", str(self.folder))


@dataclass
class TrainedBase:
    """A base model trained federatedly as the stage of its kind (``methods.registry.base_kinds``) into
    ``<out>/base_model/``; a personalised kind's clients keep their parts in ``<out>/base_model/clients/``."""

    layout: RunLayout
    kind: str = "standard-fl"

    @property
    def stage(self) -> FederatedStage:
        return base_kinds()[self.kind]

    @property
    def spec(self) -> str:
        return str(self.layout.base_model.resolve())

    def ready(self) -> bool:
        return folder_meta(self.layout.base_model).get("kind") == self.kind

    def prepare(self, cfg, layout: RunLayout, runner: Runner | None, fresh: bool, log: Callable = print) -> None:
        claim_stage(layout.base_stage, base_settings(cfg), fresh)
        if self.ready():
            return
        if runner is None:
            raise UserError(f"{layout.base_model} missing: train the base model first (ServerApp stage 'base')")
        stage, seed = self.stage, cfg.base_model.seed
        what = f"{self.kind} ({cfg.base_model.mode})" if self.kind == "standard-fl" else self.kind
        log(training_line(f"{what} base model", stage.rounds(cfg), cfg.federation.engine, layout.base_stage))
        logger = round_logger(log, stage.rounds(cfg), stage.round_metrics, "base_model", flatten(base_settings(cfg)))
        state = runner(stage, OFF_THE_SHELF, seed, None, layout.base_stage, logger)
        experiment = experiment_json(cfg)
        fed = cached_federation(experiment)[1]
        base, _ = cached_base(experiment, len(fed.label_names), seed, OFF_THE_SHELF)
        final = stage.finalize(base, state, stage.client_settings(cfg), layout.base_stage,
                               stage_context(cfg, seed, None, str(layout.base_stage / "clients")))
        meta = {"kind": self.kind, "rounds": cfg.base_model.rounds, "engine": cfg.federation.engine}
        if self.kind == "standard-fl":
            meta["mode"] = cfg.base_model.mode
        if isinstance(final, BaseWithParts):
            trained = sorted(p.name.split(".")[0] for p in final.parts_dir.glob("*.part.safetensors"))
            seen = [c.cid for c in fed.pool("seen")]
            parts = os.path.relpath(final.parts_dir.resolve(), layout.base_model.resolve())  # moves with the run
            meta |= {"client_parts": parts, "unseen": final.unseen,
                     "clients_with_parts": len(trained), "seen_clients": len(seen)}
            log(f"{self.kind} base model: {len(trained)} of {len(seen)} seen clients have their own part; "
                f"every other client gets {final.unseen}")
            final = final.model
        save_base_model(final, load_tokenizer(cfg.model.name), layout.base_model, meta)
        del final, base, state
        release_cached_base()

    def open(self, cfg, num_labels: int, seed: int) -> SharedBase:
        if not self.ready():
            raise UserError(f"no {self.kind} base model in {self.layout.base_model}; run fedp2eft run first")
        return FolderBase(self.layout.base_model).open(cfg, num_labels, seed)


def base_source(cfg, layout: RunLayout):
    """The configured base source (``base_model.kind``)."""
    kind = cfg.base_model.kind
    if kind == OFF_THE_SHELF:
        return OffTheShelf()
    if kind in base_kinds():
        return TrainedBase(layout, kind)
    if not Path(kind).is_dir():
        raise UserError(f"base_model.kind = {kind!r}: neither a base source {[OFF_THE_SHELF, *base_kinds()]} "
                        "nor a base-model folder")
    return FolderBase(Path(kind))
