"""The invariant, end to end, on real Kafka, Spark and Cassandra, with a hard kill.

Events with late arrivals (hours and days), redeliveries and bad records are produced in
rounds; the archiver and the speed jobs run in a separate process (``lamina stream run``);
batch runs happen between rounds; the streaming process is killed with SIGKILL once and
restarted. At every checkpoint, for every key and bucket of the three example views, the
merged answer of the HTTP API equals the truth computed from the produced events; each bad
record is in the dead letters exactly once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batch.master import complete_cutoff
from batch.run import run_batch
from lamina.settings import Settings
from lamina.views import load_views
from speed.deadletters import read_deadletters
from speed.jobs import ensure_topics
from speed.status import status_file
from tests import truth
from tests.conftest import ROOT
from tests.integration.streams import (
    check_answers,
    end_offsets,
    private_env,
    produce,
    settings_under,
)

EPOCH_S = 5
GENS = {
    "web_pageviews": ("pageviews", truth.pageviews),
    "iot_temperature": ("sensors", truth.sensors),
    "cloud_metering": ("metering", truth.metering),
}


@pytest.fixture(scope="module")
def env(stack: Settings, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Private keyspace, topics, master dataset and checkpoints, as LAMINA_* variables."""
    return private_env(tmp_path_factory.mktemp("invariant"), "inv", EPOCH_S)


@pytest.fixture(scope="module")
def inv(env: dict[str, str]) -> Iterator[Settings]:
    """Settings as the streaming process sees them (the env above applied)."""
    with settings_under(env) as settings:
        yield settings


class StreamProcess:
    """``lamina stream run`` in its own process (its own Spark), killable with SIGKILL."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = {**os.environ, **env}
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        out = self.log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lamina.cli", "stream", "run", "--trigger", "1"],
            env=self.env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill_hard(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)  # the driver and its JVM, no goodbye
        self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def wait_caught_up(
    settings: Settings, queries: dict[str, str], proc: StreamProcess, timeout_s: float = 300
) -> None:
    """Until every query's committed offsets reach the topics' ends (or fail loudly)."""
    want = {q: end_offsets(settings, topic) for q, topic in queries.items()}
    deadline = time.monotonic() + timeout_s
    pending = set(queries)
    while pending and time.monotonic() < deadline:
        assert proc.proc is not None and proc.proc.poll() is None, proc.log.read_text()[-3000:]
        for q in list(pending):
            f = status_file(settings, q)
            if f.exists():
                import json

                got = json.loads(f.read_text()).get("end_offsets", {})
                topic = queries[q]
                if all(got.get(topic, {}).get(p, -1) >= off for p, off in want[q].items()):
                    pending.discard(q)
        time.sleep(1)
    assert not pending, f"not caught up: {pending}\n{proc.log.read_text()[-3000:]}"


def test_merged_answers_stay_exact(
    env: dict[str, str], inv: Settings, spark: Any, tmp_path: Path
) -> None:
    settings = inv
    catalog = load_views(settings.pipeline.views_file)
    topics = {v: catalog.view(v).source.topic for v in GENS}
    queries = {f"speed-{v}": topics[v] for v in GENS}
    queries |= {f"archiver-{catalog.view(v).source.name}": topics[v] for v in GENS}
    queries |= {f"deadletters-{catalog.view(v).source.name}": topics[v] for v in GENS}
    produced: dict[str, list[dict[str, Any]]] = {v: [] for v in GENS}
    bad: dict[str, list[bytes]] = {v: [] for v in GENS}

    def round_of(n: int, seed: int) -> None:
        for view, (_, gen) in GENS.items():
            g = gen(n, seed=seed)
            produce(settings, topics[view], g.raw)
            produced[view] += g.good
            bad[view] += g.bad

    ensure_topics(settings, [t for v in GENS for t in (topics[v], f"{topics[v]}.deadletters")])
    proc = StreamProcess(env, tmp_path / "stream.log")
    proc.start()
    try:
        # Round 1: only the speed layer has seen anything (no batch published yet).
        round_of(600, seed=11)
        wait_caught_up(settings, queries, proc)
        check_answers(settings, produced)

        # A batch covers the complete epochs; the rest comes from real-time rows.
        time.sleep(EPOCH_S + 1)
        round_of(300, seed=12)
        wait_caught_up(settings, queries, proc)
        cut = {v: complete_cutoff(settings, catalog.view(v).source) for v in GENS}
        assert all(c is not None for c in cut.values()), cut
        run_batch(spark, settings, catalog)
        check_answers(settings, produced)

        # Round 3, with the streaming process killed hard in the middle of it.
        round_of(400, seed=13)
        time.sleep(3)
        proc.kill_hard()
        round_of(400, seed=14)
        proc.start()
        wait_caught_up(settings, queries, proc)
        check_answers(settings, produced)

        # Another batch after the restart, then one more round.
        time.sleep(EPOCH_S + 1)
        round_of(200, seed=15)
        wait_caught_up(settings, queries, proc)
        run_batch(spark, settings, catalog)
        check_answers(settings, produced)
    finally:
        proc.stop()

    for view in GENS:
        letters = read_deadletters(settings, catalog.view(view).source)
        assert sorted(d["raw"].encode() for d in letters) == sorted(bad[view])
