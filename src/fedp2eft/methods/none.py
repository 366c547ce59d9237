"""The reference row "none": the base model as it is.

With ``none_trains_head`` (the default) the classification head alone is fine-tuned on the
client's train split with the same optimiser, batch size and epochs as the other methods and
the backbone frozen (a linear probe on the base model's pooled features, computed once in eval
mode, so no dropout) — needed when the base model is off-the-shelf and its head is fresh.
With ``none_trains_head = false`` the base model predicts untouched (use it when the base
model's head was trained, e.g. by Standard FL). The probe is the task's (``Task.probe``): a task whose
model has no head (generation's causal LM) predicts untouched either way.
"""

from __future__ import annotations

from torch import nn

from .base import ClientTask, TrainSettings
from .registry import MethodSpec, register_method


class NoneMethod:
    name = "none"
    uses_budget = False

    def personalise(self, base: nn.Module, task: ClientTask, budget: int | None, settings: TrainSettings) -> list:
        if settings.none_trains_head:
            return task.kind.probe(base, task.train, task.test, settings)
        return task.kind.predict(base, task.test, settings.eval_batch_size)


register_method(MethodSpec("none", lambda cfg, resources, seed: NoneMethod(), uses_budget=False,
                           summary="the base model (a linear probe of its head with none_trains_head)"))
