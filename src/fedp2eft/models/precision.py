"""Mixed precision: the model's forward pass under bf16 autocast, everything else in fp32.

``experiment.precision`` is ``"fp32"``, ``"bf16"`` or ``"auto"``. With bf16 the wrappers' forward passes
(``SequenceClassifier``, ``CausalLM``: the frozen base's matmuls and the adapters' inside them) run under
``torch.autocast(dtype=torch.bfloat16)``; the parameters stay fp32 (autocast casts a bf16 copy per
forward and the gradients land in fp32), and so do λ, the optimiser states, the merges (plain tensor code
outside the forward pass) and the loss (the wrappers return fp32 logits and states). This is PyTorch's
automatic mixed precision, not the authors' whole-model bf16 (issue 10 did not copy that).

``"auto"`` resolves, in each process, to bf16 only where ``benchmarks/precision.py`` measured it faster
with accuracy within seed noise (``benchmarks/results/precision.json``): a CUDA device that supports
bf16, or a CPU with bf16 instructions (``avx512_bf16`` or ``amx_bf16``); elsewhere bf16 is emulated and
slower, and ``auto`` is fp32. ``set_precision`` is per model object; ``copy.deepcopy`` copies inherit it.
"""

from __future__ import annotations

import contextlib
import functools

import torch
from torch import nn

PRECISIONS = ("auto", "fp32", "bf16")
_CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 instructions (``/proc/cpuinfo``'s flags; False where it cannot tell)."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return any(f in flags for f in _CPU_BF16_FLAGS)
    except OSError:
        pass
    return False


def bf16_is_fast(device: torch.device) -> bool:
    """Whether bf16 matmuls run natively (faster than fp32) on ``device``."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return cpu_has_bf16()
    return False


def resolve_precision(setting: str, device: torch.device) -> str:
    """``"fp32"`` or ``"bf16"``: ``setting`` itself, or what ``"auto"`` means on ``device``."""
    if setting not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {setting!r}")
    if setting == "auto":
        return "bf16" if bf16_is_fast(device) else "fp32"
    return setting


def set_precision(model: nn.Module, precision: str) -> str:
    """Make ``model``'s forward passes run in ``precision`` (``"auto"`` resolved for the model's device);
    returns the resolved precision."""
    device = next(model.parameters()).device
    resolved = resolve_precision(precision, device)
    model.autocast_dtype = torch.bfloat16 if resolved == "bf16" else None
    return resolved


def autocast(model: nn.Module, device: torch.device) -> contextlib.AbstractContextManager:
    """The context a wrapper's forward pass runs in: bf16 autocast where ``set_precision`` asked for it
    (and not already inside one), else nothing."""
    dtype = getattr(model, "autocast_dtype", None)
    if dtype is None or torch.is_autocast_enabled(device.type):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
