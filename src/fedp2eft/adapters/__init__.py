"""Adapters (torch + peft only): the λ-scaled LoRA layer (BT-LoRA), its priors, budget pruning,
and export to plain peft LoRA adapters."""

from .bt_lora import BTLoraLinear, bt_lora_config, lambda_parameters, lambdas_by_module, set_lambdas
from .export import export_plain_lora
from .priors import bt_penalty, clamp_st
from .pruning import prune_to_budget

__all__ = [
    "BTLoraLinear",
    "bt_lora_config",
    "bt_penalty",
    "clamp_st",
    "export_plain_lora",
    "lambda_parameters",
    "lambdas_by_module",
    "prune_to_budget",
    "set_lambdas",
]
