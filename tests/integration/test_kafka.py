"""Lamina's Kafka code on the real broker: topic creation and the offsets status reads."""

from __future__ import annotations

import threading
import time
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic

from lamina.errors import ConfigError
from lamina.settings import Settings
from lamina.streams import (
    end_offsets,
    ensure_topics,
    require_broker_timestamps,
    timestamp_types,
    topic_offsets,
)
from lamina.views import parse_views
from tests.conftest import run_lamina


def with_partitions(settings: Settings, partitions: int) -> Settings:
    return settings.model_copy(
        update={"kafka": settings.kafka.model_copy(update={"partitions": partitions})}
    )


def partition_counts(settings: Settings, topics: list[str]) -> dict[str, int]:
    """Each topic's partition count, once the broker's metadata lists every partition of
    every topic with a leader (a topic is announced before its partitions)."""
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers)
    try:
        deadline = time.monotonic() + 60
        while True:
            found = admin.describe_topics(topics)
            ready = all(
                t["error_code"] == 0
                and t["partitions"]
                and all(p["leader_id"] >= 0 for p in t["partitions"])
                for t in found
            )
            if ready or time.monotonic() > deadline:
                return {t["name"]: len(t["partitions"]) for t in found}
            time.sleep(0.2)
    finally:
        admin.close()


@pytest.fixture
def prefix(stack: Settings) -> Iterator[str]:
    """A private topic-name prefix; every topic under it is deleted at the end."""
    name = f"t-kafka-{uuid.uuid4().hex[:8]}"
    yield name
    admin = KafkaAdminClient(bootstrap_servers=stack.kafka.bootstrap_servers)
    try:
        mine = [t for t in admin.list_topics() if t.startswith(name)]
        if mine:
            admin.delete_topics(mine)
    finally:
        admin.close()


def test_ensure_topics_creates_only_missing_topics_with_configured_partitions(
    stack: Settings, prefix: str
) -> None:
    # 3 partitions: neither the broker's default (num.partitions=2) nor kafka-python's.
    three = with_partitions(stack, 3)
    old, new = f"{prefix}-old", f"{prefix}-new"
    ensure_topics(with_partitions(stack, 1), [old])
    ensure_topics(three, [old, new, new])
    assert partition_counts(stack, [old, new]) == {old: 1, new: 3}
    ensure_topics(three, [old, new])  # all exist: a no-op, not an error
    assert partition_counts(stack, [old, new]) == {old: 1, new: 3}


def test_ensure_topics_tolerates_a_concurrent_creator(stack: Settings, prefix: str) -> None:
    """Jobs starting together all create the same missing topics: none of them fails."""
    topics = [f"{prefix}-{i}" for i in range(8)]
    start = threading.Barrier(3)
    errors: list[BaseException] = []

    def create() -> None:
        start.wait()
        try:
            ensure_topics(stack, topics)
        except BaseException as exc:  # reported below, with the other threads' outcome
            errors.append(exc)

    threads = [threading.Thread(target=create) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    assert partition_counts(stack, topics) == dict.fromkeys(topics, stack.kafka.partitions)


def test_topic_offsets_of_each_partition(stack: Settings, prefix: str) -> None:
    topic, missing = f"{prefix}-offsets", f"{prefix}-missing"
    ensure_topics(stack, [topic])
    producer = KafkaProducer(bootstrap_servers=stack.kafka.bootstrap_servers)
    try:
        sent = [producer.send(topic, value=b"x", partition=p) for p in [0] * 5 + [1] * 3]
        producer.flush()
        for f in sent:
            f.get(timeout=30)
    finally:
        producer.close()
    # As retention would: the first 2 records of partition 0 are gone (the dead-letter count
    # must not count them).
    admin = KafkaAdminClient(bootstrap_servers=stack.kafka.bootstrap_servers)
    try:
        admin.delete_records({TopicPartition(topic, 0): 2})
    finally:
        admin.close()

    first, last = topic_offsets(stack, {topic, missing})
    assert first == {topic: {"0": 2, "1": 0}, missing: {}}
    assert last == {topic: {"0": 5, "1": 3}, missing: {}}
    assert end_offsets(stack, {topic}) == {topic: {"0": 5, "1": 3}}


def _topic_config(settings: Settings, topic: str, key: str) -> dict[str, object]:
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers)
    try:
        found = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic, configs=[key])], config_filter="all"
        )
    finally:
        admin.close()
    return dict(found["topic"][topic][key])


def _source(topic: str) -> str:
    return f"""
[sources.clicks]
topic = "{topic}"
event_id = "id"
event_time = "ts"
event_time_format = "epoch_ms"
fields = {{ id = "string", ts = "long", url = "string" }}

[views.clicks_by_url]
source = "clicks"
keys = ["url"]
bucket = "hour"
aggregations = {{ n = {{ fn = "count" }} }}
"""


def test_ensure_topics_sets_broker_timestamps_on_the_topic(stack: Settings, prefix: str) -> None:
    """Not left to the broker's default (a production broker's is CreateTime)."""
    topic = f"{prefix}-ts"
    ensure_topics(stack, [topic])
    found = _topic_config(stack, topic, "message.timestamp.type")
    assert found["value"] == "LogAppendTime"
    assert found["config_source"] == "DYNAMIC_TOPIC_CONFIG"


def test_a_source_topic_with_producer_timestamps_is_refused(
    stack: Settings, prefix: str, tmp_path: Path
) -> None:
    topic = f"{prefix}-create-time"
    admin = KafkaAdminClient(bootstrap_servers=stack.kafka.bootstrap_servers)
    try:
        admin.create_topics(
            [NewTopic(topic, 1, 1, topic_configs={"message.timestamp.type": "CreateTime"})]
        )
    finally:
        admin.close()
    assert timestamp_types(stack, [topic]) == {topic: "CreateTime"}
    catalog = parse_views(tomllib.loads(_source(topic)))
    with pytest.raises(ConfigError) as err:
        require_broker_timestamps(stack, catalog.sources.values())
    assert topic in str(err.value) and "CreateTime" in str(err.value)
    assert "message.timestamp.type=LogAppendTime" in (err.value.hint or "")

    # A user's `lamina stream run`: a clear error before any JVM starts, nothing started.
    views = tmp_path / "views.toml"
    views.write_text(_source(topic))
    env = {
        "LAMINA_PIPELINE__VIEWS_FILE": str(views),
        "LAMINA_SPARK__CHECKPOINT_DIR": str(tmp_path / "checkpoints"),
        "LAMINA_PIPELINE__MASTER_DIR": str(tmp_path / "master"),
    }
    out = run_lamina(env, "stream", "run", timeout=60)
    assert out.returncode != 0
    assert "Traceback" not in out.stderr + out.stdout
    assert "CreateTime" in out.stderr + out.stdout
    assert not (tmp_path / "master").exists()


def test_a_topic_created_a_moment_ago_is_accepted_and_a_missing_one_named(
    stack: Settings, prefix: str
) -> None:
    """Right after creation the broker may not describe a topic yet: that is no CreateTime
    topic, the check asks again; a topic that never appears is an error saying so."""
    fresh = f"{prefix}-fresh"
    catalog = parse_views(tomllib.loads(_source(fresh)))
    ensure_topics(stack, [fresh])
    require_broker_timestamps(stack, catalog.sources.values())  # no error

    missing = parse_views(tomllib.loads(_source(f"{prefix}-never-created")))
    with pytest.raises(ConfigError, match="does not describe") as err:
        require_broker_timestamps(stack, missing.sources.values())
    assert "never-created" in str(err.value) and "CreateTime" not in str(err.value)
