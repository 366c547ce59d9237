"""Tasks: what methods must not assume about the problem (see ``base``): classification and
instruction-tuned generation, by name in ``registry`` (``data.task``)."""

from .classification import ClassificationTask
from .generation import TEMPLATES, GenerationTask
from .protocol import Task
from .registry import make_task, register_task, task_names, unregister_task

CLASSIFICATION = ClassificationTask()


def _generation(cfg) -> GenerationTask:
    g = cfg.generation
    return GenerationTask(template=g.template, max_new_tokens=g.max_new_tokens, max_prompt_fraction=g.max_prompt_fraction)


register_task("classification", lambda cfg: CLASSIFICATION)
register_task("generation", _generation)

__all__ = ["CLASSIFICATION", "TEMPLATES", "ClassificationTask", "GenerationTask", "Task", "make_task", "register_task",
           "task_names", "unregister_task"]
