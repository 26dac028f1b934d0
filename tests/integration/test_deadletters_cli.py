"""``lamina deadletters``: what the archiver's dead-letter sink wrote, as JSON and as a table."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from kafka import KafkaProducer

from lamina.settings import Settings
from lamina.streams import (
    DEADLETTER_RAW_MAX,
    EPOCH_MARK_KEY,
    EPOCH_MARK_VALUE,
    deadletter_topic,
    ensure_topics,
)
from lamina.views import load_views
from serving.api import create_app
from serving.store import open_store
from speed.api import status_router
from speed.deadletters import read_deadletters
from speed.queries import start_source
from tests.conftest import run_lamina
from tests.integration.streams import (
    drop_private_world,
    private_env,
    produce,
    settings_under,
    topic_records,
)

GOOD = [
    json.dumps(
        {
            "event_id": f"e{i}",
            "ts": "2026-11-18T08:00:00Z",
            "url": "/p/1",
            "visitor": "v1",
            "status": 200,
            "load_ms": 1.5,
        }
    ).encode()
    for i in range(10)
]
LONG = b"[" + b"1, " * 40 + b"1]"
# Its letter repeats only its first DEADLETTER_RAW_MAX bytes (whole, base64 would not fit a
# Kafka message: the job used to fail on it).
HUGE = b'{"event_id": "big", "blob": "' + b"x" * 800_000
BAD = {
    # raw record -> the reason the stream gives (counts 4, 2, 1: a stable summary order)
    b"{not json": "not valid JSON",
    HUGE: "not valid JSON",
    b"caf\xe9 au lait": "not valid JSON: not valid UTF-8",
    b"": "not valid JSON: an empty record",
    b"[1, 2]": "not a JSON object but list",
    LONG: "not a JSON object but list",
    GOOD[0].replace(b'"e0"', b"null"): "missing field 'event_id'",
}
SUMMARY = (
    "7 dead letters for source pageviews: 4 not valid JSON, 2 not a JSON object but list, "
    "1 missing field 'event_id'"
)
KIND = {  # the kind of problem each reason above is counted under
    "not valid JSON": "not valid JSON",
    "not valid JSON: not valid UTF-8": "not valid JSON",
    "not valid JSON: an empty record": "not valid JSON",
    "not a JSON object but list": "not a JSON object but list",
    "missing field 'event_id'": "missing field 'event_id'",
}
FOREIGN = "not a Lamina dead letter (written to the topic by something else)"


def drain(spark: Any, settings: Settings, source: Any) -> None:
    """Run ``source``'s job in this process until it has read everything in its topic."""
    catalog = load_views(settings.pipeline.views_file)
    with open_store(settings.cassandra, catalog):
        pass  # the real-time tables of the source's views
    query = start_source(spark, settings, catalog, source)
    try:
        query.processAllAvailable()
    finally:
        query.stop()


def iso_ms(ms: int) -> str:
    """A broker timestamp (ms) as the dead-letter sink formats it: UTC, milliseconds."""
    seconds = datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{seconds}.{ms % 1000:03d}Z"


def line(d: dict[str, Any]) -> str:
    """One letter as the table shows it (its raw record cut at 80 characters)."""
    return f"{d['topic']}[{d['partition']}]@{d['offset']}  {d['reason']}  raw={d['raw'][:80]!r}"


