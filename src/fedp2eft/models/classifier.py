"""A sequence classifier built from any backbone: pooled hidden states and a linear head.

``AutoModelForSequenceClassification`` would put a randomly initialised pooler on models that
ship without one (multilingual-e5-small was trained with mean pooling and has no pooler), so
classification uses this small wrapper instead: ``head(dropout(pool(backbone(x))))`` with
``mean`` (masked mean over tokens), ``cls`` (first token) or ``last`` (last non-pad token,
for decoders) pooling. The backbone is any ``transformers`` model; the head is ``head``. The backbone
runs under the model's precision (``models.precision``); pooling and head in fp32.
"""

from __future__ import annotations

import torch
from torch import nn

from .precision import autocast

POOLINGS = ("mean", "cls", "last")


class SequenceClassifier(nn.Module):
    def __init__(self, backbone: nn.Module, num_labels: int, pooling: str = "mean", dropout: float = 0.1):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.backbone = backbone
        self.pooling = pooling
        self.num_labels = num_labels
        hidden = backbone.config.hidden_size
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, num_labels)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    @property
    def config(self):
        return self.backbone.config

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
        if self.pooling == "mean":
            return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        last = attention_mask.long().cumsum(1).argmax(1)  # index of the last 1 (right padding)
        return hidden[torch.arange(hidden.size(0), device=hidden.device), last]

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids=None, **_) -> torch.Tensor:
        """The backbone's pooled features ``[batch, hidden]`` (what the head reads), in fp32."""
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        with autocast(self, input_ids.device):
            out = self.backbone(**kwargs)
            hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        return self.pool(hidden.float(), attention_mask)  # the pooling's sums in fp32

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids=None, **_) -> torch.Tensor:
        return self.head(self.dropout(self.pooled(input_ids, attention_mask, token_type_ids)))  # the head in fp32
