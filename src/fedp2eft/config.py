"""Experiment configuration: TOML files validated on load, with ``--set section.key=value`` overrides.

Every section is a frozen settings dataclass whose fields are its keys (type, default and a comment each)
and whose ``__post_init__`` validates them; a section may compose a shared settings class whose keys sit in
the section's own table (``[personalise]``'s fine-tuning recipe, ``schema.inline``). The core sections are declared here; ``[personalise]``
and every method's section come from the method registry (``methods.registry``), and ``[base_model]``
from the Standard-FL base source, so a new method's settings need no edit here. An unknown section or
key, a value of the wrong type or outside its range is rejected with an error that names the key; a key
that moved (``personalise.adalora_lr`` is ``adalora.lr``) is refused naming its new place, and a results
file written before it moved is read with the value moved (``migrate``).
"""

from __future__ import annotations

import dataclasses
import functools
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .data import get_dataset
from .data.partition import POOLS, SCHEMES
from .data.registry import specific_keys
from .errors import SettingError, UserError, require
from .methods.registry import (  # importing it fills the registry (methods/__init__)
    federated_stages,
    get_spec,
    method_sections,
    moved_keys,
)
from .models.classifier import POOLINGS
from .models.precision import PRECISIONS
from .schema import build_section, inline, section_dict, section_keys
from .tasks import TEMPLATES, task_names

REPLICATES = ("personalisation", "federation")  # what a seed varies: setup/replicates.py


TRACKERS = ("tensorboard", "mlflow", "wandb")

CHECKPOINTING = ("off", "base", "all")  # experiment.gradient_checkpointing

@dataclass(frozen=True)
class ExperimentConfig:
    name: str = "experiment"
    seeds: list[int] = field(default_factory=lambda: [0])
    output_dir: str = "runs/experiment"
    threads: int = 0  # torch intra-op threads; 0 leaves torch's default
    # "personalisation": every seed personalises one federation (one partition, base model, LoRA A);
    # "federation": seed S draws its own partition, base model, LoRA A and stages, in <out>/federation<S>/
    replicate: str = "personalisation"
    tracking: list[str] = field(default_factory=list)  # "tensorboard", "mlflow", "wandb" (``tracking``)
    tracking_dir: str = ""  # "" = <out>/tracking
    # recompute activations in the backward pass (models.memory_saving): "off", "base" (the base model's
    # stage, where the most parameters train), "all" (every local training); same results, less memory
    gradient_checkpointing: str = "off"
    # the forward passes' precision (models.precision): "fp32"; "bf16" (autocast, fp32 weights, optimiser and
    # merges); "auto" = bf16 where the device runs it natively (a bf16 GPU, a CPU with avx512_bf16/amx_bf16)
    precision: str = "fp32"

    def __post_init__(self) -> None:
        require(len(self.seeds) > 0, "seeds", "needs at least one seed")
        require(self.precision in PRECISIONS, "precision", f"must be one of {list(PRECISIONS)}")
        require(all(t in TRACKERS for t in self.tracking), "tracking", f"each must be one of {list(TRACKERS)}")
        require(len(set(self.tracking)) == len(self.tracking), "tracking", "trackers repeat")
        require(self.replicate in REPLICATES, "replicate", f"must be one of {list(REPLICATES)}")
        require(len(set(self.seeds)) == len(self.seeds), "seeds", "seeds repeat")
        require(self.threads >= 0, "threads", "must be >= 0")
        require(self.gradient_checkpointing in CHECKPOINTING, "gradient_checkpointing",
                f"must be one of {list(CHECKPOINTING)}")


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "masakhanews"  # a registered dataset (data.registry), or the name of your own TSV folder
    task: str = ""  # "" = the dataset's own task; else a registered task (tasks.registry)
    path: str = ""  # local folder; "" = $FEDP2EFT_DATA/<dataset>, then the hub
    languages: list[str] = field(default_factory=list)  # [] = every language
    clients_per_language: int = 10
    partition_seed: int = 0  # the same clients for every experiment seed and method
    dirichlet_alpha: float = 0.5
    partition: str = "class-split"  # "class-split": Dir(α) per class, unequal sizes; "client-mix": the authors' LDA
    train_per_pool: int = 0  # 0 = no cap (XNLI: 2000)
    test_per_pool: int = 0  # 0 = no cap (XNLI: 500)
    max_train_per_client: int = 0  # 0 = no cap; a reduction for quick runs
    max_test_per_client: int = 0
    min_train_per_client: int = 2
    max_length: int = 256
    num_clients: int = 0  # Fed-Aya: clients (0 = all annotators of the file; 38 simulated for rows without ids)
    unseen_clients: list[int] = field(default_factory=list)  # Fed-Aya: unseen client numbers ([] = 21-27, 34 of 38)
    label_column: str = ""  # a local TSV copy's label column ("" = the dataset's: category, label; own data: label)
    text_columns: list[str] = field(default_factory=list)  # text columns, joined ([] = the dataset's; own: text)
    pair_column: str = ""  # a second text segment ("" = the dataset's: XNLI hypothesis; own data: none)
    group_size: int = 0  # consecutive rows kept whole by the pool split (0 = the dataset's: XNLI 3, else 1)

    def __post_init__(self) -> None:
        require(self.clients_per_language >= 1, "clients_per_language", "must be >= 1")
        require(self.dirichlet_alpha > 0, "dirichlet_alpha", "must be > 0")
        require(self.partition in SCHEMES, "partition", f"must be one of {list(SCHEMES)}")
        for k in ("train_per_pool", "test_per_pool", "max_train_per_client", "max_test_per_client"):
            require(getattr(self, k) >= 0, k, "must be >= 0 (0 = no cap)")
        require(self.min_train_per_client >= 1, "min_train_per_client", "must be >= 1")
        require(self.max_length >= 8, "max_length", "must be >= 8")
        require(self.num_clients >= 0, "num_clients", "must be >= 0 (0 = the dataset's own)")
        require(all(i >= 0 for i in self.unseen_clients), "unseen_clients", "client numbers are >= 0")
        require(self.group_size >= 0, "group_size", "must be >= 0 (0 = the dataset's)")
        require(all(isinstance(c, str) and c for c in self.text_columns), "text_columns", "must be column names")
        require(not self.task or self.task in task_names(), "task", f"must be one of {task_names()} (or \"\")")
        own = set(get_dataset(self.dataset).keys)
        defaults = type(self).__dataclass_fields__
        for key, readers in specific_keys().items():
            d = defaults[key]
            default = d.default_factory() if d.default_factory is not dataclasses.MISSING else d.default
            require(key in own or getattr(self, key) == default, key,
                    f"is not read by dataset {self.dataset!r} (only by {', '.join(sorted(set(readers)))})")


