"""Epoch completeness from Kafka offsets (issue #12, hole 4): an epoch is complete once, in
every partition, a record stamped at or after its end is archived; idle partitions get
epoch marks; records of open transactions hold their epoch open, aborted ones never count."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from kafka import KafkaProducer

from lamina.buckets import ingest_epoch
from lamina.files import read_json
from lamina.master import archive_dir, complete_cutoff, epoch_dirs
from lamina.settings import Settings
from lamina.streams import (
    EPOCH_MARK_KEY,
    EPOCH_MARK_VALUE,
    deadletter_topic,
    release_locks,
    source_query,
    source_report_file,
    status_file,
)
from lamina.views import Source
from speed.completeness import unread_marks
from speed.queries import drain_marks, start_all
from tests.integration.streams import (
    drop_private_world,
    private_env,
    settings_under,
    topic_records,
)
from tests.integration.test_streaming import ready_source

EPOCH_S = 2


@pytest.fixture
def world(stack: Settings, tmp_path: Path) -> Iterator[Settings]:
    with settings_under(private_env(tmp_path, "cmp", EPOCH_S)) as settings:
        pass
    yield settings
    drop_private_world(settings)


def event(**extra: Any) -> bytes:
    return json.dumps(
        {
            "event_id": str(uuid.uuid4()),
            "ts": "2026-01-01T00:00:00Z",
            "url": "/p/1",
            "visitor": "v1",
            "status": 200,
            "load_ms": 1.5,
            **extra,
        }
    ).encode()


def archived_ids(settings: Settings, source: Source) -> dict[int, set[str]]:
    """The event ids in the archive, per ingest epoch."""
    out: dict[int, set[str]] = {}
    for epoch, d in epoch_dirs(archive_dir(settings, source)).items():
        for f in d.iterdir():
            if f.suffix == ".parquet":
                ids = pq.read_table(f, columns=[source.event_id]).column(0).to_pylist()
                out.setdefault(epoch, set()).update(ids)
    return out


def wait_for(what: str, check: Any, timeout_s: float = 90) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def send(settings: Settings, topic: str, value: bytes, partition: int) -> int:
    """Send one record to ``partition``; returns its broker timestamp (ms)."""
    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers)
    try:
        return int(producer.send(topic, value=value, partition=partition).get(30).timestamp)
    finally:
        producer.close()


def test_an_idle_partition_gets_epoch_marks_and_is_never_a_dead_letter(
    world: Settings, spark: Any
) -> None:
    """Records on partition 0 only: partition 1 holds the epoch open until the job marks
    it; then the epoch is complete, and the marks are neither events nor dead letters."""
    settings = world
    catalog, source = ready_source(settings)
    [query] = start_all(spark, settings, catalog, [source.name])
    release_locks()
    try:
        stamp = send(settings, source.topic, event(), partition=0)
        epoch = ingest_epoch(stamp, EPOCH_S)
        wait_for(
            f"epoch {epoch} complete", lambda: (complete_cutoff(settings, source) or 0) > epoch
        )
        query.processAllAvailable()
        report = read_json(source_report_file(settings, source_query(source))) or {}
    finally:
        query.stop()
    records = topic_records(settings, source.topic, marks=True)
    marks = [r for r in records if r.key == EPOCH_MARK_KEY]
    assert {r.partition for r in marks} >= {1}, "the idle partition was never marked"
    assert all(r.value == EPOCH_MARK_VALUE for r in marks)
    # At most one mark per partition and epoch (by the driver's clock; a broker stamp may
    # fall one epoch earlier).
    per_epoch: dict[tuple[int, int], int] = {}
    for r in marks:
        k = (r.partition, ingest_epoch(r.timestamp, EPOCH_S))
        per_epoch[k] = per_epoch.get(k, 0) + 1
    assert max(per_epoch.values()) <= 2, per_epoch
    assert topic_records(settings, deadletter_topic(source)) == []
    assert sum(len(ids) for ids in archived_ids(settings, source).values()) == 1
    counters = report["counters"]
    assert counters["records"] == 1 and counters["archived"] == 1, counters
    assert 1 <= counters["epoch_marks"] <= len(marks), (counters, len(marks))
    assert counters["rejected"] == 0 and counters["past_complete"] == 0


def test_a_graceful_stop_reads_the_marks_written_before_it(world: Settings, spark: Any) -> None:
    """A job stopped when caught up leaves no lag of its own marks: the stop writes no more
    and waits for the next micro-batch to read those written (a 10 s trigger leaves them
    unread for seconds: without the wait, ``stream status`` shows them as lag)."""
    settings = world
    catalog, source = ready_source(settings)
    [query] = start_all(spark, settings, catalog, [source.name], trigger_s=10)
    release_locks()

    def read_until() -> dict[str, int]:
        progress = query.lastProgress
        offsets = json.loads(progress.sources[0].endOffset) if progress else {}
        return {str(p): int(o) for p, o in offsets.get(source.topic, {}).items()}

    def unread() -> dict[int, int]:
        """The newest mark per partition, if the query has not read it."""
        until = read_until()
        newest: dict[int, int] = {}
        for r in topic_records(settings, source.topic, marks=True):
            if r.key == EPOCH_MARK_KEY:
                newest[r.partition] = max(r.offset, newest.get(r.partition, -1))
        return {p: o for p, o in newest.items() if until.get(str(p), -1) <= o}

    try:
        send(settings, source.topic, event(), partition=0)
        waiting = wait_for("a mark the query has not read yet", unread, timeout_s=120)
        drain_marks([query], timeout_s=60)
        assert query.isActive
        until = read_until()
        assert all(until.get(str(p), -1) > o for p, o in waiting.items()), (waiting, until)
        assert unread_marks({source.topic: waiting}, {source.topic: until}) == {}
        # The status (what ``stream status`` computes the lag from) is written at once.
        status = read_json(status_file(settings, source_query(source)))
        assert status is not None
        done = status["end_offsets"][source.topic]
        assert all(int(done[str(p)]) > o for p, o in waiting.items()), (status, waiting)
        # No mark after the drain: the stop can leave nothing unread behind.
        time.sleep(12)
        assert unread() == {}, "a mark was written after the drain"
    finally:
        query.stop()


def test_an_open_transaction_holds_its_epoch_and_an_aborted_one_never_counts(
    world: Settings, spark: Any
) -> None:
    """A record appended in a transaction is stamped at append, readable at commit: its
    epoch must stay incomplete until then (with a clock allowance it was declared complete
    and the record, archived later into it, missed by the batch cut there). A record of an
    aborted transaction is never archived."""
    settings = world
    catalog, source = ready_source(settings)
    [query] = start_all(spark, settings, catalog, [source.name])
    release_locks()
    tx = KafkaProducer(
        bootstrap_servers=settings.kafka.bootstrap_servers,
        transactional_id=f"lamina-test-{uuid.uuid4().hex[:8]}",
    )
    try:
        tx.init_transactions()
        # An aborted transaction first: its record must never be read as an event.
        tx.begin_transaction()
        aborted = event()
        tx.send(source.topic, value=aborted, partition=0).get(30)
        tx.abort_transaction()

        tx.begin_transaction()
        held = event()
        stamp = int(tx.send(source.topic, value=held, partition=0).get(30).timestamp)
        epoch = ingest_epoch(stamp, EPOCH_S)
        # Other records keep flowing on the other partition, well past the epoch's end and
        # past any clock allowance: the epoch must still not be complete.
        until = (epoch + EPOCH_S) + 8
        while time.time() < until:
            send(settings, source.topic, event(), partition=1)
            time.sleep(0.5)
        cut = complete_cutoff(settings, source)
        assert cut is None or cut <= epoch, (
            f"epoch {epoch} declared complete (cutoff {cut}) while one of its records was "
            "still in an open transaction"
        )
        tx.commit_transaction()
        wait_for(
            f"epoch {epoch} complete", lambda: (complete_cutoff(settings, source) or 0) > epoch
        )
        query.processAllAvailable()
    finally:
        tx.close()
        query.stop()
    ids = archived_ids(settings, source)
    held_id = json.loads(held)["event_id"]
    assert held_id in ids.get(epoch, set()), f"the committed record is not in epoch {epoch}"
    everything = set().union(*ids.values())
    assert json.loads(aborted)["event_id"] not in everything, "an aborted record was archived"


def test_with_marks_off_a_record_past_the_clock_allowance_is_counted(
    stack: Settings, tmp_path: Path, spark: Any
) -> None:
    """``pipeline.epoch_marks = false`` falls back to the clock rule, which a transaction
    committed after the allowance defeats: the record is archived in its (already complete)
    epoch, and counted as ``past_complete`` rather than passing unnoticed."""
    env = private_env(tmp_path, "cmpoff", EPOCH_S) | {"LAMINA_PIPELINE__EPOCH_MARKS": "false"}
    with settings_under(env) as settings:
        pass
    try:
        catalog, source = ready_source(settings)
        [query] = start_all(spark, settings, catalog, [source.name])
        release_locks()
        tx = KafkaProducer(
            bootstrap_servers=settings.kafka.bootstrap_servers,
            transactional_id=f"lamina-test-{uuid.uuid4().hex[:8]}",
        )
        try:
            tx.init_transactions()
            tx.begin_transaction()
            held = event()
            stamp = int(tx.send(source.topic, value=held, partition=0).get(30).timestamp)
            epoch = ingest_epoch(stamp, EPOCH_S)
            wait_for(
                f"epoch {epoch} complete by the clock",
                lambda: (complete_cutoff(settings, source) or 0) > epoch,
            )
            tx.commit_transaction()
            report_file = source_report_file(settings, source_query(source))

            def counted() -> int:
                report = read_json(report_file) or {}
                return int(report.get("counters", {}).get("past_complete", 0))

            assert wait_for("the late record counted", counted) == 1
        finally:
            tx.close()
            query.stop()
        records = topic_records(settings, source.topic, marks=True)
        assert all(r.key != EPOCH_MARK_KEY for r in records), "marks written, marks off"
        assert json.loads(held)["event_id"] in archived_ids(settings, source)[epoch]
    finally:
        drop_private_world(settings)
