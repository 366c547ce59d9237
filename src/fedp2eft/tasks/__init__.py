"""Tasks: what methods must not assume about the problem (see ``base``). Classification is the first."""

from .base import Task
from .classification import ClassificationTask

CLASSIFICATION = ClassificationTask()
TASKS: dict[str, Task] = {CLASSIFICATION.name: CLASSIFICATION}

__all__ = ["CLASSIFICATION", "TASKS", "ClassificationTask", "Task"]
