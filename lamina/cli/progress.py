"""The CLI's rendering of :class:`lamina.progress.Progress`: on a terminal a rich spinner or
bar per running operation with its elapsed time (gone when it ends) and the notes as
timestamped lines above them; otherwise (CI logs, a pipe) timestamped plain lines; with
``--quiet`` nothing."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    ProgressColumn,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.progress import Progress as Bars
from rich.progress import Task as BarTask
from rich.text import Text

from lamina.progress import Progress, Task


class StderrNowHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A log handler writing to whatever ``sys.stderr`` is when a record comes: while a live
    display runs (rich redirects ``sys.stderr``), a record prints above it instead of
    through it."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def stamp(message: str) -> str:
    return f"{time.strftime('%H:%M:%S')} {message}"


class _Counts(ProgressColumn):
    """``done of total`` when the task has a total, nothing otherwise."""

    def render(self, task: BarTask) -> Text:
        if task.total is None:
            return Text("")
        return Text(f"{int(task.completed)} of {int(task.total)}", style="progress.download")


class _LiveTask(Task):
    def __init__(self, bars: Bars, task_id: TaskID, description: str, total: int | None):
        super().__init__(description, total, None)
        self._bars, self._id = bars, task_id

    def update(self, *, completed: int | None = None, total: int | None = None) -> None:
        super().update(completed=completed, total=total)
        self._bars.update(self._id, completed=self.completed, total=self.total)

    def status(self, message: str) -> None:
        self._bars.update(self._id, status=message)


class TerminalProgress(Progress):
    """Live progress on ``console`` (a terminal): each :meth:`task` a transient spinner (a
    bar once it has a total) with the elapsed time and its status; notes are timestamped
    lines printed above the running tasks."""

    live = True

    def __init__(self, console: Console) -> None:
        super().__init__(self._print)
        self.console = console
        self._bars: Bars | None = None
        self._running = 0

    def _print(self, message: str) -> None:
        self.console.print(stamp(message), markup=False, highlight=False)

    @contextmanager
    def task(self, description: str, total: int | None = None) -> Iterator[Task]:
        if self._bars is None:
            self._bars = Bars(
                SpinnerColumn(),
                TextColumn("{task.description}", markup=False),
                BarColumn(bar_width=20),
                _Counts(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[status]}", markup=False),
                console=self.console,
                transient=True,
            )
            self._bars.start()
        bars = self._bars
        task_id = bars.add_task(description, total=total, status="")
        self._running += 1
        try:
            yield _LiveTask(bars, task_id, description, total)
        finally:
            bars.remove_task(task_id)
            self._running -= 1
            if not self._running:
                bars.stop()
                self._bars = None


def cli_progress(*, quiet: bool = False, console: Console | None = None) -> Progress:
    """The progress a command reports through: nothing with ``quiet``; live on a terminal
    (``console``, default stdout's, decides: rich's terminal detection); plain timestamped
    lines on stdout otherwise."""
    if quiet:
        return Progress(None)
    console = console or Console()
    if console.is_terminal:
        return TerminalProgress(console)
    out = console.file
    return Progress(lambda message: print(stamp(message), file=out, flush=True))