@dataclass(frozen=True)
class GenerationConfig:
    """Instruction-tuned generation (Fed-Aya): the prompt and greedy decoding."""

    template: str = "auto"  # "alpaca" (FedLLM-Bench, the authors), "chat" (the tokenizer's), "auto": chat if it has one
    max_new_tokens: int = 64  # greedy decoding length (authors: 1024)
    max_prompt_fraction: float = 0.5  # the instruction is cut to this share of data.max_length tokens

    def __post_init__(self) -> None:
        require(self.template in TEMPLATES, "template", f"must be one of {list(TEMPLATES)}")
        require(self.max_new_tokens >= 1, "max_new_tokens", "must be >= 1")
        require(0 < self.max_prompt_fraction < 1, "max_prompt_fraction", "must be in (0, 1)")


@dataclass(frozen=True)
class ModelConfig:
    name: str = "e5-small"
    pooling: str = ""  # "" = mean for encoders, last for decoders

    def __post_init__(self) -> None:
        require(self.pooling in ("", *POOLINGS), "pooling", f"must be one of {['', *POOLINGS]}")
        require(bool(self.name), "name", "must not be empty")


@dataclass(frozen=True)
class RoundSettings:
    """How every federated round samples, waits, tolerates failures, checkpoints and evaluates (keys in
    ``[federation]``; the server loop, ``fl.server_loop``, runs with them)."""

    fraction: float = 0.1  # of the seen pool sampled per round
    min_clients: int = 2
    client_timeout_s: float = 600.0
    max_failure_fraction: float = 0.5
    checkpoint_every: int = 10
    eval_pool: str = ""  # "", "seen" or "unseen": federated evaluation of the global model
    eval_every: int = 0

    def __post_init__(self) -> None:
        require(0 < self.fraction <= 1, "fraction", "must be in (0, 1]")
        require(self.min_clients >= 1, "min_clients", "must be >= 1")
        require(self.client_timeout_s > 0, "client_timeout_s", "must be > 0")
        require(0 <= self.max_failure_fraction <= 1, "max_failure_fraction", "must be in [0, 1]")
        require(self.checkpoint_every >= 1, "checkpoint_every", "must be >= 1")
        require(self.eval_pool in ("", *POOLS), "eval_pool", f"must be one of {['', *POOLS]}")
        require(self.eval_every >= 0, "eval_every", "must be >= 0")


