"""The reference row "none": the base model as it is.

With ``none_trains_head`` (the default) the classification head alone is fine-tuned on the
client's train split with the same optimiser, batch size and epochs as the other methods and
the backbone frozen (a linear probe on the base model's pooled features, computed once in eval
mode, so no dropout) — needed when the base model is off-the-shelf and its head is fresh.
With ``none_trains_head = false`` the base model predicts untouched (use it when the base
model's head was trained, e.g. by Standard FL). A model without a classifier head (a causal LM)
predicts untouched either way.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn import functional as F

from ..training import device_of, model_inputs, to_device
from ..training.batches import EncodedData
from .base import ClientTask, TrainSettings
from .registry import MethodSpec, register_method


@torch.no_grad()
def pooled_features(model: nn.Module, data: EncodedData, batch_size: int) -> torch.Tensor:
    model.eval()
    device = device_of(model)
    feats = []
    for batch in data.batches(batch_size):
        inputs = model_inputs(to_device(batch, device))
        out = model.backbone(**inputs)
        feats.append(model.pool(out.last_hidden_state, inputs["attention_mask"]))
    return torch.cat(feats)


def train_head(head: nn.Linear, feats: torch.Tensor, labels: list[int], settings: TrainSettings) -> None:
    y = torch.tensor(labels, device=feats.device)
    opt = torch.optim.AdamW(head.parameters(), lr=settings.head_lr, weight_decay=settings.weight_decay)
    gen = torch.Generator().manual_seed(settings.seed)
    for _ in range(settings.epochs):
        order = torch.randperm(len(y), generator=gen).to(feats.device)
        for start in range(0, len(y), settings.batch_size):
            idx = order[start : start + settings.batch_size]
            loss = F.cross_entropy(head(feats[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


class NoneMethod:
    name = "none"
    uses_budget = False

    def personalise(self, base: nn.Module, task: ClientTask, budget: int | None, settings: TrainSettings) -> list:
        if not settings.none_trains_head or not isinstance(getattr(base, "head", None), nn.Linear):
            return task.kind.predict(base, task.test, settings.eval_batch_size)  # (a causal LM has no head)
        head = copy.deepcopy(base.head)
        train_head(head, pooled_features(base, task.train, settings.eval_batch_size), task.train.labels, settings)
        with torch.no_grad():
            logits = head(pooled_features(base, task.test, settings.eval_batch_size))
        return logits.argmax(-1).tolist()


register_method(MethodSpec("none", lambda cfg, resources, seed: NoneMethod(), uses_budget=False,
                           summary="the base model (a linear probe of its head with none_trains_head)"))
