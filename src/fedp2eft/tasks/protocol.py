"""What a task is: everything about the problem that methods must not assume.

A task says how rows become model inputs (``encode``), which model to build (``load_model``), which
modules adapters target and which train as themselves (``adapted_modules`` / ``saved_modules``), the
training loss, how rows batch (the ``collate`` its ``encode`` gives the data), how a model's outputs on a
split are produced (``predict``; ``probe``: with only the head fitted) and how they score
against the split's references, row by row and metric by metric (``score``: ``{metric: [per-row
score]}``, ``metrics`` in report order, the first the primary one; a language's score is the mean over
all its rows in a pool). Methods call these and never look at labels themselves: classification and
instruction-tuned generation (``generation``) plug in alike.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

from ..training.batches import EncodedData


class Task(Protocol):
    name: str
    metric: str  # the primary metric, e.g. "accuracy" ("meteor" for generation)
    metrics: tuple[str, ...]  # every metric ``score`` returns, the primary first

    def encode(self, tokenizer, examples: list, max_length: int) -> EncodedData: ...

    def load_model(self, source: str, num_labels: int, pooling: str | None = None) -> tuple[nn.Module, Any]: ...

    def adapted_modules(self, model: nn.Module, head: str = "train") -> list[str]: ...

    def saved_modules(self, head: str = "train") -> list[str] | None: ...

    def loss(self, outputs: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor: ...

    def predict(self, model: nn.Module, data: EncodedData, batch_size: int = 64) -> list[Any]: ...

    def probe(self, model: nn.Module, train: EncodedData, test: EncodedData, p, seed: int) -> list[Any]:
        """``none`` with ``[none] trains_head``: the model with its head alone fitted on ``train`` (a linear
        probe; ``p`` is ``[personalise]``: its recipe's head rate, epochs, batch size; ``seed``), predicting
        ``test``."""
        ...

    def score(self, outputs: list[Any], data: EncodedData) -> dict[str, list[float]]: ...