@pytest.fixture(scope="module")
def env(stack: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Private topics, master dataset and checkpoints (``LAMINA_*``), deleted at the end."""
    env = private_env(tmp_path_factory.mktemp("deadletters"), "dl", 10)
    yield env
    drop_private_world(private_settings(env))


def private_settings(env: dict[str, str]) -> Settings:
    with settings_under(env) as settings:
        return settings


@pytest.fixture(scope="module")
def letters(env: dict[str, str], spark: Any) -> list[dict[str, Any]]:
    """Good and bad records produced to the private pageviews topic and run through the
    archiver (the real dead-letter sink); the letters expected, oldest first, computed from
    the records as Kafka returns them."""
    settings = private_settings(env)
    source = load_views(settings.pipeline.views_file).sources["pageviews"]
    ensure_topics(settings, [source.topic, deadletter_topic(source)])
    produce(settings, source.topic, [*GOOD[:5], *BAD, *GOOD[5:]])
    drain(spark, settings, source)
    want = [
        {
            "reason": BAD[r.value or b""],
            "raw": (r.value or b"")[:DEADLETTER_RAW_MAX].decode(errors="replace"),
            "raw_size": len(r.value or b""),
            "raw_truncated": len(r.value or b"") > DEADLETTER_RAW_MAX,
            "topic": source.topic,
            "partition": r.partition,
            "offset": r.offset,
            "timestamp": iso_ms(r.timestamp),
        }
        for r in topic_records(settings, source.topic)
        if r.value not in GOOD
    ]
    assert len(want) == len(BAD) and sum(d["raw_truncated"] for d in want) == 1
    # The sink is at least once: a letter written twice (a replayed micro-batch) is one.
    dead = topic_records(settings, deadletter_topic(source))
    assert len(dead) == len(BAD)
    produce(settings, deadletter_topic(source), [dead[0].value])
    return sorted(want, key=lambda d: (d["timestamp"], d["partition"], d["offset"]))


def lamina(env: dict[str, str], *args: str) -> str:
    """``lamina ARGS`` in a new process: its stdout without ``_say``'s clock prefix, after
    checking it exited 0 without a traceback."""
    out = run_lamina(env, *args)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    return re.sub(r"(?m)^\d\d:\d\d:\d\d ", "", out.stdout)


def test_json_lists_each_letter_once_with_its_origin(
    env: dict[str, str], letters: list[dict[str, Any]]
) -> None:
    kinded = [{**d, "kind": KIND[d["reason"]]} for d in letters]
    stdout = lamina(env, "deadletters", "pageviews", "--format", "json")
    assert json.loads(stdout) == kinded
    stdout = lamina(env, "deadletters", "pageviews", "--format", "json", "--limit", "2")
    assert json.loads(stdout) == kinded[-2:]
    stdout = lamina(env, "deadletters", "pageviews", "--format", "json", "--limit", "0")
    assert json.loads(stdout) == []


def examples(letters: list[dict[str, Any]]) -> str:
    """The summary's example line: the kind ``not valid JSON`` with its two newest reasons
    that say more than the kind (the other kinds' letters say nothing more)."""
    detailed = [d for d in reversed(letters) if d["reason"] != "not valid JSON"]
    detailed = [d for d in detailed if KIND[d["reason"]] == "not valid JSON"]
    assert len(detailed) == 2
    shown = ", ".join(
        f"{d['reason']!r} ({d['topic']}[{d['partition']}]@{d['offset']})" for d in detailed
    )
    return f"  not valid JSON, e.g. {shown}"


def test_limit_zero_prints_only_the_summary(
    env: dict[str, str], letters: list[dict[str, Any]]
) -> None:
    summary = lamina(env, "deadletters", "pageviews", "--limit", "0").splitlines()
    assert summary == [SUMMARY, examples(letters)]


def test_a_negative_limit_is_a_usage_error(env: dict[str, str]) -> None:
    out = run_lamina(env, "deadletters", "pageviews", "--limit", "-1")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "'-1' is not a whole number >= 0" in out.stderr


@pytest.mark.parametrize("limit", [None, 6, 2, 1])
def test_table_shows_the_newest_letters_and_a_summary(
    env: dict[str, str], letters: list[dict[str, Any]], limit: int | None
) -> None:
    args = [] if limit is None else ["--limit", str(limit)]
    stdout = lamina(env, "deadletters", "pageviews", *args)
    shown = letters if limit is None else letters[-limit:]  # default 20: all 7
    assert stdout.splitlines() == [*map(line, shown), SUMMARY, examples(letters)]
    assert len(LONG) > 80 and LONG.decode() not in stdout  # raw records are cut


def test_foreign_records_are_shown_not_hidden(env: dict[str, str]) -> None:
    settings = private_settings(env)
    source = load_views(settings.pipeline.views_file).sources["sensors"]
    topic = deadletter_topic(source)
    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers)
    try:
        sent = [producer.send(topic, value=v, partition=0) for v in (b"hello", b'{"n": 1}')]
        producer.flush()
        at = [f.get(timeout=30).offset for f in sent]
    finally:
        producer.close()
    want = [
        {
            "reason": FOREIGN,
            "raw": raw,
            "raw_size": len(raw),
            "raw_truncated": False,
            "topic": topic,
            "partition": 0,
            "offset": off,
            "timestamp": "",
        }
        for raw, off in zip(("hello", '{"n": 1}'), at, strict=True)
    ]
    stdout = lamina(env, "deadletters", "sensors", "--format", "json")
    assert json.loads(stdout) == [{**d, "kind": FOREIGN} for d in want]
    stdout = lamina(env, "deadletters", "sensors")
    assert stdout.splitlines() == [
        *map(line, want),
        f"2 dead letters for source sensors: 2 {FOREIGN}",
    ]


def test_no_letters_is_a_clear_empty_answer(env: dict[str, str]) -> None:
    settings = private_settings(env)
    source = load_views(settings.pipeline.views_file).sources["metering"]
    for _topic_exists in (False, True):
        stdout = lamina(env, "deadletters", "metering", "--format", "json")
        assert json.loads(stdout) == []
        stdout = lamina(env, "deadletters", "metering")
        assert stdout.strip() == "0 dead letters for source metering"
        ensure_topics(settings, [deadletter_topic(source)])


def test_unknown_source_is_one_line_error(env: dict[str, str]) -> None:
    out = run_lamina(env, "deadletters", "nope")
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr == (
        "lamina: error: unknown source 'nope' (declared sources: pageviews, sensors, metering)\n"
    )


def test_a_tombstone_is_a_dead_letter_of_its_origin(
    stack: Settings, spark: Any, tmp_path: Path
) -> None:
    settings = private_settings(private_env(tmp_path, "dl", 10))
    try:
        source = load_views(settings.pipeline.views_file).sources["pageviews"]
        ensure_topics(settings, [source.topic, deadletter_topic(source)])
        producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers)
        try:
            at = producer.send(source.topic, key=b"k", value=None).get(timeout=30)
        finally:
            producer.close()
        # Records kafka-python will not send (no key and no value) and half-marks, through
        # Spark's Kafka writer (the Java client): each a dead letter, none a mark, none a
        # null in the mark column (which once failed every micro-batch of the topic).
        odd = [(None, None), (EPOCH_MARK_KEY, None), (None, EPOCH_MARK_VALUE)]
        (
            spark.createDataFrame(odd, "key binary, value binary")
            .coalesce(1)
            .write.format("kafka")
            .options(**settings.kafka.spark_options())
            .option("topic", source.topic)
            .save()
        )
        drain(spark, settings, source)
        letters = read_deadletters(settings, source)
        [letter] = [
            d for d in letters if d["offset"] == at.offset and d["partition"] == at.partition
        ]
        assert (letter["topic"], letter["partition"], letter["offset"], letter["raw"]) == (
            source.topic,
            at.partition,
            at.offset,
            "",
        )
        assert len(letters) == 1 + len(odd), letters
        assert all(d["reason"] for d in letters)
    finally:
        drop_private_world(settings)