@dataclass(frozen=True)
class Aggregation:
    """How each stage's server combines its clients' updates (keys in ``[federation]``): a Flower strategy
    and its own parameters (``fl.strategies`` checks both before anything trains), per-stage choices, and
    the screen every update passes first."""

    strategy: str = "fedavg"  # fedavg, fedprox, fedadam, fedyogi, fedadagrad, fedavgm, fedmedian, fedtrimmedavg, krum
    strategy_args: dict[str, Any] = field(default_factory=dict)  # its parameters, e.g. {eta = 0.01} (Flower's names)
    stage_strategies: dict[str, Any] = field(default_factory=dict)  # per stage, e.g. {psg = {strategy = "fedadam"}}
    max_update_norm_ratio: float = 1000.0  # refuse an update above this x the median of the round's others; 0 = off

    def __post_init__(self) -> None:
        require(bool(self.strategy), "strategy", "must name a strategy")
        require(isinstance(self.strategy_args, dict), "strategy_args", "must be a table")
        require(isinstance(self.stage_strategies, dict), "stage_strategies", "must be a table of stage = {strategy, "
                "strategy_args}")
        for stage, choice in self.stage_strategies.items():
            require(isinstance(choice, dict) and set(choice) <= {"strategy", "strategy_args"} and choice,
                    "stage_strategies", f"{stage}: must be a table with strategy and/or strategy_args")
            require(isinstance(choice.get("strategy_args", {}), dict), "stage_strategies",
                    f"{stage}.strategy_args: must be a table")
        require(self.max_update_norm_ratio == 0 or self.max_update_norm_ratio > 1, "max_update_norm_ratio",
                "must be 0 (off) or > 1")

    def for_stage(self, stage: str) -> tuple[str, dict[str, Any]]:
        """``(strategy, its parameters)`` of ``stage``: its own entry, else the federation's."""
        own = self.stage_strategies.get(stage, {})
        name = own.get("strategy", self.strategy)
        args = own.get("strategy_args", self.strategy_args if name == self.strategy else {})
        return name, dict(args)

    def is_default(self, stage: str) -> bool:
        """Plain FedAvg with the default screen: what every stage trained with before strategies existed."""
        return self.for_stage(stage) == ("fedavg", {}) and self.max_update_norm_ratio == 1000.0


DP_MODES = ("off", "client-fixed", "server-fixed", "client-adaptive", "server-adaptive")


@dataclass(frozen=True)
class Privacy:
    """Central differential privacy for every stage (keys in ``[federation]``; ``fl.strategies`` wraps the
    stage's strategy with Flower's DP wrapper and the clients apply Flower's clipping mod): each update is
    clipped to ``dp_clipping_norm`` C (on the client, or on the server), the unweighted mean of the round's
    k updates gets Gaussian noise of std z·C/k (z = ``dp_noise_multiplier``), and an RDP accountant
    (Flower's, over ``dp-accounting``) tracks (ε, δ) over the rounds."""

    dp: str = "off"  # off, client-fixed, server-fixed, client-adaptive, server-adaptive
    dp_noise_multiplier: float = 1.0  # z
    dp_clipping_norm: float = 1.0  # C (adaptive clipping: its starting value)
    dp_target_delta: float = 1e-5  # the δ at which ε is reported
    dp_target_epsilon: float = 0.0  # > 0: a stage whose ε after all its rounds would exceed it is refused
    dp_target_clipped_quantile: float = 0.5  # adaptive clipping (Andrew et al. 2021)
    dp_clip_norm_lr: float = 0.2  # adaptive clipping
    dp_clipped_count_stddev: float = 0.0  # adaptive clipping; 0 = Flower's default (k / 20)

    def __post_init__(self) -> None:
        require(self.dp in DP_MODES, "dp", f"must be one of {list(DP_MODES)}")
        require(self.dp_noise_multiplier > 0, "dp_noise_multiplier", "must be > 0")
        require(self.dp_clipping_norm > 0, "dp_clipping_norm", "must be > 0")
        require(0 < self.dp_target_delta < 1, "dp_target_delta", "must be in (0, 1)")
        require(self.dp_target_epsilon >= 0, "dp_target_epsilon", "must be >= 0 (0 = no limit)")
        require(0 <= self.dp_target_clipped_quantile <= 1, "dp_target_clipped_quantile", "must be in [0, 1]")
        require(self.dp_clip_norm_lr > 0, "dp_clip_norm_lr", "must be > 0")
        require(self.dp_clipped_count_stddev >= 0, "dp_clipped_count_stddev", "must be >= 0")

    @property
    def enabled(self) -> bool:
        return self.dp != "off"


