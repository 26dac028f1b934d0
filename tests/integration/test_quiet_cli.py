"""A quiet CLI (issue #15): a real ``lamina batch run`` in its own process prints Lamina's own
timestamped lines and nothing else; Spark's JVM output goes to ``<state dir>/logs/spark.log``."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lamina.settings import Settings
from lamina.views import load_views
from tests import truth
from tests.conftest import ROOT, isolated, run_lamina
from tests.integration.conftest import archive_two_epochs, drop_keyspace

VIEW = "cloud_metering"

OWN_LINE = re.compile(r"^\d\d:\d\d:\d\d (?!(DEBUG|INFO|WARNING|ERROR|CRITICAL) )\S")
"""A line of Lamina's own: ``HH:MM:SS message``, not a log record (``HH:MM:SS LEVEL name:``)."""
LEAK = re.compile(r"WARN|Warning|log4j|incubator|SLF4J|py4j", re.IGNORECASE)


@pytest.fixture
def world(stack: Settings, tmp_path: Path) -> Iterator[dict[str, Any]]:
    settings = isolated(stack, tmp_path)
    view = load_views(ROOT / "conf" / "views.toml").view(VIEW)
    es = settings.pipeline.epoch_seconds
    e1 = (int(time.time()) // es - 10) * es
    archive_two_epochs(settings, view.source, truth.metering(300, seed=15).good, e1)
    try:
        yield {"settings": settings, "state": tmp_path / "state"}
    finally:
        drop_keyspace(settings)


def test_batch_run_prints_only_laminas_own_lines(world: dict[str, Any]) -> None:
    settings, state = world["settings"], world["state"]
    env = {
        "LAMINA_CASSANDRA__KEYSPACE": settings.cassandra.keyspace,
        "LAMINA_PIPELINE__MASTER_DIR": str(settings.master_dir),
        "LAMINA_STACK__STATE_DIR": str(state),
        "PYTHONWARNINGS": "",  # the dependencies' warnings are hidden by the CLI, not by this
    }
    done = run_lamina(env, "batch", "run", "--view", VIEW, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    leaks = [line for line in lines if not OWN_LINE.match(line) or LEAK.search(line)]
    assert not leaks, "\n".join(leaks)
    assert done.stderr == "", done.stderr
    assert any(f"{VIEW}: version" in line and "published" in line for line in lines), lines
    # Off a terminal the build's phases are plain lines, one when each starts.
    assert any("aggregating and writing rows ..." in line for line in lines), lines
    # The JVM's own output was not lost: it went to the state directory's Spark log.
    jvm = (state / "logs" / "spark.log").read_text()
    assert "log4j" in jvm or "WARN" in jvm, jvm[:500]
