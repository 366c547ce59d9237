"""Sequence classification (MasakhaNEWS topics, XNLI): the first task.

Rows are ``Example``s with an integer label; the model is ``models.SequenceClassifier`` (a backbone,
pooling and a linear ``head``); the loss is cross-entropy; outputs are predicted labels (argmax);
a row scores 1 when its prediction is its label, so a language's score is its accuracy.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..training import adapted_modules, device_of, encode, model_inputs, saved_modules, to_device
from ..training.batches import EncodedData


def cross_entropy(outputs: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return F.cross_entropy(outputs, batch["labels"])


@torch.no_grad()
def predict(model: nn.Module, data: EncodedData, batch_size: int = 64) -> list[int]:
    """The predicted label of every row (eval mode, in order)."""
    model.eval()
    device = device_of(model)
    preds: list[int] = []
    for batch in data.batches(batch_size):
        batch = to_device(batch, device)
        preds.extend(model(**model_inputs(batch)).argmax(-1).tolist())
    return preds


class ClassificationTask:
    name = "classification"
    metric = "accuracy"
    metrics = ("accuracy",)

    def encode(self, tokenizer, examples: list, max_length: int) -> EncodedData:
        return encode(tokenizer, examples, max_length)

    def load_model(self, source: str, num_labels: int, pooling: str | None = None) -> tuple[nn.Module, Any]:
        from ..models import load_classifier

        return load_classifier(source, num_labels, pooling)

    def adapted_modules(self, model: nn.Module, head: str = "train") -> list[str]:
        return adapted_modules(model, head)

    def saved_modules(self, head: str = "train") -> list[str] | None:
        return saved_modules(head)

    def loss(self, outputs: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return cross_entropy(outputs, batch)

    def predict(self, model: nn.Module, data: EncodedData, batch_size: int = 64) -> list[int]:
        return predict(model, data, batch_size)

    def score(self, outputs: list[Any], data: EncodedData) -> dict[str, list[int]]:
        if len(outputs) != len(data.labels):
            raise ValueError(f"{len(outputs)} predictions for {len(data.labels)} labels")
        return {"accuracy": [int(p == y) for p, y in zip(outputs, data.labels, strict=True)]}
