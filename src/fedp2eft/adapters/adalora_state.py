"""AdaLoRA state dicts that survive rank allocation.

After ``update_and_allocate`` has pruned ranks, peft's ``get_peft_model_state_dict`` truncates
``lora_A`` (rows), ``lora_E`` (rows) and ``lora_B`` (columns) of every module to the ranks its
``rank_pattern`` keeps — down to zero ranks — so states of two clients no longer have the same
shapes (no FedAvg) and none loads into a fresh AdaLoRA model built from the same config.
``pad_adalora_state`` puts every kept rank back at its original index in an ``init_r``-sized
tensor and fills pruned ranks with zeros. A pruned rank has E = 0 (peft masks it), so the padded
state gives exactly the same outputs, loads into a fresh model with ``set_peft_model_state_dict``,
and can be averaged entry by entry with other clients' padded states.
"""

from __future__ import annotations

import torch

_PREFIX = "base_model.model."


def pad_adalora_state(state: dict[str, torch.Tensor], rank_pattern: dict[str, list[bool]] | None,
                      init_r: int) -> dict[str, torch.Tensor]:
    """``state`` from ``get_peft_model_state_dict`` → the same state at full rank ``init_r``."""
    out = dict(state)
    for key, keep in (rank_pattern or {}).items():
        module = key.rsplit(".lora_E", 1)[0]
        keep_t = torch.as_tensor(list(keep), dtype=torch.bool).view(-1)
        if keep_t.numel() != init_r:
            raise ValueError(f"rank pattern of {module} has {keep_t.numel()} entries, expected init_r = {init_r}")
        for part in ("lora_A", "lora_E", "lora_B"):
            name = f"{_PREFIX}{module}.{part}"
            if name not in out:
                raise KeyError(f"{name} missing from the AdaLoRA state")
            value = out[name]
            if part == "lora_B":
                full = value.new_zeros(value.shape[0], init_r)
                full[:, keep_t] = value if value.shape[1] == int(keep_t.sum()) else value[:, keep_t]
            else:
                full = value.new_zeros(init_r, value.shape[1])
                full[keep_t] = value if value.shape[0] == int(keep_t.sum()) else value[keep_t]
            out[name] = full
    return out


def full_rank_state(model) -> dict[str, torch.Tensor]:
    """The padded adapter state of a peft AdaLoRA model (what a client sends or saves)."""
    from peft import get_peft_model_state_dict

    config = model.peft_config["default"]
    return pad_adalora_state(get_peft_model_state_dict(model), config.rank_pattern, config.init_r)


def unallocated_config(config):
    """A copy of an AdaLoRA config without its ``rank_pattern``: peft would build a model already
    truncated to that pattern; padded states load into a model built from this copy."""
    import copy

    fresh = copy.deepcopy(config)
    fresh.rank_pattern = None
    return fresh
