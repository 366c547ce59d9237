"""Client meta-features (FedP²EFT eq. 6): [E(h_0), SD(h_0), E(h_1), SD(h_1), …].

h_l is the *input* of the l-th adapted base ``nn.Linear`` (all-linear: every linear layer of
the backbone), captured with forward hooks. For each, the mean and standard deviation over all
elements (examples × tokens × hidden) are pooled over the client's whole train set with a
streaming (parallel, Chan et al.) variance, in eval mode and without gradients, on the base
model alone (equivalently, all λ = 0). Only real tokens count (padding is masked out).
SD = sqrt(var + 1e-5).
"""

from __future__ import annotations

import torch
from torch import nn

from ..training import adapted_modules, device_of, model_inputs, to_device
from ..training.batches import EncodedData


def feature_modules(model: nn.Module, head: str = "train") -> list[str]:
    """The adapted modules (``training.adapted_modules``), in a fixed order: their inputs
    are the features (with ``head = "adapter"`` the head's input, the pooled representation, too)."""
    return adapted_modules(model, head)


class _Running:
    """Streaming count / mean / M2 with the parallel update."""

    def __init__(self) -> None:
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().double().flatten()
        nb = x.numel()
        if nb == 0:
            return
        mb = float(x.mean())
        m2b = float(((x - mb) ** 2).sum())
        n = self.n + nb
        delta = mb - self.mean
        self.mean += delta * nb / n
        self.m2 += m2b + delta * delta * self.n * nb / n
        self.n = n

    def result(self, eps: float = 1e-5) -> tuple[float, float]:
        var = self.m2 / self.n if self.n else 0.0
        return self.mean, (var + eps) ** 0.5


@torch.no_grad()
def meta_features(model: nn.Module, data: EncodedData, batch_size: int = 64, head: str = "train") -> torch.Tensor:
    """The 2L-dimensional feature vector of a client's train split on ``model`` (a base classifier)."""
    names = feature_modules(model, head)
    modules = dict(model.named_modules())
    stats = {n: _Running() for n in names}
    mask_box: dict[str, torch.Tensor] = {}

    def hook(name):
        def fn(_module, inputs, _output):
            h = inputs[0]
            mask = mask_box["mask"]
            if h.dim() == 3 and h.shape[:2] == mask.shape:
                h = h[mask.bool()]  # real tokens only
            stats[name].update(h)
        return fn

    handles = [modules[n].register_forward_hook(hook(n)) for n in names]
    was_training = model.training
    model.eval()
    try:
        device = device_of(model)
        for batch in data.batches(batch_size):
            inputs = model_inputs(to_device(batch, device))
            mask_box["mask"] = inputs["attention_mask"]
            model(**inputs)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    feats = []
    for n in names:
        feats.extend(stats[n].result())
    return torch.tensor(feats, dtype=torch.float32)


def client_lambdas(base: nn.Module, psg, task, head: str = "train") -> dict[str, torch.Tensor]:
    """A client's λ by module: the PSG applied to the meta-features of its train split (Alg. 2 step 1)."""
    return psg.lambdas(meta_features(base, task.train, head=head), feature_modules(base, head))
