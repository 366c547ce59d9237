"""A causal LM in the shape every method expects: the transformer is ``backbone``, the output is logits.

Methods adapt "every linear layer of ``backbone``" (peft's all-linear); for a causal LM that excludes
the output projection (``lm_head``, tied to the embeddings in Gemma and Llama-3.2), as peft's
``all-linear`` does: ``unadapted_modules`` names it. ``head`` is an empty slot (a causal LM has no
classification head), so code that trains or saves a classifier head finds nothing to do.

``forward(..., target_mask)`` returns ``ScoredStates``: the final hidden states at the positions whose
next token is scored (the response tokens), with the vocabulary projection not yet applied. With
Gemma-3's 262,144-piece vocabulary the projection costs more than the transformer, prompt positions
carry no loss, and the logits of even the scored positions are the largest tensors of a training step
(144 positions: 151 MB each, ~5 of them alive in forward and backward). ``ScoredStates.cross_entropy``
projects and scores them in chunks of at most ``CHUNK_ELEMENTS`` logits; with more than one chunk each
chunk is checkpointed (non-reentrant: its logits are recomputed in backward, and second derivatives, which
FedL2P's hypergradient takes, still flow). ``ScoredStates.logits()`` gives the whole ``[n, vocab]``.
Without ``target_mask`` ``forward`` returns the full ``[batch, length, vocab]`` logits. ``generate`` is
the backbone's (greedy decoding and the KV cache come from transformers). The transformer, the
projection and generation run under the model's precision (``models.precision``); the loss is fp32.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from .precision import autocast

CHUNK_ELEMENTS = 1 << 23  # logits per chunk of the scored projection (32 MiB in fp32)


@dataclass
class ScoredStates:
    """The final hidden states ``[n, d]`` of the n scored positions and the vocabulary projection."""

    hidden: torch.Tensor
    project: Callable[[torch.Tensor], torch.Tensor]
    vocab: int

    def logits(self) -> torch.Tensor:
        return self.project(self.hidden)

    def cross_entropy(self, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of ``targets`` ``[n]`` under the projected states, chunk by chunk."""
        rows = max(1, CHUNK_ELEMENTS // self.vocab)
        if len(targets) <= rows:
            return F.cross_entropy(self.logits().float(), targets)

        def chunk_sum(hidden: torch.Tensor, chunk_targets: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(self.project(hidden).float(), chunk_targets, reduction="sum")

        total = sum(checkpoint(chunk_sum, self.hidden[i:i + rows], targets[i:i + rows], use_reentrant=False)
                    for i in range(0, len(targets), rows))
        return total / len(targets)


class CausalLM(nn.Module):
    unadapted_modules = ("backbone.lm_head",)

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Identity()

    @property
    def config(self):
        return self.backbone.config

    def _project(self, hidden: torch.Tensor) -> torch.Tensor:
        with autocast(self, hidden.device):
            logits = self.backbone.get_output_embeddings()(hidden).float()
        cap = getattr(self.config, "final_logit_softcapping", None)
        if cap:  # Gemma-2/3 style soft-capping, as the backbone's own forward applies it
            logits = torch.tanh(logits / cap) * cap
        return logits

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, target_mask: torch.Tensor | None = None,
                **_) -> torch.Tensor | ScoredStates:
        with autocast(self, input_ids.device):
            out = self.backbone.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
            hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        if target_mask is not None:
            return ScoredStates(hidden[target_mask], self._project, self.backbone.get_output_embeddings().out_features)
        return self._project(hidden)

    @torch.no_grad()
    def generate(self, **kwargs):
        with autocast(self, kwargs["input_ids"].device):
            return self.backbone.generate(**kwargs)
