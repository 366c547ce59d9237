"""PF2LoRA (two-level LoRA, seed 002), laid out as peft lays out a tuner: ``method`` (the ``[pf2lora]``
config, the client settings, one client's federated round, the personalisation, the stage and the
registration of ``pf2lora``), ``bilevel`` (the lower/upper local steps) and ``base_kind`` (PF2LoRA as a
personalised base model: ``base_model.kind = "pf2lora"``). The two-level layer itself stays in
``adapters.two_level``: FedDPA-T's base builds on the same layer."""

from . import base_kind  # noqa: F401  (registers base kind "pf2lora")
from .bilevel import bilevel_local_steps
from .method import (
    PF2LORA_STAGE,
    PF2LoRAConfig,
    PF2LoRAMethod,
    PF2LoRASettings,
    PF2LoRATraining,
    client_seed,
    initial_shared_state,
    load_shared_state,
    local_state_path,
    pf2lora_client_update,
    shared_state,
    two_level_model,
)

__all__ = ["PF2LORA_STAGE", "PF2LoRAConfig", "PF2LoRAMethod", "PF2LoRASettings", "PF2LoRATraining", "bilevel_local_steps", "client_seed",
           "initial_shared_state", "load_shared_state", "local_state_path", "pf2lora_client_update", "shared_state",
           "two_level_model"]
