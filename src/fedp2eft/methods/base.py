"""The interface every personalisation method implements, and the ``[personalise]`` settings.

A method is a plain object with a ``name``, a flag saying whether it takes a rank budget,
and ``personalise(base, task, budget, settings) -> outputs``: it receives the client's
base model (never modified in place), the client's encoded train and test data, and returns
its outputs on the test split, which the client's task scores (``tasks``). It knows nothing about
federation or transport. Methods register themselves (``registry``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from torch import nn

from ..data.partition import POOLS
from ..errors import require
from ..tasks import Task
from ..training import HEAD_MODES
from ..training.batches import EncodedData
from .registry import method_names, register_section


@dataclass(frozen=True)
class TrainSettings:
    """Local fine-tuning hyperparameters (paper defaults: AdamW 1e-4, 2 epochs, batch 32)."""

    epochs: int = 2
    batch_size: int = 32
    lr: float = 1e-4
    head_lr: float = 1e-4
    weight_decay: float = 0.0
    eval_batch_size: int = 64
    seed: int = 0
    none_trains_head: bool = True
    head: str = "train"  # "train": the head is trained at head_lr; "adapter": adapted like every linear layer, frozen
    max_grad_norm: float = 0.0  # > 0: clip the gradient norm (authors: 1.0, the HF Trainer default)
    lora_a_seed: int = -1  # >= 0: one fixed LoRA A per module (authors: 42); -1: a fresh random A per client

    def param_groups(self, adapter: list, head: list, adapter_lr: float | None = None) -> list[dict]:
        """AdamW groups: the adapter at ``adapter_lr`` (default ``lr``), a trained head at ``head_lr``."""
        return [{"params": adapter, "lr": self.lr if adapter_lr is None else adapter_lr},
                {"params": head, "lr": self.head_lr}]


@dataclass
class ClientTask:
    """One client's encoded data, and the task that says how its outputs are scored."""

    client_id: str
    language: str
    train: EncodedData
    test: EncodedData
    kind: Task  # the task: encoding, batching, loss, prediction, scoring

    def score(self, outputs: list, data: EncodedData | None = None) -> tuple[str | list[str], dict[str, list[float]]]:
        """``(languages, {metric: per-row scores})`` of outputs on ``data`` (default: the test split); the
        languages are each row's where rows carry one (a Fed-Aya client may speak several), else the client's."""
        data = self.test if data is None else data
        return (data.languages if data.languages is not None else self.language), self.kind.score(outputs, data)


class Method(Protocol):
    name: str
    uses_budget: bool

    def personalise(self, base: nn.Module, task: ClientTask, budget: int | None, settings: TrainSettings) -> list[Any]:
        ...


def client_base(base, client_id: str) -> nn.Module:
    """The model a client starts from: ``base.for_client(client_id)`` when ``base`` is a base source
    that may give clients different models (``bases``), else ``base`` itself."""
    return base.for_client(client_id) if hasattr(base, "for_client") else base


@dataclass
class PersonaliseConfig:
    """``[personalise]``: what is personalised and how every method fine-tunes a client (paper: AdamW
    1e-4, 2 epochs, batch 32). ``train_settings(seed)`` gives one run's :class:`TrainSettings`."""

    methods: list[str] = field(default_factory=lambda: ["none", "lora"])  # registered method names
    budgets: list[int] = field(default_factory=lambda: [2])  # rank budgets r
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
    tune_lrs: list[float] = field(default_factory=lambda: [1e-4, 3e-4, 1e-3, 3e-3])  # *-tuned's candidates
    tune_fraction: float = 0.2  # *-tuned: share of each client's train split held out for validation

    def __post_init__(self) -> None:
        for i, meth in enumerate(self.methods):
            require(meth in method_names(), f"methods[{i}]", f"unknown method {meth!r}; methods are {method_names()}")
        require(len(self.methods) > 0, "methods", "needs at least one method")
        for i, b in enumerate(self.budgets):
            require(b >= 1, f"budgets[{i}]", f"a rank budget must be >= 1, got {b}")
        for i, pool in enumerate(self.pools):
            require(pool in POOLS, f"pools[{i}]", f"unknown pool {pool!r}; pools are {list(POOLS)}")
        require(len(self.pools) > 0, "pools", "needs at least one pool")
        for k in ("epochs", "batch_size", "eval_batch_size"):
            require(getattr(self, k) >= 1, k, "must be >= 1")
        for k in ("lr", "head_lr", "adalora_lr"):
            require(getattr(self, k) > 0, k, "must be > 0")
        require(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        require(self.adalora_alpha >= 0, "adalora_alpha", "must be >= 0 (0 = 2 · budget)")
        require(self.head in HEAD_MODES, "head", f"must be one of {list(HEAD_MODES)}")
        require(self.max_grad_norm >= 0, "max_grad_norm", "must be >= 0 (0 = no clipping)")
        require(self.lora_a_seed >= -1, "lora_a_seed", "must be >= 0, or -1 for a fresh random A")
        require(len(self.tune_lrs) > 0 and all(x > 0 for x in self.tune_lrs), "tune_lrs",
                "needs at least one rate, all > 0")
        require(0 < self.tune_fraction < 1, "tune_fraction", "must be in (0, 1)")

    def train_settings(self, seed: int) -> TrainSettings:
        """One run's fine-tuning settings (``seed`` is the run's; clients derive theirs from it)."""
        return TrainSettings(
            epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, head_lr=self.head_lr,
            weight_decay=self.weight_decay, eval_batch_size=self.eval_batch_size, seed=seed,
            none_trains_head=self.none_trains_head, head=self.head, max_grad_norm=self.max_grad_norm,
            lora_a_seed=self.lora_a_seed,
        )


register_section("personalise", PersonaliseConfig)