@dataclass(frozen=True)
class SecureAggregation:
    """Flower's SecAgg+ for every stage's updates (keys in ``[federation]``; ``fl.secure_aggregation``): the
    server learns only the weighted mean. Shares and threshold: a count, or a fraction of the round's clients."""

    secure_aggregation: bool = False
    secagg_num_shares: float = 1.0  # each client's secret is shared with this many (<= 1: fraction) others
    secagg_reconstruction_threshold: float = 0.7  # shares needed to unmask (<= 1: fraction of num_shares)
    secagg_max_weight: float = 1000.0  # the largest num-examples a client weighs (quantisation scale)
    secagg_clipping_range: float = 8.0  # each update coordinate is clipped to +-this before quantising
    secagg_quantization_range: int = 4194304  # quantisation levels (2^22)

    def __post_init__(self) -> None:
        require(self.secagg_num_shares > 0, "secagg_num_shares", "must be > 0")
        require(self.secagg_reconstruction_threshold > 0, "secagg_reconstruction_threshold", "must be > 0")
        require(self.secagg_max_weight > 0, "secagg_max_weight", "must be > 0")
        require(self.secagg_clipping_range > 0, "secagg_clipping_range", "must be > 0")
        require(self.secagg_quantization_range >= 2, "secagg_quantization_range", "must be >= 2")


@dataclass(frozen=True)
class FederationConfig:
    engine: str = "inprocess"  # "inprocess" | "simulation" | "deployment"
    round: RoundSettings = inline(RoundSettings)  # fraction, min_clients, timeouts, checkpoints, evaluation
    aggregation: Aggregation = inline(Aggregation)  # strategy, strategy_args, stage_strategies, update screen
    privacy: Privacy = inline(Privacy)  # dp, dp_noise_multiplier, dp_clipping_norm, dp_target_delta/epsilon, ...
    secure: SecureAggregation = inline(SecureAggregation)  # secure_aggregation, secagg_* (SecAgg+)
    num_cpus: float = 1.0  # simulation: per-client resources
    num_gpus: float = 0.0

    def __post_init__(self) -> None:
        require(self.engine in ("inprocess", "simulation", "deployment"), "engine",
                "must be 'inprocess', 'simulation' or 'deployment'")


CORE_SECTIONS: dict[str, type] = {"experiment": ExperimentConfig, "data": DataConfig, "model": ModelConfig,
                                  "generation": GenerationConfig}


def _sections() -> dict[str, type]:
    """Every section in file order: the core ones, ``[personalise]``, ``[base_model]``, ``[federation]``,
    then the methods' (all but the core ones and ``[federation]`` come from the registry)."""
    registered = method_sections()
    ordered = {**CORE_SECTIONS, "personalise": registered.pop("personalise"),
               "base_model": registered.pop("base_model"), "federation": FederationConfig}
    return {**ordered, **registered}


def _to_dict(self) -> dict[str, Any]:
    """The config as TOML-shaped data: one flat table per section."""
    return {f.name: section_dict(getattr(self, f.name)) for f in dataclasses.fields(self)}


