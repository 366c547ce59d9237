"""Tasks by name (issue 27): ``data.task`` (default: the dataset's own, ``data.registry``) names one.

``register_task(name, factory)``: ``factory(cfg) -> Task`` builds the task from the config (generation reads
``[generation]``). Built in: ``classification`` and ``generation``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .protocol import Task

_TASKS: dict[str, Callable[[Any], Task]] = {}


def register_task(name: str, factory: Callable[[Any], Task]) -> None:
    _TASKS[name] = factory


def unregister_task(name: str) -> None:
    _TASKS.pop(name, None)


def task_names() -> list[str]:
    return sorted(_TASKS)


def make_task(name: str, cfg) -> Task:
    if name not in _TASKS:
        from ..errors import UserError

        raise UserError(f"unknown task {name!r}: known are {task_names()}")
    return _TASKS[name](cfg)
