"""Tasks: what methods must not assume about the problem (see ``base``): classification and
instruction-tuned generation."""

from .base import Task
from .classification import ClassificationTask
from .generation import TEMPLATES, GenerationTask

CLASSIFICATION = ClassificationTask()

__all__ = ["CLASSIFICATION", "TEMPLATES", "ClassificationTask", "GenerationTask", "Task"]
