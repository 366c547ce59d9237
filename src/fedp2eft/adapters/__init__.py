"""Adapters (torch + peft only): the λ-scaled LoRA layer (BT-LoRA), its priors, budget pruning,
fixed LoRA A, and export to plain peft LoRA adapters."""

from .bt_lora import BTLoraLinear, bt_lora_config, lambda_parameters, lambdas_by_module, set_lambdas
from .export import export_for_transformers, export_plain_lora
from .fixed_a import apply_fixed_a, fixed_a_rows
from .priors import bt_penalty, clamp_st
from .pruning import prune_to_budget, select_ranks

__all__ = [
    "BTLoraLinear",
    "apply_fixed_a",
    "bt_lora_config",
    "bt_penalty",
    "clamp_st",
    "export_for_transformers",
    "export_plain_lora",
    "fixed_a_rows",
    "lambda_parameters",
    "lambdas_by_module",
    "prune_to_budget",
    "select_ranks",
    "set_lambdas",
]
