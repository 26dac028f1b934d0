"""Structured Streaming: Kafka source -> stateful count -> foreachBatch -> Cassandra."""

from __future__ import annotations

import random
import uuid
from collections import Counter
from pathlib import Path

import pytest
from kafka import KafkaProducer

from lamina.settings import Settings

KEYS = ("checkout", "home", "pricing", "docs")


def produce_events(bootstrap: str, topic: str, n: int, seed: int) -> Counter[str]:
    """Produce ``n`` keyed records; return the count per key the broker acknowledged."""
    rng = random.Random(seed)
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20)
    truth: Counter[str] = Counter()
    try:
        sent = []
        for i in range(n):
            key = rng.choice(KEYS)
            sent.append((key, producer.send(topic, key=key.encode(), value=b"%d" % i)))
        producer.flush()
        for key, fut in sent:
            fut.get(timeout=30)
            truth[key] += 1
    finally:
        producer.close()
    return truth


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
