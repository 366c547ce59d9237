"""Experiment configuration: TOML files validated on load, with ``--set section.key=value`` overrides.

Every key is declared below with its type and default; an unknown section or key, a value of
the wrong type or outside its range is rejected with an error that names the key.
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UserError


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    seeds: list[int] = field(default_factory=lambda: [0])
    output_dir: str = "runs/experiment"
    threads: int = 0  # torch intra-op threads; 0 leaves torch's default


@dataclass
class DataConfig:
    dataset: str = "masakhanews"
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


@dataclass
class ModelConfig:
    name: str = "e5-small"
    pooling: str = ""  # "" = mean for encoders, last for decoders


@dataclass
class PersonaliseConfig:
    methods: list[str] = field(default_factory=lambda: ["none", "lora"])
    budgets: list[int] = field(default_factory=lambda: [2])
    pools: list[str] = field(default_factory=lambda: ["seen", "unseen"])
    epochs: int = 2
    batch_size: int = 32
    lr: float = 1e-4
    head_lr: float = 1e-4
    weight_decay: float = 0.0
    eval_batch_size: int = 64
    none_trains_head: bool = True
    adalora_lr: float = 1e-3  # AdaLoRA's own rate (paper)
    adalora_alpha: int = 0  # 0 = 2 · budget, as LoRA; the authors' AdaLoRA leaves peft's default 8
    # The authors' recipe (paper protocol: head = "adapter", max_grad_norm = 1.0, lora_a_seed = 42):
    head: str = "train"  # "train": head trained at head_lr; "adapter": LoRA on the head too, head weights frozen
    max_grad_norm: float = 0.0  # > 0 clips the gradient norm when fine-tuning (HF Trainer default 1.0)
    lora_a_seed: int = -1  # >= 0: one fixed LoRA A per module for every round, client and personalisation
    tune_lrs: list[float] = field(default_factory=lambda: [1e-4, 3e-4, 1e-3, 3e-3])  # lora-tuned's candidates
    tune_fraction: float = 0.2  # lora-tuned: share of each client's train split held out for validation


@dataclass
class BaseModelConfig:
    """How the base model that personalisation starts from is obtained."""

    kind: str = "off-the-shelf"  # "off-the-shelf" | "standard-fl" | a folder written by a previous run
    mode: str = "full"  # standard-fl: "full" (FedAvg of full fine-tuning) | "lora" (FedAvg of LoRA, merged)
    rounds: int = 100
    local_epochs: int = 2
    batch_size: int = 32
    lr: float = 5e-5
    freeze_embeddings: bool = False
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    seed: int = 0  # the base model is one artefact shared by every experiment seed


@dataclass
class FederationConfig:
    engine: str = "inprocess"  # "inprocess" | "simulation" | "deployment"
    fraction: float = 0.1  # of the seen pool sampled per round
    min_clients: int = 2
    client_timeout_s: float = 600.0
    max_failure_fraction: float = 0.5
    checkpoint_every: int = 10
    eval_pool: str = ""  # "", "seen" or "unseen": federated evaluation of the global model
    eval_every: int = 0
    num_cpus: float = 1.0  # simulation: per-client resources
    num_gpus: float = 0.0


@dataclass
class FedP2EFTConfig:
    """PSG federated training (FedP²EFT Alg. 1) and BT-LoRA settings (authors' defaults)."""

    rounds: int = 150
    r_init: int = 32
    lora_alpha: int = 64
    alpha_s: float = 100.0
    alpha_p: float = 0.01
    lambda_lr: float = 0.01
    lr: float = 1e-4  # A, B during stage 1
    head_lr: float = 1e-4
    local_epochs: int = 2
    batch_size: int = 32
    regress_steps: int = 10
    regress_lr: float = 1e-4
    regress_loss: str = "sum"  # stage-2 L1 over the PSG outputs: "sum" (authors) or "mean"
    psg_init: float = 1e-4  # the untrained PSG's λ̂ (authors: 1e-4, BT-LoRA's initial λ)
    snapshot_every: int = 0  # > 0: keep the PSG of every k-th round in psg/seed<S>/snapshots/


@dataclass
class FedL2PConfig:
    """FedL2P's federated learning-rate generator (one training per budget; authors' meta settings).
    Its inner fine-tuning uses ``personalise`` epochs, batch size and head lr: it learns the rates of
    exactly the fine-tuning it is evaluated with."""

    rounds: int = 150
    base_lr: float = 0.0  # initial per-matrix base rate; 0 = personalise.lr
    outer_steps: int = 3
    batch_pairs: int = 16
    neumann_terms: int = 3
    neumann_lr: float = 0.1
    net_lr: float = 1e-4
    base_lr_lr: float = 1e-6
    val_fraction: float = 0.2


@dataclass
class PF2LoRAConfig:
    """PF2LoRA's federated bilevel training (one training per budget; level-1 rank = the budget)."""

    rounds: int = 150
    local_rank: int = 0  # level-2 rank r̃; 0 = ceil(budget / 4) (authors: r = 8, r̃ = 2)
    lr: float = 1e-4  # level 1 (A, B), AdamW
    head_lr: float = 1e-4
    lower_lr: float = 1e-2  # level 2 (C_k, D_k), SGD
    steps: int = 10  # upper steps per round
    inner_steps: int = 1  # lower steps before each upper step
    batch_size: int = 32


@dataclass
class Config:
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    personalise: PersonaliseConfig = field(default_factory=PersonaliseConfig)
    base_model: BaseModelConfig = field(default_factory=BaseModelConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    fedp2eft: FedP2EFTConfig = field(default_factory=FedP2EFTConfig)
    # method "fedp2eft-paper": a second PSG, trained with these settings (defaults: the authors')
    fedp2eft_paper: FedP2EFTConfig = field(default_factory=FedP2EFTConfig)
    fedl2p: FedL2PConfig = field(default_factory=FedL2PConfig)
    pf2lora: PF2LoRAConfig = field(default_factory=PF2LoRAConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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
    return typing.get_type_hints(cls)


def from_dict(raw: dict[str, Any]) -> Config:
    cfg = Config()
    sections = _section_types(Config)
    for sname, values in raw.items():
        if sname not in sections:
            raise UserError(f"unknown config section [{sname}]; sections are {sorted(sections)}")
        if not isinstance(values, dict):
            raise UserError(f"config section [{sname}] must be a table")
        section = getattr(cfg, sname)
        types = _section_types(type(section))
        for key, value in values.items():
            if key not in types:
                raise UserError(f"unknown config key {sname}.{key}; keys of [{sname}] are {sorted(types)}")
            setattr(section, key, _check_type(f"{sname}.{key}", value, types[key]))
    validate(cfg)
    return cfg


def _require(ok: bool, key: str, msg: str) -> None:
    if not ok:
        raise UserError(f"config key {key}: {msg}")


def validate(cfg: Config) -> None:
    from .data.partition import POOLS, SCHEMES
    from .methods.base import METHODS
    from .methods.fedp2eft import REGRESS_LOSSES
    from .methods.training import HEAD_MODES
    from .models.classifier import POOLINGS

    e, d, m, p = cfg.experiment, cfg.data, cfg.model, cfg.personalise
    _require(len(e.seeds) > 0, "experiment.seeds", "needs at least one seed")
    _require(len(set(e.seeds)) == len(e.seeds), "experiment.seeds", "seeds repeat")
    _require(e.threads >= 0, "experiment.threads", "must be >= 0")
    _require(d.clients_per_language >= 1, "data.clients_per_language", "must be >= 1")
    _require(d.dirichlet_alpha > 0, "data.dirichlet_alpha", "must be > 0")
    _require(d.partition in SCHEMES, "data.partition", f"must be one of {list(SCHEMES)}")
    for k in ("train_per_pool", "test_per_pool", "max_train_per_client", "max_test_per_client"):
        _require(getattr(d, k) >= 0, f"data.{k}", "must be >= 0 (0 = no cap)")
    _require(d.min_train_per_client >= 1, "data.min_train_per_client", "must be >= 1")
    _require(d.max_length >= 8, "data.max_length", "must be >= 8")
    _require(m.pooling in ("", *POOLINGS), "model.pooling", f"must be one of {['', *POOLINGS]}")
    _require(bool(m.name), "model.name", "must not be empty")
    for i, meth in enumerate(p.methods):
        _require(meth in METHODS, f"personalise.methods[{i}]", f"unknown method {meth!r}; methods are {list(METHODS)}")
    _require(len(p.methods) > 0, "personalise.methods", "needs at least one method")
    for i, b in enumerate(p.budgets):
        _require(b >= 1, f"personalise.budgets[{i}]", f"a rank budget must be >= 1, got {b}")
    for i, pool in enumerate(p.pools):
        _require(pool in POOLS, f"personalise.pools[{i}]", f"unknown pool {pool!r}; pools are {list(POOLS)}")
    _require(len(p.pools) > 0, "personalise.pools", "needs at least one pool")
    for k in ("epochs", "batch_size", "eval_batch_size"):
        _require(getattr(p, k) >= 1, f"personalise.{k}", "must be >= 1")
    for k in ("lr", "head_lr", "adalora_lr"):
        _require(getattr(p, k) > 0, f"personalise.{k}", "must be > 0")
    _require(p.weight_decay >= 0, "personalise.weight_decay", "must be >= 0")
    _require(p.adalora_alpha >= 0, "personalise.adalora_alpha", "must be >= 0 (0 = 2 · budget)")
    _require(p.head in HEAD_MODES, "personalise.head", f"must be one of {list(HEAD_MODES)}")
    _require(p.max_grad_norm >= 0, "personalise.max_grad_norm", "must be >= 0 (0 = no clipping)")
    _require(p.lora_a_seed >= -1, "personalise.lora_a_seed", "must be >= 0, or -1 for a fresh random A")
    _require(len(p.tune_lrs) > 0 and all(x > 0 for x in p.tune_lrs), "personalise.tune_lrs",
             "needs at least one rate, all > 0")
    _require(0 < p.tune_fraction < 1, "personalise.tune_fraction", "must be in (0, 1)")
    b, f = cfg.base_model, cfg.federation
    _require(b.mode in ("full", "lora"), "base_model.mode", "must be 'full' or 'lora'")
    for k in ("rounds", "local_epochs", "batch_size", "lora_rank", "lora_alpha"):
        _require(getattr(b, k) >= 1, f"base_model.{k}", "must be >= 1")
    _require(b.lr > 0, "base_model.lr", "must be > 0")
    _require(0 <= b.lora_dropout < 1, "base_model.lora_dropout", "must be in [0, 1)")
    _require(f.engine in ("inprocess", "simulation", "deployment"), "federation.engine",
             "must be 'inprocess', 'simulation' or 'deployment'")
    _require(0 < f.fraction <= 1, "federation.fraction", "must be in (0, 1]")
    _require(f.min_clients >= 1, "federation.min_clients", "must be >= 1")
    _require(f.client_timeout_s > 0, "federation.client_timeout_s", "must be > 0")
    _require(0 <= f.max_failure_fraction <= 1, "federation.max_failure_fraction", "must be in [0, 1]")
    _require(f.checkpoint_every >= 1, "federation.checkpoint_every", "must be >= 1")
    _require(f.eval_pool in ("", *POOLS), "federation.eval_pool", f"must be one of {['', *POOLS]}")
    _require(f.eval_every >= 0, "federation.eval_every", "must be >= 0")
    for sec in ("fedp2eft", "fedp2eft_paper"):
        q = getattr(cfg, sec)
        for k in ("rounds", "r_init", "lora_alpha", "local_epochs", "batch_size", "regress_steps"):
            _require(getattr(q, k) >= 1, f"{sec}.{k}", "must be >= 1")
        for k in ("lambda_lr", "lr", "head_lr", "regress_lr"):
            _require(getattr(q, k) > 0, f"{sec}.{k}", "must be > 0")
        for k in ("alpha_s", "alpha_p"):
            _require(getattr(q, k) >= 0, f"{sec}.{k}", "must be >= 0")
        _require(q.regress_loss in REGRESS_LOSSES, f"{sec}.regress_loss", f"must be one of {list(REGRESS_LOSSES)}")
        _require(1e-4 <= q.psg_init <= 1000, f"{sec}.psg_init", "must be in [1e-4, 1000] (λ's range)")
        _require(q.snapshot_every >= 0, f"{sec}.snapshot_every", "must be >= 0 (0 = none)")
    fl, pf = cfg.fedl2p, cfg.pf2lora
    for k in ("rounds", "outer_steps", "batch_pairs", "neumann_terms"):
        _require(getattr(fl, k) >= 1, f"fedl2p.{k}", "must be >= 1")
    for k in ("neumann_lr", "net_lr", "base_lr_lr"):
        _require(getattr(fl, k) > 0, f"fedl2p.{k}", "must be > 0")
    _require(fl.base_lr >= 0, "fedl2p.base_lr", "must be >= 0 (0 = personalise.lr)")
    _require(0 < fl.val_fraction < 1, "fedl2p.val_fraction", "must be in (0, 1)")
    for k in ("rounds", "steps", "inner_steps", "batch_size"):
        _require(getattr(pf, k) >= 1, f"pf2lora.{k}", "must be >= 1")
    _require(pf.local_rank >= 0, "pf2lora.local_rank", "must be >= 0 (0 = ceil(budget / 4))")
    for k in ("lr", "head_lr", "lower_lr"):
        _require(getattr(pf, k) > 0, f"pf2lora.{k}", "must be > 0")
    for method, sec in (("fedp2eft", "fedp2eft"), ("fedp2eft-mean1", "fedp2eft"), ("fedp2eft-tuned", "fedp2eft"),
                        ("fedp2eft-paper", "fedp2eft_paper")):
        if method in p.methods:
            r_init = getattr(cfg, sec).r_init
            for i, b in enumerate(p.budgets):
                _require(b <= r_init, f"personalise.budgets[{i}]",
                         f"budget {b} exceeds {sec}.r_init = {r_init} (one PSG serves budgets <= r_init)")


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
    for item in overrides or []:
        (section, key), value = parse_override(item)
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise UserError(f"--set {item!r}: [{section}] is not a table")
        raw[section][key] = value
    return from_dict(raw)
