"""Fuzz, short: malformed records of every kind (bench/corpus.py) through a source job and
through ``lamina master import`` (bench/fuzz.py): no crash, each one a dead letter with a
reason, nothing malformed in the master dataset or a view."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka.admin import KafkaAdminClient, NewTopic

from lamina.settings import Settings
from lamina.streams import deadletter_topic, ensure_topics
from lamina.views import load_views
from tests.conftest import ROOT, run_lamina
from tests.integration.streams import (
    drop_private_world,
    private_env,
    produce,
    settings_under,
)

sys.path.insert(0, str(ROOT / "bench"))

import corpus
import fuzz

N = 3000
"""Malformed records: each kind at least 3 times (every 50th record is the next kind)."""


@pytest.fixture
def env(stack: Settings, tmp_path: Path) -> Iterator[dict[str, str]]:
    env = private_env(tmp_path, "fz", 10)
    yield env
    with settings_under(env) as settings:
        drop_private_world(settings)


def test_every_malformed_record_is_a_dead_letter(env: dict[str, str], tmp_path: Path) -> None:
    report = fuzz.fuzz(env, "pageviews", N, seed=12, valid_every=50, workdir=tmp_path)
    assert all(report["kinds"].get(k, 0) >= 3 for k in corpus.KINDS), report["kinds"]
    stream, imported = report["stream"], report["import"]
    assert stream["crash"] is None and stream["exit_code"] == 0, stream["log_tail"]
    assert stream["dead_letters"]["ok"], stream["dead_letters"]
    assert stream["dead_letters"]["matched"] == N
    assert stream["archive_ok"] and stream["views_ok"], stream
    assert stream["view_counts"]["web_pageviews"] > 0
    assert imported["exit_code"] == 0 and not imported["traceback"], imported["stderr_tail"]
    assert imported["dead_letters"]["ok"], imported["dead_letters"]
    assert imported["dead_letters"]["matched"] == imported["malformed"] > N * 0.95
    assert imported["imported_ok"]
    assert report["ok"]


def test_a_job_whose_query_fails_exits_with_the_failure(
    env: dict[str, str], tmp_path: Path
) -> None:
    """A dead-letter topic that refuses every letter fails the job's query: ``lamina stream
    run`` says so and exits non-zero (it used to exit 0, as if stopped on request)."""
    with settings_under(env) as settings:
        source = load_views(settings.pipeline.views_file).sources["pageviews"]
        admin = KafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers)
        try:
            config = {"max.message.bytes": "100", "message.timestamp.type": "LogAppendTime"}
            admin.create_topics([NewTopic(deadletter_topic(source), 1, 1, topic_configs=config)])
        finally:
            admin.close()
        ensure_topics(settings, [source.topic])
        produce(settings, source.topic, [b"{not json" + b"x" * 500])
    out = run_lamina(env, "stream", "run", "pageviews", "--trigger", "0", timeout=600)
    assert out.returncode == 1, out.stdout[-2000:]
    assert "streaming query source-pageviews failed" in out.stdout + out.stderr
