"""Test harness: tier markers by folder, the versions header, and the real local stack.

The stack is started once per test session (or an already running, healthy one is reused)
and only what this session started is stopped at the end. Service logs stay in the state
directory either way; their paths are printed when a test failed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from lamina.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
TIERS = {"unit": "unit", "spark": "spark", "integration": "integration"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        tier = Path(str(item.fspath)).parent.name
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, TIERS[tier]))


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def pytest_report_header(config: pytest.Config) -> list[str]:
    s = load_settings(ROOT / "conf" / "lamina.toml")
    return [
        f"lamina stack: Kafka {s.kafka.version} (KRaft) at {s.kafka.bootstrap_servers}, "
        f"Cassandra {s.cassandra.version} at {s.cassandra.host}:{s.cassandra.port}, "
        f"Spark {_version('pyspark')} ({s.spark.master}), Airflow {_version('apache-airflow')}",
        f"lamina state dir: {s.stack.state_dir}",
    ]


@pytest.fixture(scope="session")
def settings() -> Settings:
    return load_settings(ROOT / "conf" / "lamina.toml")


@pytest.fixture(scope="session")
def stack(settings: Settings, request: pytest.FixtureRequest) -> Iterator[Settings]:
    """The real Kafka + Cassandra, healthy, for the whole session; yields the settings."""
    from lamina.stack.manager import Stack

    st = Stack(settings)
    before = {s.name for s in st.status() if s.healthy}
    statuses = st.up(progress=lambda m: print(f"[stack] {m}"))
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        versions = ", ".join(f"{s.name} {s.version} (pid {s.pid})" for s in statuses)
        reporter.write_line(f"[stack] real services in use: {versions}")
    yield settings
    started = [s.name for s in st.services if s.name not in before]
    if request.session.testsfailed:
        for svc in st.services:
            print(f"[stack] {svc.name} log kept: {svc.log_file}")
    if started:
        Stack(settings, started).down(progress=lambda m: print(f"[stack] {m}"))


@pytest.fixture(scope="session")
def spark(settings: Settings) -> Iterator[Any]:
    """One local SparkSession for the whole test session (the JVM starts once)."""
    from engine.session import spark_session

    session = spark_session(settings, "lamina-tests")
    yield session
    session.stop()
    from serving.cassandra import close_shared

    close_shared()  # source jobs run in this process used the shared session


def isolated(settings: Settings, tmp: Path) -> Settings:
    """``settings`` with a private keyspace and master dataset (tests never share tables)."""
    ks = f"t_{uuid.uuid4().hex[:10]}"
    return settings.model_copy(
        update={
            "cassandra": settings.cassandra.model_copy(update={"keyspace": ks}),
            "pipeline": settings.pipeline.model_copy(
                update={"master_dir": tmp / "master", "views_file": ROOT / "conf" / "views.toml"}
            ),
        }
    )


def run_lamina(
    env: dict[str, str], *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``lamina ARGS`` in a new process (this interpreter, the repository as cwd) with ``env``
    over the current environment; its exit status and captured text."""
    return subprocess.run(
        [sys.executable, "-m", "lamina.cli", *args],
        env={**os.environ, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
