"""The method registry: every personalisation method is one registered :class:`MethodSpec`, the way
peft maps each tuner type to its config and model classes.

A spec names the method, says whether it takes a rank budget, names its TOML section and the settings
dataclass that *is* that section (documented per field, validated in ``__post_init__``), its
federated stage if it has one, and a builder. Everything else is derived from the registry: the
config's sections (``config``), the CLI's and the config's method names, the Deployment ServerApp's
stages, the resumable stage folders and the run's recorded settings.

A :class:`FederatedStage` is the method's federated training as plain functions: the client settings
(derived from the config's sections, JSON-able: they travel in the job; never a seed or a budget), the
initial global state, one client's update ``client_update(base, state, task, settings, context)``, and
``finalize`` (the trained global state → the resource the method personalises with). The stage runner
injects the seed, the budget and the run's task through the :class:`StageContext`. Stages run through one generic load-or-train
(``stages``) on any engine.

To add a method: write its module (the method class, its spec, ``register_method(spec)`` at the
bottom), import the module in ``methods/__init__.py``, add it to a config. See docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from ..errors import UserError

State = dict[str, torch.Tensor]


@dataclass(frozen=True)
class StageContext:
    """What the stage runner injects besides base, state, data and settings: the seed (the stage's for
    ``initial_state`` and ``finalize``; the round's, unique per stage seed and round, for ``client_update``),
    the rank budget (per-budget stages), the run's task (``problem``: which modules are adapted, the head) and
    the client's own storage folder (stages whose clients keep state between rounds; it never leaves the
    client) and, for a client update under FedProx, the proximal term's μ (the strategy's ``proximal-mu``)."""

    seed: int
    budget: int | None = None
    client_state_dir: str | None = None
    problem: Any = None  # the run's Task
    proximal_mu: float = 0.0  # FedProx's μ for a client update (``training.proximal``); 0 = none


@dataclass(frozen=True)
class FederatedStage:
    """A federated training that a method (or a base source) needs before personalising.

    ``name`` is the stage's folder under the run, its job's algorithm and its ServerApp ``stage``;
    ``section`` is the config section holding its ``rounds`` (and ``snapshot_every`` if it has one).
    ``client_settings(cfg)`` returns the client settings (a frozen dataclass composed of the config's
    sections; they travel in every job as JSON and are recorded in the stage folder with the seed and, per
    budget, the budget); ``settings_type`` rebuilds them. ``added_keys``: settings added after folders of the
    stage were trained, each with the value that reproduces those folders; a key is recorded only when its
    value differs, so the folders stay valid. ``unrecorded``: settings keys the stage does not
    depend on (left out of the record). ``initial_state(base, settings, context)`` is the round-0 global
    state; ``client_update(base, state, task, settings, context) -> (state, num_examples, metrics)`` one
    client's round; ``finalize(base, state, settings, folder, context)`` the resource the method uses (a
    module, or state and the clients' folder).
    ``artifact`` is the file the final state is saved to; ``after(folder, base, resource)`` runs once
    after training (e.g. λ plots); ``report(base, resource, tasks by pool, folder, cfg)`` each time a
    run uses it (e.g. every client's λ). ``evaluate(base, state, task, settings) -> ({metric: score sum}, n)`` enables
    federated evaluation. The server's rule is not the stage's: it is ``[federation]``'s strategy
    (``fl.strategies``).
    ``needs``: a stage trained once per seed (e.g. ``psg``) that is trained first; its final state travels
    inside this stage's global state under the prefix ``"<needs>."`` (``prior_key``), frozen: the server
    leaves it out of the aggregation and keeps it as it is; the stage's record includes the needed stage's.
    ``round_metrics``: which of the clients' averaged round metrics the round's log line shows.
    """

    name: str
    section: str
    per_budget: bool
    client_settings: Callable[[Any], Any]
    settings_type: type
    initial_state: Callable[[nn.Module, Any, StageContext], State]
    client_update: Callable[[nn.Module, State, Any, Any, StageContext], tuple[State, int, dict]]
    finalize: Callable[[nn.Module, State, Any, Path, StageContext], Any]
    artifact: str = "state.safetensors"
    client_state: bool = False  # clients keep state between rounds in <stage folder>/clients/
    after: Callable[[Path], None] | None = None
    report: Callable[[nn.Module, Any, dict, Path, Any], None] | None = None
    evaluate: Callable[[nn.Module, State, Any, Any], tuple[dict[str, float], int]] | None = None
    needs: str | None = None
    round_metrics: tuple[str, ...] = ("train_loss",)  # the round metrics each round's log line shows
    unrecorded: tuple[str, ...] = ()
    added_keys: dict[str, Any] = field(default_factory=dict)

    def rounds(self, cfg) -> int:
        return getattr(cfg, self.section).rounds

    def snapshot_every(self, cfg) -> int:
        return getattr(getattr(cfg, self.section), "snapshot_every", 0)

    def settings_json(self, settings) -> dict:
        return dataclasses.asdict(settings)

    def settings_from_json(self, raw: dict):
        return build_dataclass(self.settings_type, raw)


def prior_key(needs: str, key: str) -> str:
    """Where a needed stage's tensor ``key`` lies in the global state of the stage that needs it."""
    return f"{needs}.{key}"


def split_prior(state: State, needs: str) -> tuple[State, State]:
    """``(prior, own)``: the needed stage's state (prefix removed) and the stage's own tensors."""
    prefix = f"{needs}."
    prior = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return prior, {k: v for k, v in state.items() if not k.startswith(prefix)}


@dataclass
class BaseWithParts:
    """What a personalised-FL base stage (FedDPA-T, DEPT, PF2LoRA) finalizes to: the shared model every
    client starts from, and the clients' storage folder, where each trained client keeps its own part
    (``adapters.client_part.client_part_file``) — read there by that client only, never sent."""

    model: nn.Module
    parts_dir: Path
    unseen: str  # how a client without a part is served, in words (recorded with the base model)


@dataclass(frozen=True)
class MethodSpec:
    """One personalisation method. ``build(cfg, resources, seed)`` makes the method object for a run;
    ``resources`` maps each budget (None for a stage that is not per budget) to its stage's finalized
    resource. ``section`` / ``settings``: the method's TOML section and its schema (several methods may
    share one section; a section is declared once). ``recorded``: the section only shapes this method's
    runs, so each run records it (a results file can gain the method later; a change re-runs only it).
    ``max_budget(cfg) -> (key, limit)``: the largest budget it serves."""

    name: str
    build: Callable[[Any, dict, int], Any]
    uses_budget: bool = True
    section: str | None = None
    settings: type | None = None
    stage: FederatedStage | None = None
    recorded: bool = False
    max_budget: Callable[[Any], tuple[str, int]] | None = None
    summary: str = ""


_METHODS: dict[str, MethodSpec] = {}
_SECTIONS: dict[str, type] = {}
_STAGES: dict[str, FederatedStage] = {}  # stages no method owns (base sources')


def register_method(spec: MethodSpec) -> MethodSpec:
    if spec.name in _METHODS:
        raise ValueError(f"method {spec.name!r} is registered twice")
    if spec.section is not None:
        if spec.settings is None:
            raise ValueError(f"method {spec.name!r} names section [{spec.section}] without its settings class")
        if _SECTIONS.setdefault(spec.section, spec.settings) is not spec.settings:
            raise ValueError(f"section [{spec.section}] is declared with two settings classes")
    _METHODS[spec.name] = spec
    return spec


def unregister_method(name: str) -> None:
    """Remove a method (and its section, when no other method declares it): for plug-ins and tests."""
    spec = _METHODS.pop(name)
    if spec.section is not None and not any(s.section == spec.section for s in _METHODS.values()):
        _SECTIONS.pop(spec.section, None)


def register_section(name: str, settings: type) -> None:
    """A config section that no method owns (e.g. a base source's)."""
    if _SECTIONS.setdefault(name, settings) is not settings:
        raise ValueError(f"section [{name}] is declared with two settings classes")


_MOVED_KEYS: dict[str, str] = {}


def register_moved_key(old: str, new: str) -> None:
    """A config key that moved (``"personalise.adalora_lr"`` -> ``"adalora.lr"``): a config that sets the old
    key is refused with a one-line error naming the new place; a results file that holds it is read with
    the value moved (``moved_keys``)."""
    _MOVED_KEYS[old] = new


def moved_keys() -> dict[str, str]:
    return dict(_MOVED_KEYS)


def register_stage(stage: FederatedStage) -> FederatedStage:
    """A federated stage that no method owns (a base source's, e.g. Standard FL)."""
    if stage.name in _STAGES:
        raise ValueError(f"stage {stage.name!r} is registered twice")
    _STAGES[stage.name] = stage
    return stage


_BASE_KINDS: dict[str, tuple[FederatedStage, tuple[str, ...]]] = {}


def register_base_kind(kind: str, stage: FederatedStage, sections: tuple[str, ...] = ()) -> FederatedStage:
    """Make ``kind`` a ``base_model.kind`` whose base model ``stage`` trains federatedly into
    ``<out>/base_model/`` (its ``finalize`` gives the model, or a ``BaseWithParts``). ``sections``: config
    sections beyond ``[base_model]`` that its settings come from (recorded with the base)."""
    if stage.name not in _STAGES:
        register_stage(stage)
    _BASE_KINDS[kind] = (stage, tuple(sections))
    return stage


def unregister_base_kind(kind: str) -> None:
    stage, _ = _BASE_KINDS.pop(kind, (None, ()))
    if stage is not None and not any(s is stage for s, _ in _BASE_KINDS.values()):
        _STAGES.pop(stage.name, None)


def base_kinds() -> dict[str, FederatedStage]:
    """Every trained base kind (``base_model.kind``) and its stage, in registration order."""
    return {k: stage for k, (stage, _) in _BASE_KINDS.items()}


def base_kind_sections(kind: str) -> tuple[str, ...]:
    return _BASE_KINDS[kind][1]


def method_names() -> list[str]:
    return list(_METHODS)


def get_spec(name: str) -> MethodSpec:
    if name not in _METHODS:
        raise UserError(f"unknown method {name!r}; methods are {method_names()}")
    return _METHODS[name]


def method_sections() -> dict[str, type]:
    """Every registered section name -> its settings class: ``[personalise]``, the base sources' and the
    methods' sections (the config's sections beyond its core ones)."""
    return dict(_SECTIONS)


def federated_stages() -> dict[str, FederatedStage]:
    """Every registered stage by name: the base sources' and the methods' (a stage shared by several
    methods appears once)."""
    return {**_STAGES, **{s.stage.name: s.stage for s in _METHODS.values() if s.stage is not None}}


def get_stage(name: str) -> FederatedStage:
    stages = federated_stages()
    if name not in stages:
        raise UserError(f"unknown federated stage {name!r}; stages are {list(stages)}")
    return stages[name]


def default_config() -> SimpleNamespace:
    """A stand-in for a config with every registered section at its defaults (for ``get_method``
    without a config, e.g. in tests and notebooks)."""
    return SimpleNamespace(**{k: cls() for k, cls in _SECTIONS.items()})


def get_method(name: str, cfg=None, resources: dict | None = None, seed: int = 0):
    """The method object for a run: built from the config (``None``: every default) and its stage's
    resources (``{budget or None: resource}``)."""
    spec = get_spec(name)
    return spec.build(cfg if cfg is not None else default_config(), resources or {}, seed)


def build_dataclass(cls: type, raw: dict):
    """A (possibly nested) frozen settings dataclass from its ``dataclasses.asdict`` form."""
    import typing

    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            continue
        v, tp = raw[f.name], hints[f.name]
        values[f.name] = build_dataclass(tp, v) if dataclasses.is_dataclass(tp) and isinstance(v, dict) else v
    return cls(**values)
