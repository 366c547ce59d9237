"""BT-LoRA: LoRA with one positive scale per rank (FedP²EFT §3.2).

For an adapted linear layer with frozen weight W, the forward is

    W x + scaling · B (λ ⊙ (A dropout(x))),     λ ∈ R^r, scaling = lora_alpha / r,

and the merged update is ΔW = scaling · (B · diag(λ)) · A. ``BTLoraLinear`` is a peft LoRA
``Linear`` (so peft creates, saves, loads, merges and unloads it) with one more adapter
parameter, ``lora_lambda[adapter]`` — named with the ``lora_`` prefix so peft's adapter state
dict carries it. peft builds it through ``LoraConfig._register_custom_module`` (peft's mechanism
for custom LoRA layers); ``bt_lora_config`` returns such a config. λ is a raw positive tensor,
as in the authors' code (no softplus); the priors clamp it (``priors.clamp_st``).

Subclassing peft's ``Linear`` (rather than composing) is what makes it a real peft layer: merge,
unmerge, ``merge_and_unload``, adapter switching and state-dict handling all come from peft and
only ``update_layer``, ``get_delta_weight`` and ``forward`` change.
"""

from __future__ import annotations

from typing import Any

import torch
from peft import LoraConfig
from peft.tuners.lora.layer import Linear as LoraLinear
from peft.utils.other import transpose
from torch import nn


class BTLoraLinear(LoraLinear):
    adapter_layer_names = LoraLinear.adapter_layer_names + ("lora_lambda",)

    def __init__(self, base_layer, adapter_name: str, config: LoraConfig, **kwargs):
        self._bt_init_lambda = float(getattr(config, "_bt_init_lambda", 1e-4))
        super().__init__(base_layer, adapter_name, config=config, **kwargs)

    def update_layer(self, adapter_name: str, r: int, *args: Any, **kwargs: Any):
        if not hasattr(self, "lora_lambda"):
            self.lora_lambda = nn.ParameterDict()
        out = super().update_layer(adapter_name, r, *args, **kwargs)
        weight = self.lora_A[adapter_name].weight
        self.lora_lambda[adapter_name] = nn.Parameter(
            torch.full((r,), self._bt_init_lambda, dtype=weight.dtype, device=weight.device)
        )
        return out

    def get_delta_weight(self, adapter) -> torch.Tensor:
        """ΔW = scaling · (B · diag(λ)) · A."""
        a = self.lora_A[adapter].weight
        b = self.lora_B[adapter].weight
        lam = self.lora_lambda[adapter].to(b.dtype)
        return transpose((b * lam[None, :]) @ a, self.fan_in_fan_out) * self.scaling[adapter]

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        if self.merged:
            return self.base_layer(x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        dtype = result.dtype
        for name in self.active_adapters:
            if name not in self.lora_A:
                continue
            a, b = self.lora_A[name], self.lora_B[name]
            h = a(self.lora_dropout[name](self._cast_input_dtype(x, a.weight.dtype)))
            result = result + b(h * self.lora_lambda[name]) * self.scaling[name]
        return result.to(dtype)

    def __repr__(self) -> str:
        return "bt_" + super().__repr__()


def bt_lora_config(
    target_modules: list[str],
    r: int = 32,
    lora_alpha: int = 64,
    init_lambda: float = 1e-4,
    rank_pattern: dict[str, int] | None = None,
    alpha_pattern: dict[str, int] | None = None,
    modules_to_save: list[str] | None = None,
    lora_dropout: float = 0.0,
) -> LoraConfig:
    """A ``LoraConfig`` whose ``nn.Linear`` targets become :class:`BTLoraLinear`."""
    cfg = LoraConfig(
        r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, target_modules=target_modules,
        rank_pattern=rank_pattern or {}, alpha_pattern=alpha_pattern or {},
        modules_to_save=modules_to_save, bias="none",
    )
    cfg._register_custom_module({nn.Linear: BTLoraLinear})
    cfg._bt_init_lambda = init_lambda
    return cfg


def bt_modules(model: nn.Module) -> dict[str, BTLoraLinear]:
    """Adapted modules by their name in the *base* model (peft's prefixes stripped)."""
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, BTLoraLinear):
            out[_base_name(name)] = module
    return out


def _base_name(name: str) -> str:
    for prefix in ("base_model.model.",):
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def lambda_parameters(model: nn.Module, adapter: str = "default") -> list[nn.Parameter]:
    return [m.lora_lambda[adapter] for m in bt_modules(model).values()]


def lambdas_by_module(model: nn.Module, adapter: str = "default") -> dict[str, torch.Tensor]:
    return {n: m.lora_lambda[adapter].detach().clone() for n, m in bt_modules(model).items()}


@torch.no_grad()
def set_lambdas(model: nn.Module, values: dict[str, torch.Tensor], adapter: str = "default",
                requires_grad: bool = True) -> None:
    modules = bt_modules(model)
    for name, value in values.items():
        p = modules[name].lora_lambda[adapter]
        p.copy_(value.to(p.dtype))
        p.requires_grad_(requires_grad)
