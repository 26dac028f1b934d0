"""Kafka: a real produce/consume round trip through kafka-python."""

from __future__ import annotations

import uuid

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic

from lamina.settings import Settings


def test_produce_consume_round_trip(stack: Settings) -> None:
    topic = f"test-roundtrip-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=stack.kafka.bootstrap_servers)
    try:
        admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
    finally:
        admin.close()
    sent = {f"k{i}".encode(): f"v{i}".encode() for i in range(100)}
    producer = KafkaProducer(bootstrap_servers=stack.kafka.bootstrap_servers)
    try:
        for k, v in sent.items():
            producer.send(topic, key=k, value=v)
        producer.flush()
    finally:
        producer.close()
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=stack.kafka.bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=15_000,
        group_id=None,
    )
    got: dict[bytes, bytes] = {}
    partitions: set[int] = set()
    try:
        for record in consumer:
            got[record.key] = record.value
            partitions.add(record.partition)
            if len(got) == len(sent):
                break
    finally:
        consumer.close()
    assert got == sent
    assert partitions == {0, 1}
