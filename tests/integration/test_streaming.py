"""Structured Streaming: Kafka source -> stateful count -> foreachBatch -> Cassandra."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from lamina.demo import produce_events
from lamina.settings import Settings

pytestmark = pytest.mark.spark


def test_stream_counts_land_in_cassandra(stack: Settings, tmp_path: Path) -> None:
    from batch.spark import spark_session
    from speed.smoke import read_counts, start_count_stream

    topic = f"test-stream-{uuid.uuid4().hex[:8]}"
    table = f"smoke_{uuid.uuid4().hex[:8]}"
    truth = produce_events(stack.kafka.bootstrap_servers, topic, 500, seed=1)
    spark = spark_session(stack, "lamina-test-stream")
    ckpt = tmp_path / "ckpt"
    query = start_count_stream(spark, stack, topic=topic, table=table, checkpoint=ckpt)
    try:
        query.processAllAvailable()
        assert read_counts(stack, table) == dict(truth)
        # A second round: update mode upserts absolute counts, so totals stay exact.
        more = produce_events(stack.kafka.bootstrap_servers, topic, 300, seed=2)
        query.processAllAvailable()
        assert read_counts(stack, table) == dict(truth + more)
    finally:
        query.stop()
    # Restart from the checkpoint: nothing is re-counted.
    query = start_count_stream(spark, stack, topic=topic, table=table, checkpoint=ckpt)
    try:
        query.processAllAvailable()
        assert read_counts(stack, table) == dict(truth + more)
    finally:
        query.stop()
