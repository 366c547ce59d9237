"""The interface every personalisation method implements.

A method is a plain object with a ``name``, a flag saying whether it takes a rank budget,
and ``personalise(base, task, budget, settings) -> predictions``: it receives the client's
base model (never modified in place), the client's encoded train and test data, and returns
its predictions on the test split. It knows nothing about federation or transport.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from torch import nn

from ..errors import UserError
from .batches import EncodedData


@dataclass(frozen=True)
class TrainSettings:
    """Local fine-tuning hyperparameters (paper defaults: AdamW 1e-4, 2 epochs, batch 32)."""

    epochs: int = 2
    batch_size: int = 32
    lr: float = 1e-4
    head_lr: float = 1e-4
    weight_decay: float = 0.0
    eval_batch_size: int = 64
    seed: int = 0
    none_trains_head: bool = True
    head: str = "train"  # "train": the head is trained at head_lr; "adapter": adapted like every linear layer, frozen
    max_grad_norm: float = 0.0  # > 0: clip the gradient norm (authors: 1.0, the HF Trainer default)
    lora_a_seed: int = -1  # >= 0: one fixed LoRA A per module (authors: 42); -1: a fresh random A per client

    def param_groups(self, adapter: list, head: list, adapter_lr: float | None = None) -> list[dict]:
        """AdamW groups: the adapter at ``adapter_lr`` (default ``lr``), a trained head at ``head_lr``."""
        return [{"params": adapter, "lr": self.lr if adapter_lr is None else adapter_lr},
                {"params": head, "lr": self.head_lr}]


@dataclass
class ClientTask:
    client_id: str
    language: str
    train: EncodedData
    test: EncodedData


class Method(Protocol):
    name: str
    uses_budget: bool

    def personalise(self, base: nn.Module, task: ClientTask, budget: int | None, settings: TrainSettings) -> list[int]:
        ...


METHODS = ("none", "lora", "lora-tuned", "adalora", "bt-lora", "fedl2p", "pf2lora", "fedp2eft", "fedp2eft-tuned",
           "fedp2eft-paper", "fedp2eft-mean1")


def get_method(name: str, **resources) -> Method:
    """A method object; ``resources`` carries what a method needs beyond the client (FedP²EFT: ``psg``,
    ``fedp2eft-paper``: ``psg_paper``; FedL2P: ``fedl2p`` = {budget: generator}; PF2LoRA: ``pf2lora`` =
    {budget: (shared state, client folder)}; lora-tuned: ``tune_lrs``, ``tune_fraction``)."""
    from .fedp2eft import FedP2EFTMethod
    from .lora import LoRAMethod
    from .none import NoneMethod

    if name == "none":
        return NoneMethod()
    if name == "lora":
        return LoRAMethod()
    if name.endswith("-tuned") and name in METHODS:  # the rate chosen per pool on held-out train rows
        from .tuned import TunedMethod

        return TunedMethod(get_method(name[: -len("-tuned")], **resources),
                           lrs=tuple(resources.get("tune_lrs", (1e-4, 3e-4, 1e-3, 3e-3))),
                           fraction=resources.get("tune_fraction", 0.2))
    if name == "adalora":
        from .adalora import AdaLoRAMethod

        return AdaLoRAMethod(lr=resources.get("adalora_lr", 1e-3), alpha=resources.get("adalora_alpha", 0))
    if name == "bt-lora":
        from .bt_lora_client import BTLoRAClientMethod

        return BTLoRAClientMethod(resources.get("bt"))
    if name == "fedl2p":
        from .fedl2p import FedL2PMethod

        return FedL2PMethod(resources.get("fedl2p"))
    if name == "pf2lora":
        from .pf2lora import PF2LoRAMethod

        return PF2LoRAMethod(resources.get("pf2lora"), resources.get("pf2lora_settings"))
    if name in ("fedp2eft", "fedp2eft-mean1"):
        return FedP2EFTMethod(resources.get("psg"), resources.get("bt"), mean_one=name == "fedp2eft-mean1")
    if name == "fedp2eft-paper":
        method = FedP2EFTMethod(resources.get("psg_paper"), resources.get("bt_paper"))
        method.name = name
        return method
    raise UserError(f"unknown method {name!r}; methods are {list(METHODS)}")
