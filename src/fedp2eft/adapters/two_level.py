"""PF2LoRA's two-level LoRA (seed 002): client k's weight is ``W0 + s1·B A + s2·D_k C_k``.

Level 1 (A, B; rank r) is shared by all clients and averaged by the server; level 2 (C_k, D_k;
rank r̃) stays on client k, so the client's effective update has rank in [r − r̃, r + r̃].
``TwoLevelLinear`` wraps a frozen ``nn.Linear``; B and D start at zero (plain LoRA init), so the
wrapped layer starts as the base layer.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class TwoLevelLinear(nn.Module):
    def __init__(self, base: nn.Linear, r: int = 8, r_local: int = 2, alpha: float | None = None,
                 alpha_local: float | None = None, dropout: float = 0.0):
        super().__init__()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.use_local = True  # False: the layer is W0 + s1·B A (FedDPA-T trains its global adapter so)
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        d_out, d_in = base.weight.shape
        self.lora_A = nn.Parameter(torch.empty(r, d_in))
        self.lora_B = nn.Parameter(torch.zeros(d_out, r))
        self.local_C = nn.Parameter(torch.empty(r_local, d_in))
        self.local_D = nn.Parameter(torch.zeros(d_out, r_local))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.kaiming_uniform_(self.local_C, a=math.sqrt(5))
        self.scaling = (alpha if alpha is not None else 2 * r) / r
        self.scaling_local = alpha_local / r_local if alpha_local is not None else default_local_scaling()

    def shared_update(self) -> torch.Tensor:
        return self.scaling * self.lora_B @ self.lora_A

    def local_update(self) -> torch.Tensor:
        return self.scaling_local * self.local_D @ self.local_C

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        h = self.dropout(x)
        out = out + self.scaling * (h @ self.lora_A.T) @ self.lora_B.T
        if not self.use_local:
            return out
        return out + self.scaling_local * (h @ self.local_C.T) @ self.local_D.T

    def shared_parameters(self) -> list[nn.Parameter]:
        return [self.lora_A, self.lora_B]

    def local_parameters(self) -> list[nn.Parameter]:
        return [self.local_C, self.local_D]


def attach_two_level(model: nn.Module, targets: list[str], r: int, r_local: int, alpha: float | None = None,
                     alpha_local: float | None = None, dropout: float = 0.0) -> dict[str, TwoLevelLinear]:
    """Replace each named ``nn.Linear`` of ``model`` (in place) by a :class:`TwoLevelLinear`."""
    wrapped = {}
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        layer = TwoLevelLinear(getattr(parent, child), r, r_local, alpha, alpha_local, dropout)
        setattr(parent, child, layer)
        wrapped[name] = layer
    return wrapped


def level_state(layers: dict[str, TwoLevelLinear], level: str) -> dict[str, torch.Tensor]:
    """``level`` = ``"shared"`` ((A, B), what travels) or ``"local"`` ((C_k, D_k), what stays)."""
    keys = ("lora_A", "lora_B") if level == "shared" else ("local_C", "local_D")
    return {f"{n}.{k}": getattr(layer, k).detach().clone() for n, layer in layers.items() for k in keys}


def load_level_state(layers: dict[str, TwoLevelLinear], state: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for key, value in state.items():
            name, _, attr = key.rpartition(".")
            getattr(layers[name], attr).copy_(value)


def merge_two_level(layers: dict[str, TwoLevelLinear], levels: tuple[str, ...] = ("shared", "local")) -> None:
    """Fold the ``levels`` into the base weights (the wrapped layers then act as their merged base)."""
    with torch.no_grad():
        for layer in layers.values():
            if "shared" in levels:
                layer.base.weight += layer.shared_update()
                layer.lora_B.zero_()
            if "local" in levels:
                layer.base.weight += layer.local_update()
                layer.local_D.zero_()


def unwrap_two_level(model: nn.Module, layers: dict[str, TwoLevelLinear]) -> nn.Module:
    """Put each wrapped layer's base ``nn.Linear`` back in place (after merging): a plain model again."""
    for name, layer in layers.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer.base)
    return model


def default_local_scaling() -> float:
    """Level 2's scaling when no alpha is given (alpha_local = 2·r̃)."""
    return 2.0


def local_part(state: dict[str, torch.Tensor], scaling: float) -> dict[str, torch.Tensor]:
    """A stored level 2 (``{layer}.local_C`` / ``{layer}.local_D``, as ``level_state(layers, "local")``) as
    a client part's low-rank entries (``adapters.client_part``): ``A = C_k``, ``B = s2·D_k``."""
    from .client_part import lowrank_entries

    out: dict[str, torch.Tensor] = {}
    for key in state:
        if key.endswith(".local_C"):
            name = key[: -len(".local_C")]
            out.update(lowrank_entries(name, state[key], scaling * state[f"{name}.local_D"]))
    return out


def shared_level_model(model: nn.Module, layers: dict[str, TwoLevelLinear]) -> nn.Module:
    """``model`` with level 1 merged and its two-level layers unwrapped: a plain, trainable model in eval
    mode (the shared base of FedDPA-T and PF2LoRA; each client's level 2 is its part)."""
    merge_two_level(layers, ("shared",))
    model = unwrap_two_level(model, layers)
    for p in model.parameters():
        p.requires_grad_(True)
    return model.eval()
