"""Where the output of the Spark JVM this process starts goes: set by the CLI (quiet by
default), read by :func:`engine.session.spark_session` when it starts the JVM."""

from __future__ import annotations

from pathlib import Path

JVM_LOG: Path | None = None
"""The file the JVM's stdout and stderr (log4j's console, the JVM's warnings) go to,
appended; ``None``: the terminal, inherited. Takes effect for the first Spark session of a
process only (one JVM per process)."""


def send_jvm_output_to(path: Path | None) -> None:
    """Set :data:`JVM_LOG`."""
    global JVM_LOG
    JVM_LOG = path
