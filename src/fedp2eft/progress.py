"""What a run shows while it works: a live bar on a terminal, and one plain line per personalised client
(with elapsed time and an estimate of what remains) when output goes to a file or a pipe, where a live
bar would print nothing until the end. Consoles that are not terminals never wrap lines, so paths stay
whole."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


def make_console(stderr: bool = False):
    """A rich console; not on a terminal: no wrapping and room for wide tables."""
    import sys

    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        return Console(stderr=stderr)
    return Console(stderr=stderr, soft_wrap=True, width=200)


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class RunProgress:
    """Progress over runs and, within a run, its clients: ``task(label, total)`` returns the ``advance``
    callback of one run; ``done()`` counts a finished run."""

    def __init__(self, console, runs: int):
        self.console, self.runs, self.finished = console, runs, 0
        self.start = time.perf_counter()
        self.live = console.is_terminal
        self._progress = None
        if self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
            self._progress = Progress(*columns, console=console, transient=False)
            self._overall = self._progress.add_task("runs", total=runs)

    def __enter__(self):
        if self._progress is not None:
            self._progress.__enter__()
        return self

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def task(self, label: str, total: int, unit: str = "client") -> Callable[[], None]:
        if self._progress is not None:
            bar = self._progress.add_task(label, total=total)
            return lambda: self._progress.advance(bar)
        started, count = time.perf_counter(), [0]

        def advance() -> None:
            count[0] += 1
            spent = time.perf_counter() - started
            left = spent / count[0] * (total - count[0])
            tail = f", ~{duration(left)} left in this run" if count[0] < total else ""
            self.console.print(f"{label}: {unit} {count[0]}/{total}, {duration(spent)}{tail} "
                               f"(run {self.finished + 1}/{self.runs}, {duration(time.perf_counter() - self.start)} "
                               "in all)")

        return advance

    def done(self) -> None:
        self.finished += 1
        if self._progress is not None:
            self._progress.advance(self._overall)


@contextmanager
def quiet(name: str = "flwr") -> Iterator[None]:
    """Logger ``name`` at WARNING within the block (a library's INFO lines would break the progress display)."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)
