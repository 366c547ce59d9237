"""Adapted modules grouped by what they are (query, key, value, attention output, FFN up, FFN
down, pooler, classifier), and the λ statistics a PSG round records per group.

λ is the BT-LoRA scale of eq. (1): one value per module l and rank i, shape [L, r]. The spread
of λ over ranks (within a module), over modules and over clients is what tells a learned rank
structure (paper §4.7) from a flat λ.
"""

from __future__ import annotations

import torch

MODULE_TYPES = ("query", "key", "value", "attn_out", "ffn_up", "ffn_down", "pooler", "classifier", "other")

_PATTERNS = (
    ("classifier", ("head", "classifier", "score")),
    ("pooler", ("pooler.",)),
    ("query", ("attention.self.query", "q_proj", "query")),
    ("key", ("attention.self.key", "k_proj", ".key")),
    ("value", ("attention.self.value", "v_proj", ".value")),
    ("attn_out", ("attention.output.dense", "o_proj", "attn.c_proj", "out_proj")),
    ("ffn_up", ("intermediate.dense", "up_proj", "gate_proj", "fc1", "c_fc")),
    ("ffn_down", ("output.dense", "down_proj", "fc2", "mlp.c_proj")),
)


def module_type(name: str) -> str:
    """The kind of an adapted linear layer, from its name (BERT, Llama/Gemma and GPT-2 naming)."""
    if name == "head" or name.endswith(".head"):
        return "classifier"
    for kind, keys in _PATTERNS:
        if any(k in name for k in keys):
            return kind
    return "other"


def lambda_statistics(names: list[str], lam: torch.Tensor) -> dict[str, float]:
    """One client's λ ([L, r], modules in ``names`` order) as flat metrics:

    ``lambda_mean``; ``lambda_sd_over_ranks`` (the SD over ranks within a module, averaged over
    modules); ``lambda_sd_over_modules`` (the SD of the module means); ``lambda_mean_<type>`` for
    every module type present."""
    lam = lam.detach().double()
    out = {"lambda_mean": float(lam.mean()),
           "lambda_sd_over_ranks": float(lam.std(1).mean()) if lam.shape[1] > 1 else 0.0,
           "lambda_sd_over_modules": float(lam.mean(1).std()) if lam.shape[0] > 1 else 0.0}
    types: dict[str, list[int]] = {}
    for i, n in enumerate(names):
        types.setdefault(module_type(n), []).append(i)
    for kind, rows in types.items():
        out[f"lambda_mean_{kind}"] = float(lam[rows].mean())
    return out
