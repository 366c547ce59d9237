"""The interface every personalisation method implements, and the ``[personalise]`` settings.

A method is a plain object with a ``name``, a flag saying whether it takes a rank budget,
and ``personalise(base, task, budget, p, seed) -> outputs``: it receives the client's
base model (never modified in place), the client's encoded train and test data, and returns
its outputs on the test split, which the client's task scores (``tasks``). It knows nothing about
federation or transport. Methods register themselves (``registry``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from torch import nn

from ..data.partition import POOLS
from ..errors import require
from ..schema import inline
from ..tasks import Task
from ..training import Recipe
from ..training.batches import EncodedData
from .registry import method_names, register_section


@dataclass
class ClientTask:
    """One client's encoded data, and the task that says how its outputs are scored."""

    client_id: str
    language: str
    train: EncodedData
    test: EncodedData
    problem: Task  # the task: encoding, batching, loss, prediction, scoring

    def score(self, outputs: list, data: EncodedData | None = None) -> tuple[str | list[str], dict[str, list[float]]]:
        """``(languages, {metric: per-row scores})`` of outputs on ``data`` (default: the test split); the
        languages are each row's where rows carry one (a Fed-Aya client may speak several), else the client's."""
        data = self.test if data is None else data
        return (data.languages if data.languages is not None else self.language), self.problem.score(outputs, data)


class Method(Protocol):
    name: str
    uses_budget: bool

    def personalise(self, base: nn.Module, task: ClientTask, budget: int | None, p: PersonaliseConfig,
                    seed: int) -> list[Any]:
        """The client's outputs on its test split: ``p`` is ``[personalise]`` (its ``recipe`` says how to
        fine-tune), ``seed`` the client's own (the pipeline derives it from the run's)."""
        ...


def client_base(base, client_id: str) -> nn.Module:
    """The model a client starts from: ``base.for_client(client_id)`` when ``base`` is a base source
    that may give clients different models (``bases``), else ``base`` itself."""
    return base.for_client(client_id) if hasattr(base, "for_client") else base


@dataclass(frozen=True)
class PersonaliseConfig:
    """``[personalise]``: what is personalised (methods, budgets, pools) and the fine-tuning recipe every
    method follows (``recipe``: its keys are written in this table; paper: AdamW 1e-4, 2 epochs, batch 32).
    A method's own keys are in its section (``[adalora]``, ``[none]``, ``[tuned]``, …)."""

    methods: list[str] = field(default_factory=lambda: ["none", "lora"])  # registered method names
    budgets: list[int] = field(default_factory=lambda: [2])  # rank budgets r
    pools: list[str] = field(default_factory=lambda: ["seen", "unseen"])
    eval_batch_size: int = 64
    recipe: Recipe = inline(Recipe)  # epochs, batch_size, lr, head_lr, weight_decay, max_grad_norm, head, lora_a_seed

    def __post_init__(self) -> None:
        for i, meth in enumerate(self.methods):
            require(meth in method_names(), f"methods[{i}]", f"unknown method {meth!r}; methods are {method_names()}")
        require(len(self.methods) > 0, "methods", "needs at least one method")
        for i, b in enumerate(self.budgets):
            require(b >= 1, f"budgets[{i}]", f"a rank budget must be >= 1, got {b}")
        for i, pool in enumerate(self.pools):
            require(pool in POOLS, f"pools[{i}]", f"unknown pool {pool!r}; pools are {list(POOLS)}")
        require(len(self.pools) > 0, "pools", "needs at least one pool")
        require(self.eval_batch_size >= 1, "eval_batch_size", "must be >= 1")

    def with_lr(self, lr: float) -> PersonaliseConfig:
        """The same settings with the recipe's adapter rate ``lr`` (a candidate rate, a chosen rate)."""
        return replace(self, recipe=self.recipe.with_lr(lr))


register_section("personalise", PersonaliseConfig)
