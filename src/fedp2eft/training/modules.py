"""Which modules of a model the adapter methods target, and which train as themselves."""

from __future__ import annotations

import copy

from torch import nn


def copy_sharing_embeddings(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose embedding tables (every ``nn.Embedding`` weight) are the original's,
    shared and frozen, not copied: for copies in which embeddings neither train nor change — every
    adapter method and the stages that freeze them. e5-small's word table is 96M of its 118M
    parameters (384 MB), so each client's or method's copy costs ~90 MB instead of ~470 MB. A copy
    that trains or rewrites embeddings (DEPT, full fine-tuning of them, a client part) uses
    ``copy.deepcopy``."""
    tables = [m.weight for m in model.modules() if isinstance(m, nn.Embedding)]
    for t in tables:
        t.requires_grad_(False)
    return copy.deepcopy(model, {id(t): t for t in tables})


def linear_module_names(model: nn.Module, under: str = "backbone") -> list[str]:
    """Full names of every ``nn.Linear`` inside ``model.<under>``."""
    prefix = under + "."
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.startswith(prefix)]


HEAD_MODES = ("train", "adapter")


def adapted_modules(model: nn.Module, head: str = "train") -> list[str]:
    """The modules every adapter method targets (the paper's "all-linear").

    ``head = "train"``: every linear layer of the backbone; the classifier head is trained itself
    (peft ``modules_to_save``). ``head = "adapter"`` (the authors' code): the head is adapted like
    every other linear layer and its weights stay frozen, so only adapters train.

    A model may name linear layers that are never adapted (``unadapted_modules``: a causal LM's output
    projection, as peft's all-linear leaves it out), and a model without a linear ``head`` (a causal
    LM) has no head to adapt in either mode."""
    if head not in HEAD_MODES:
        raise ValueError(f"head must be one of {HEAD_MODES}, got {head!r}")
    skip = set(getattr(model, "unadapted_modules", ()))
    names = [n for n in linear_module_names(model) if n not in skip]
    has_head = isinstance(getattr(model, "head", None), nn.Linear)
    return [*names, "head"] if head == "adapter" and has_head else names


def saved_modules(head: str = "train") -> list[str] | None:
    """peft ``modules_to_save`` for a head mode: the head is a trained copy only in ``"train"`` mode."""
    return ["head"] if head == "train" else None
