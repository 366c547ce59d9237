"""One fixed LoRA ``A`` per module, so that "rank i of module m" is the same direction in every
round, on every client and at personalisation.

The authors seed torch once (``manual_seed(42)``) before ``get_peft_model``, so their A is the
same everywhere it is built; pruning then keeps the selected rows of that A. Here the rows are
drawn per module from a generator keyed by ``(seed, module name)``, which gives the same thing
without depending on the order in which modules are created: row i of a module is the same
whether the adapter has 2, 16 or 32 ranks, and a pruned adapter keeps exactly the rows of the
ranks it kept. The distribution is peft's LoRA init for A (Kaiming-uniform with a = √5, i.e.
U(−1/√d_in, 1/√d_in)).
"""

from __future__ import annotations

import zlib

import torch
from torch import nn


def fixed_a_rows(name: str, rows: int, d_in: int, seed: int) -> torch.Tensor:
    """The first ``rows`` rows of module ``name``'s fixed A (shape [rows, d_in], float32, CPU).

    The CPU generator fills row-major, so a prefix of rows is the same for any ``rows``."""
    gen = torch.Generator().manual_seed(zlib.crc32(f"{seed}:{name}".encode()) + (seed << 32))
    bound = 1.0 / d_in ** 0.5
    return (torch.rand(rows, d_in, generator=gen, dtype=torch.float32) * 2 - 1) * bound


def _strip(name: str) -> str:
    prefix = "base_model.model."
    return name[len(prefix):] if name.startswith(prefix) else name


@torch.no_grad()
def apply_fixed_a(model: nn.Module, seed: int, rank_index: dict[str, torch.Tensor] | None = None,
                  adapter: str = "default") -> int:
    """Overwrite every peft LoRA layer's ``lora_A[adapter]`` with the fixed A of its module.

    ``rank_index`` maps a module (base-model name) to the original rank ids its adapter keeps (a
    pruned BT-LoRA); modules not in it keep rows 0..r−1. Returns the number of layers set."""
    count = 0
    for name, module in model.named_modules():
        lora_a = getattr(module, "lora_A", None)
        if not isinstance(lora_a, nn.ModuleDict) or adapter not in lora_a:
            continue
        weight = lora_a[adapter].weight
        base = _strip(name)
        r, d_in = weight.shape
        index = rank_index.get(base) if rank_index else None
        if index is None:
            rows = fixed_a_rows(base, r, d_in, seed)
        else:
            if len(index) != r:
                raise ValueError(f"{base}: {len(index)} kept ranks for an adapter of rank {r}")
            index = index.detach().long().cpu()
            rows = fixed_a_rows(base, int(index.max()) + 1, d_in, seed)[index]
        weight.copy_(rows.to(weight.dtype))
        count += 1
    return count
