"""How long operations report progress, free of any terminal code: the layers (batch, the
stack, jar fetches) report through :class:`Progress`; the CLI renders it with rich on a
terminal (:mod:`lamina.cli.progress`), and everything else (Airflow tasks, CI logs, tests)
gets plain lines.

A :class:`Progress` is also a plain ``Callable[[str], None]`` (calling it is
:meth:`Progress.note`), so a function that takes ``progress`` accepts either, and
:func:`as_progress` turns a plain callable (``print``, ``log.info``, ``list.append``) into
a :class:`Progress` of plain lines.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)


class Task:
    """One running operation of a :class:`Progress` (what :meth:`Progress.task` yields).

    Its counts (``completed`` of ``total``, in the task's unit) are shown only while live
    (a progress bar on a terminal); :meth:`status` says what it is doing now: on a terminal
    it replaces the task's status text, in plain output it is a line. The plain base class
    keeps the counts and writes status lines through ``emit``."""

    def __init__(
        self, description: str, total: int | None, emit: Callable[[str], None] | None
    ) -> None:
        self.description = description
        self.total = total
        self.completed = 0
        self._emit = emit

    def advance(self, n: int = 1) -> None:
        """``n`` more units done."""
        self.update(completed=self.completed + n)

    def update(self, *, completed: int | None = None, total: int | None = None) -> None:
        """Set the units done and/or the total (``None``: unchanged)."""
        if completed is not None:
            self.completed = completed
        if total is not None:
            self.total = total

    def status(self, message: str) -> None:
        """What the operation is doing now (e.g. a slow start's last log line)."""
        if self._emit is not None:
            self._emit(f"{self.description}: {message}")


class Progress:
    """Progress of long operations as plain lines, written through ``emit`` (``None``:
    nothing at all, ``--quiet``).

    :meth:`note` writes a line that stays (a result, a warning); :meth:`task` wraps one
    long operation: plain output writes its description once when it starts (then only its
    :meth:`Task.status` lines), a live renderer shows a spinner or bar with the elapsed time
    that disappears when it ends. ``live`` says which: callers skip periodic "still
    working" lines when it is true, the renderer shows the time already."""

    live = False

    def __init__(self, emit: Callable[[str], None] | None = log.info) -> None:
        self._emit = emit

    def note(self, message: str) -> None:
        if self._emit is not None:
            self._emit(message)

    def __call__(self, message: str) -> None:
        self.note(message)

    @contextmanager
    def task(self, description: str, total: int | None = None) -> Iterator[Task]:
        """One long operation of ``total`` units (``None``: unknown, a spinner)."""
        if self._emit is not None:
            self._emit(f"{description} ...")
        yield Task(description, total, self._emit)


def as_progress(progress: Callable[[str], None] | Progress | None) -> Progress:
    """``progress`` itself if it is a :class:`Progress`; a plain callable as a
    :class:`Progress` of plain lines through it; ``None``: plain lines to this module's
    log."""
    if isinstance(progress, Progress):
        return progress
    return Progress(log.info if progress is None else progress)
