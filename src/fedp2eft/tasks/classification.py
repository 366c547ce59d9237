"""Sequence classification (MasakhaNEWS topics, XNLI): the first task.

Rows are ``Example``s with an integer label; the model is ``models.SequenceClassifier`` (a backbone,
pooling and a linear ``head``); the loss is cross-entropy; outputs are predicted labels (argmax);
a row scores 1 when its prediction is its label, so a language's score is its accuracy.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..data.records import Example
from ..training import Recipe, adapted_modules, device_of, model_inputs, saved_modules, to_device
from ..training.batches import EncodedData, one_label_per_row


def encode_texts(tokenizer, examples: list[Example], max_length: int) -> EncodedData:
    """Tokenise texts (and text pairs) with truncation to ``max_length`` tokens; one label per row."""
    texts = [ex.text for ex in examples]
    pairs = [ex.text_pair for ex in examples]
    has_pair = any(p is not None for p in pairs)
    if has_pair:
        enc = tokenizer(texts, [p or "" for p in pairs], truncation=True, max_length=max_length)
    else:
        enc = tokenizer(texts, truncation=True, max_length=max_length)
    tt = enc.get("token_type_ids") if has_pair else None
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return EncodedData(list(enc["input_ids"]), [ex.label for ex in examples], pad, tt, collate=one_label_per_row)


@torch.no_grad()
def pooled_features(model: nn.Module, data: EncodedData, batch_size: int) -> torch.Tensor:
    model.eval()
    device = device_of(model)
    feats = []
    for batch in data.batches(batch_size):
        inputs = model_inputs(to_device(batch, device))
        feats.append(model.pooled(**inputs))
    return torch.cat(feats)


def train_head(head: nn.Linear, feats: torch.Tensor, labels: list[int], recipe: Recipe, seed: int) -> None:
    y = torch.tensor(labels, device=feats.device)
    opt = torch.optim.AdamW(head.parameters(), lr=recipe.head_lr, weight_decay=recipe.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(recipe.epochs):
        order = torch.randperm(len(y), generator=gen).to(feats.device)
        for start in range(0, len(y), recipe.batch_size):
            idx = order[start : start + recipe.batch_size]
            loss = F.cross_entropy(head(feats[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


def linear_probe(model: nn.Module, train: EncodedData, test: EncodedData, recipe: Recipe, seed: int,
                 eval_batch_size: int = 64) -> list[int]:
    """A copy of the head alone fine-tuned on ``train`` (the backbone frozen; its pooled features computed
    once in eval mode, so no dropout) with the recipe's head rate, epochs and batch size; predicts ``test``."""
    if not isinstance(getattr(model, "head", None), nn.Linear):
        return predict(model, test, eval_batch_size)
    head = copy.deepcopy(model.head)
    train_head(head, pooled_features(model, train, eval_batch_size), train.labels, recipe, seed)
    with torch.no_grad():
        logits = head(pooled_features(model, test, eval_batch_size))
    return logits.argmax(-1).tolist()


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
        return encode_texts(tokenizer, examples, max_length)

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

    def probe(self, model: nn.Module, train: EncodedData, test: EncodedData, p, seed: int) -> list[int]:
        return linear_probe(model, train, test, p.recipe, seed, p.eval_batch_size)

    def score(self, outputs: list[Any], data: EncodedData) -> dict[str, list[int]]:
        if len(outputs) != len(data.labels):
            raise ValueError(f"{len(outputs)} predictions for {len(data.labels)} labels")
        return {"accuracy": [int(p == y) for p, y in zip(outputs, data.labels, strict=True)]}
