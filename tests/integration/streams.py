"""Shared pieces of the streaming tests: a private world as LAMINA_* variables, producing
to Kafka with acknowledgements, and checking merged HTTP answers against the truth."""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from lamina.settings import Settings, environment, load_settings
from lamina.views import load_views
from serving.api import create_app
from tests import truth
from tests.conftest import ROOT


def private_views(tmp: Path, suffix: str | None = None) -> Path:
    """conf/views.toml with every topic renamed ``<topic>-<suffix>`` (a random suffix by
    default), written under ``tmp``: tests never read or write the shared topics."""
    suffix = suffix or uuid.uuid4().hex[:8]
    text = (ROOT / "conf" / "views.toml").read_text()
    views = tmp / "views.toml"
    views.write_text(re.sub(r'^topic = "([^"]+)"', rf'topic = "\1-{suffix}"', text, flags=re.M))
    return views


def private_env(tmp: Path, prefix: str, epoch_s: int) -> dict[str, str]:
    """Private keyspace, topics, master dataset, checkpoints and job registry, as the
    ``LAMINA_*`` variables a separate process (``lamina ...``) needs."""
    suffix = uuid.uuid4().hex[:8]
    views = private_views(tmp, suffix)
    return {
        "LAMINA_CONFIG": str(ROOT / "conf" / "lamina.toml"),
        "LAMINA_CASSANDRA__KEYSPACE": f"t_{prefix}_{suffix}",
        "LAMINA_PIPELINE__VIEWS_FILE": str(views),
        "LAMINA_PIPELINE__MASTER_DIR": str(tmp / "master"),
        "LAMINA_PIPELINE__EPOCH_SECONDS": str(epoch_s),
        "LAMINA_SPARK__CHECKPOINT_DIR": str(tmp / "checkpoints"),
        "LAMINA_SPARK__JOBS_DIR": str(tmp / "jobs"),
        "LAMINA_SPARK__DRIVER_MEMORY": "1g",
    }


@contextlib.contextmanager
def settings_under(env: dict[str, str]) -> Iterator[Settings]:
    """Settings as a process started with ``env`` sees them (``env`` applied meanwhile)."""
    with environment(env):
        yield load_settings()


def produce(settings: Settings, topic: str, records: list[bytes]) -> None:
    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, linger_ms=5)
    try:
        # Redeliveries share the event's key, hence its partition (as producer retries do).
        futures = [producer.send(topic, key=str(hash(r) % 7).encode(), value=r) for r in records]
        producer.flush()
        for f in futures:
            f.get(timeout=30)  # every record acknowledged, or the test fails here
    finally:
        producer.close()


def end_offsets(settings: Settings, topic: str) -> dict[str, int]:
    c = KafkaConsumer(bootstrap_servers=settings.kafka.bootstrap_servers)
    try:
        tps = [TopicPartition(topic, p) for p in c.partitions_for_topic(topic) or []]
        return {str(tp.partition): off for tp, off in c.end_offsets(tps).items()}
    finally:
        c.close()


def check_answers(settings: Settings, produced: dict[str, list[dict[str, Any]]]) -> None:
    """Every key and bucket of each view's merged HTTP answer equals the truth computed from
    the ``produced`` valid events (exact, or within the sketches' bounds)."""
    catalog = load_views(settings.pipeline.views_file)
    with TestClient(create_app(settings, catalog)) as client:
        for view, good in produced.items():
            want = truth.truth(view, good)
            keys = sorted({k for k, _ in want})
            r = client.get(
                f"/views/{view}/query",
                params={
                    "key": keys,
                    "from": str(truth.BASE - 4 * 86400),
                    "to": str(truth.BASE + 3600),
                    "q": 0.95,
                },
            )
            assert r.status_code == 200, r.text
            got = {
                (res["key"], b["bucket_start"]): b["values"]
                for res in r.json()["results"]
                for b in res["buckets"]
            }
            assert set(got) == set(want), view
            problems = {k: p for k in want if (p := truth.check(view, got[k], want[k]))}
            assert problems == {}, view
