"""A causal LM in the shape every method expects: the transformer is ``backbone``, the output is logits.

Methods adapt "every linear layer of ``backbone``" (peft's all-linear); for a causal LM that excludes
the output projection (``lm_head``, tied to the embeddings in Gemma and Llama-3.2), as peft's
``all-linear`` does: ``unadapted_modules`` names it. ``head`` is an empty slot (a causal LM has no
classification head), so code that trains or saves a classifier head finds nothing to do.

``forward(..., target_mask)`` computes the vocabulary projection only at the positions whose next
token is scored (the response tokens): with Gemma-3's 262,144-piece vocabulary the projection costs
more than the transformer, and prompt positions carry no loss. Without ``target_mask`` it returns the
full ``[batch, length, vocab]`` logits. ``generate`` is the backbone's (greedy decoding and the KV cache
come from transformers).
"""

from __future__ import annotations

import torch
from torch import nn


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
        logits = self.backbone.get_output_embeddings()(hidden)
        cap = getattr(self.config, "final_logit_softcapping", None)
        if cap:  # Gemma-2/3 style soft-capping, as the backbone's own forward applies it
            logits = torch.tanh(logits / cap) * cap
        return logits

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, target_mask: torch.Tensor | None = None,
                **_) -> torch.Tensor:
        out = self.backbone.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        if target_mask is not None:
            hidden = hidden[target_mask]
        return self._project(hidden)

    @torch.no_grad()
    def generate(self, **kwargs):
        return self.backbone.generate(**kwargs)