def test_the_consoles_route_summarizes_like_the_cli(
    env: dict[str, str], letters: list[dict[str, Any]]
) -> None:
    """``GET /deadletters`` (the console's dead-letter page): per source the count, the kinds
    with their examples as the CLI's summary shows them, and the newest letters first."""
    settings = private_settings(env)
    catalog = load_views(settings.pipeline.views_file)
    app = create_app(settings, catalog, routers=[status_router(settings, catalog)])
    with TestClient(app, base_url="http://127.0.0.1") as client:
        answer = client.get("/deadletters", params={"limit": 2})
        bad = client.get("/deadletters", params={"limit": -1})
    assert answer.status_code == 200, answer.text
    [pageviews] = [s for s in answer.json() if s["source"] == "pageviews"]
    kinded = [{**d, "kind": KIND[d["reason"]]} for d in letters]
    assert pageviews["count"] == 7 and pageviews["latest"] == kinded[::-1][:2]
    assert [(k["kind"], k["count"]) for k in pageviews["kinds"]] == [
        ("not valid JSON", 4),
        ("not a JSON object but list", 2),
        ("missing field 'event_id'", 1),
    ]
    shown = ", ".join(
        f"{d['reason']!r} ({d['topic']}[{d['partition']}]@{d['offset']})"
        for d in pageviews["kinds"][0]["examples"]
    )
    assert f"  not valid JSON, e.g. {shown}" == examples(letters)
    assert all(k["examples"] == [] for k in pageviews["kinds"][1:])
    assert bad.status_code == 422 and "limit" in bad.json()["error"]
