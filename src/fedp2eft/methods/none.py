"""The reference row "none": the base model as it is.

With ``[none] trains_head`` (the default) the classification head alone is fine-tuned on the
client's train split with the same optimiser, batch size and epochs as the other methods and
the backbone frozen (a linear probe on the base model's pooled features, computed once in eval
mode, so no dropout) — needed when the base model is off-the-shelf and its head is fresh.
With ``trains_head = false`` the base model predicts untouched (use it when the base
model's head was trained, e.g. by Standard FL). The probe is the task's (``Task.probe``): a task whose
model has no head (generation's causal LM) predicts untouched either way.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .interface import ClientTask, PersonaliseConfig
from .registry import MethodSpec, register_method, register_moved_key


@dataclass(frozen=True)
class NoneConfig:
    """``[none]``: the reference row's one setting."""

    trains_head: bool = True  # a linear probe of the head on the client's train split (false: the base as it is)


@dataclass
class NoneMethod:
    trains_head: bool = True
    name: str = "none"
    uses_budget: bool = False

    def personalise(self, base: nn.Module, task: ClientTask, budget: int | None, p: PersonaliseConfig,
                    seed: int) -> list:
        if self.trains_head:
            return task.problem.probe(base, task.train, task.test, p, seed)
        return task.problem.predict(base, task.test, p.eval_batch_size)


register_method(MethodSpec("none", lambda cfg, resources, seed: NoneMethod(cfg.none.trains_head), uses_budget=False,
                           section="none", settings=NoneConfig,
                           summary="the base model (a linear probe of its head with [none] trains_head)"))
register_moved_key("personalise.none_trains_head", "none.trains_head")