@functools.lru_cache(maxsize=8)
def _config_class(sections: tuple[tuple[str, type], ...]) -> type:
    return dataclasses.make_dataclass(
        "Config",
        [(name, cls, field(default_factory=cls)) for name, cls in sections],
        namespace={"to_dict": _to_dict, "__doc__": "The whole experiment: one attribute per section.",
                   "__module__": __name__},
    )


def config_class() -> type:
    """The config class for the sections registered now (a method registered later, e.g. by a plug-in,
    brings its section with it)."""
    return _config_class(tuple(_sections().items()))


Config = config_class()  # for annotations; ``from_dict`` always builds with the current registry


def _check_type(key: str, value: Any, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin is list:
        (inner,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise UserError(f"config key {key}: expected a list, got {value!r}")
        return [_check_type(f"{key}[{i}]", v, inner) for i, v in enumerate(value)]
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"config key {key}: expected a number, got {value!r}")
        if value != value:
            raise UserError(f"config key {key}: NaN is not allowed")
        return float(value)
    if tp is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise UserError(f"config key {key}: expected an integer, got {value!r}")
    if tp is bool and not isinstance(value, bool):
        raise UserError(f"config key {key}: expected true or false, got {value!r}")
    if tp is str and not isinstance(value, str):
        raise UserError(f"config key {key}: expected a string, got {value!r}")
    return value


def _section_types(cls) -> dict[str, Any]:
    return section_keys(cls)


def migrate(raw: dict[str, Any]) -> dict[str, Any]:
    """A stored config (a results file's) with every moved key put in its new place (a copy)."""
    out = {s: dict(sec) if isinstance(sec, dict) else sec for s, sec in raw.items()}
    for old, new in moved_keys().items():
        (osec, okey), (nsec, nkey) = old.split("."), new.split(".")
        if isinstance(out.get(osec), dict) and okey in out[osec]:
            out.setdefault(nsec, {}).setdefault(nkey, out[osec][okey])
            del out[osec][okey]
    return out


def from_dict(raw: dict[str, Any]) -> Config:
    sections = _sections()
    values: dict[str, Any] = {}
    for sname, given in raw.items():
        if sname not in sections:
            raise UserError(f"unknown config section [{sname}]; sections are {sorted(sections)}")
        if not isinstance(given, dict):
            raise UserError(f"config section [{sname}] must be a table")
        types = _section_types(sections[sname])
        checked = {}
        for key, value in given.items():
            if f"{sname}.{key}" in moved_keys():
                raise UserError(f"config key {sname}.{key} has moved: set {moved_keys()[f'{sname}.{key}']} instead")
            if key not in types:
                raise UserError(f"unknown config key {sname}.{key}; keys of [{sname}] are {sorted(types)}")
            checked[key] = _check_type(f"{sname}.{key}", value, types[key])
        try:
            values[sname] = build_section(sections[sname], checked)
        except SettingError as exc:
            raise UserError(f"config key {sname}.{exc.key}: {exc.reason}") from None
    cfg = config_class()(**values)
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Checks across sections (each section validates its own keys): every budget within what each
    chosen method serves (e.g. one PSG serves budgets <= its r_init); per-stage strategies name stages."""
    stages = federated_stages()
    for stage in cfg.federation.aggregation.stage_strategies:
        if stage not in stages:
            raise UserError(f"config key federation.stage_strategies: unknown stage {stage!r}; stages are "
                            f"{sorted(stages)}")
    p = cfg.personalise
    for method in p.methods:
        limit = get_spec(method).max_budget
        if limit is None:
            continue
        key, most = limit(cfg)
        for i, b in enumerate(p.budgets):
            if b > most:
                raise UserError(f"config key personalise.budgets[{i}]: budget {b} exceeds {key} = {most} "
                                f"(method {method} serves budgets <= {most})")


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise UserError(f"--set {item!r}: expected section.key=value")
    key, text = item.split("=", 1)
    parts = key.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise UserError(f"--set {item!r}: key must be section.key")
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text
    return parts, value


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"config file not found: {path}")
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise UserError(f"{path}: invalid TOML ({exc})") from None
    return from_dict(apply_overrides(raw, overrides or []))


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``raw`` (a config's dict form) with each ``section.key=value`` override set (in place)."""
    for item in overrides:
        (section, key), value = parse_override(item)
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise UserError(f"--set {item!r}: [{section}] is not a table")
        raw[section][key] = value
    return raw
