"""A client's own part of a personalised base model (FedDPA-T, DEPT, PF2LoRA): the tensors that turn
the shared base into that client's base, in one safetensors file per client.

A part holds three kinds of entry, keyed by the parameter or module they change:

- ``lowrank.<module>.A`` / ``lowrank.<module>.B``: a low-rank update merged into a linear layer,
  ``W ← W + B A`` (``B`` already carries the adapter's scaling) — FedDPA-T's local LoRA, PF2LoRA's level 2;
- ``rows.<param>.index`` / ``rows.<param>.values``: rows of a table replaced, ``P[index] ← values`` —
  DEPT's local embeddings, stored as the rows the client's training changed (an embedding row whose
  token the client never saw keeps its pretrained value exactly: AdamW without weight decay does
  not move a row that never had a gradient), so a part stays small beside a 96M-parameter table;
- ``dense.<param>``: a tensor replaced whole.

A client without a part (an unseen client, or a seen one never sampled) gets the shared base itself.
A client writes its part into its own storage folder (``client_part_file``) during the base model's
federated training; the part never travels.
"""

from __future__ import annotations

import torch
from torch import nn

KINDS = ("lowrank", "rows", "dense")


def client_part_file(folder, cid: str):
    """Where client ``cid`` keeps its part in its storage folder."""
    from pathlib import Path

    return Path(folder) / f"{cid}.part.safetensors"


def lowrank_entries(module: str, a: torch.Tensor, b: torch.Tensor) -> dict[str, torch.Tensor]:
    return {f"lowrank.{module}.A": a.detach().clone(), f"lowrank.{module}.B": b.detach().clone()}


def changed_rows_entries(param: str, value: torch.Tensor, reference: torch.Tensor) -> dict[str, torch.Tensor]:
    """The rows of ``value`` that differ from ``reference`` (the shared base's table)."""
    changed = (value.detach() != reference.detach()).reshape(value.shape[0], -1).any(dim=1)
    index = changed.nonzero().flatten()
    return {f"rows.{param}.index": index, f"rows.{param}.values": value.detach()[index].clone()}


def apply_client_part(model: nn.Module, part: dict[str, torch.Tensor]) -> nn.Module:
    """Apply a client's part to ``model`` in place (and return it); an unknown key is an error."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for key, tensor in part.items():
            kind, _, rest = key.partition(".")
            if kind == "lowrank" and rest.endswith(".A"):
                module = rest[: -len(".A")]
                weight = model.get_submodule(module).weight
                weight += (part[f"lowrank.{module}.B"] @ tensor).to(weight.device, weight.dtype)
            elif kind == "rows" and rest.endswith(".index"):
                name = rest[: -len(".index")]
                target = _param(params, name, key)
                target[tensor.to(target.device)] = part[f"rows.{name}.values"].to(target.device, target.dtype)
            elif kind == "dense":
                _param(params, rest, key).copy_(tensor)
            elif kind not in KINDS or not rest.endswith((".B", ".values")):
                raise KeyError(f"client part entry {key!r} is not one of {list(KINDS)}")
    return model


def _param(params: dict, name: str, key: str) -> torch.Tensor:
    if name not in params:
        raise KeyError(f"client part entry {key!r} names no parameter of the model")
    return params[name]
