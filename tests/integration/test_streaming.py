"""Lamina's speed view in this process: exact after restarts and a replayed micro-batch."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from lamina.buckets import ingest_epoch
from lamina.settings import Settings
from lamina.streams import (
    checkpoint_path,
    deadletter_topic,
    duplicates_topic,
    ensure_topics,
    release_locks,
    source_query,
)
from lamina.views import Source, ViewCatalog, load_views
from serving.store import open_store
from speed.queries import start_all, start_source
from tests import truth
from tests.integration.streams import (
    check_answers,
    drop_private_world,
    private_env,
    produce,
    settings_under,
)

VIEW = "web_pageviews"  # redeliveries, bad records, nulls, events days late
EPOCH_S = 3


@pytest.fixture
def speed_settings(stack: Settings, tmp_path: Path) -> Iterator[Settings]:
    """Private keyspace, topics and checkpoints; dropped at the end."""
    with settings_under(private_env(tmp_path, "spd", EPOCH_S)) as settings:
        pass
    yield settings
    drop_private_world(settings)


def ready_source(settings: Settings, view: str = VIEW) -> tuple[ViewCatalog, Source]:
    """The private catalog and ``view``'s source, its topic and real-time tables created
    (the tables exist before a job's first upsert)."""
    catalog = load_views(settings.pipeline.views_file)
    source = catalog.view(view).source
    ensure_topics(settings, [source.topic, deadletter_topic(source), duplicates_topic(source)])
    with open_store(settings.cassandra, catalog):
        pass
    return catalog, source


def drain(spark: Any, settings: Settings, catalog: ViewCatalog, source: Source) -> None:
    """Start ``source``'s job, let it process what Kafka holds, stop it."""
    query = start_source(spark, settings, catalog, source)
    try:
        query.processAllAvailable()
    finally:
        query.stop()


def crash_after_sink(checkpoint: Path, batch_id: int) -> None:
    """Leave the query's checkpoint as a crash right after micro-batch ``batch_id`` wrote
    to the sink leaves it: planned (its offsets logged), never committed, nothing later.
    On restart Spark runs that micro-batch again, with the same offsets."""
    for log, first in (("commits", batch_id), ("offsets", batch_id + 1)):
        for p in (checkpoint / log).iterdir():
            if p.name.isdigit() and int(p.name) >= first:
                p.unlink()
                (p.parent / f".{p.name}.crc").unlink(missing_ok=True)


def test_restarts_and_a_replayed_micro_batch_count_once(
    speed_settings: Settings, spark: Any
) -> None:
    settings = speed_settings
    catalog = load_views(settings.pipeline.views_file)
    view = catalog.view(VIEW)
    topic = view.source.topic
    ensure_topics(settings, [topic])
    with open_store(settings.cassandra, catalog):
        pass  # the real-time table exists before the first upsert
    produced: list[dict[str, Any]] = []

    def round_of(n: int, seed: int) -> int:
        g = truth.pageviews(n, seed=seed)
        produce(settings, topic, g.raw)
        produced.extend(g.good)
        return len(g.raw)

    round_of(300, seed=51)
    query = start_source(spark, settings, catalog, view.source)
    try:
        query.processAllAvailable()
        check_answers(settings, {VIEW: produced})
    finally:
        query.stop()
    # Records produced while it is down: the restarted query takes them in one micro-batch.
    sent = round_of(200, seed=52)
    query = start_source(spark, settings, catalog, view.source)
    try:
        query.processAllAvailable()
        check_answers(settings, {VIEW: produced})
        (replayed,) = [p.batchId for p in query.recentProgress if p.numInputRows == sent]
    finally:
        query.stop()
    crash_after_sink(checkpoint_path(settings, source_query(view.source)), replayed)

    # The replay runs in a later ingest epoch than the first run of that micro-batch: rows
    # keyed by anything but the records' own (broker) timestamps would not overwrite.
    now_epoch = ingest_epoch(int(time.time() * 1000), EPOCH_S)
    while ingest_epoch(int(time.time() * 1000), EPOCH_S) == now_epoch:
        time.sleep(0.1)
    query = start_source(spark, settings, catalog, view.source)
    try:
        query.processAllAvailable()
        rerun = [p for p in query.recentProgress if p.batchId == replayed]
        assert [p.numInputRows for p in rerun] == [sent], "the micro-batch did not run again"
        check_answers(settings, {VIEW: produced})
        # And it goes on from there: the next records are counted once.
        round_of(200, seed=53)
        query.processAllAvailable()
        check_answers(settings, {VIEW: produced})
    finally:
        query.stop()


def test_a_job_started_after_an_import_drops_re_sends_of_imported_events(
    speed_settings: Settings, spark: Any
) -> None:
    """The duplicate index is seeded from the imports too (read with their own base path):
    events re-sent to Kafka minutes after `lamina master import` wrote them are dropped by
    the speed layer; the batch counts them once."""
    import json

    import pyarrow as pa

    from batch.recompute import run_batch
    from lamina.events import parse_event
    from lamina.master import arrow_schema, complete_cutoff, record_progress, write_epoch
    from lamina.schema import EVENT_TIME
    from lamina.streams import read_source_report

    settings = speed_settings
    catalog = load_views(settings.pipeline.views_file)
    view = catalog.view(VIEW)
    source = view.source
    ensure_topics(settings, [source.topic])
    with open_store(settings.cassandra, catalog):
        pass
    g = truth.pageviews(300, seed=61)
    rows = [
        r for r in (parse_event(raw, source) for raw in dict.fromkeys(g.raw)) if isinstance(r, dict)
    ]
    cols = {f: [r[f] for r in rows] for f in [*source.fields, EVENT_TIME]}
    cols |= {
        "topic": [None] * len(rows),
        "partition": [None] * len(rows),
        "offset": [None] * len(rows),
    }
    epoch = ingest_epoch(int(time.time() * 1000), EPOCH_S)
    write_epoch(settings, source, epoch, pa.table(cols, schema=arrow_schema(source)), "import")
    record_progress(settings, source, "import", epoch + EPOCH_S, active=False)
    produce(settings, source.topic, g.raw)  # every record again, through Kafka
    [query] = start_all(spark, settings, catalog, [source.name])
    release_locks()
    try:
        query.processAllAvailable()
        # The Kafka copies' epochs complete once each partition has a later record (the
        # job's epoch marks): then a batch may cut past the import's epoch.
        deadline = time.monotonic() + 90
        while (complete_cutoff(settings, source) or 0) <= epoch:
            assert time.monotonic() < deadline, "the copies' epochs never completed"
            time.sleep(0.2)
    finally:
        query.stop()
    report = read_source_report(settings, source_query(source)) or {}
    counters = report.get("counters", {})
    assert counters.get("archived") == len(rows) + (len(g.raw) - len(dict.fromkeys(g.raw))), (
        counters
    )
    assert counters.get("duplicates") == counters.get("archived"), counters  # all dropped
    assert json.dumps(counters)  # the report is plain JSON
    # The batch covers the import (and the archived copies): each event counted once.
    run_batch(spark, settings, catalog, [VIEW], cutoff=epoch + EPOCH_S)
    check_answers(settings, {VIEW: g.good})


def test_a_reset_checkpoint_is_refused_before_it_replaces_archive_files(
    speed_settings: Settings, spark: Any
) -> None:
    """Micro-batch ids restart at 0 with a new checkpoint: the job must not replace the
    archive files earlier micro-batches wrote under the same ids."""
    import shutil

    from lamina.master import archive_dir

    settings = speed_settings
    catalog, source = ready_source(settings)
    for seed in (71, 72):  # two micro-batches: 0 and 1
        produce(settings, source.topic, truth.pageviews(50, seed=seed).raw)
        drain(spark, settings, catalog, source)
    before = sorted(p.name for p in archive_dir(settings, source).rglob("b*.parquet"))
    assert {p[:13] for p in before} >= {"b000000000000", "b000000000001"}
    shutil.rmtree(checkpoint_path(settings, source_query(source)))
    query = start_source(spark, settings, catalog, source)
    try:
        with pytest.raises(Exception, match="checkpoint was reset or replaced"):
            query.processAllAvailable()
    finally:
        query.stop()
    assert sorted(p.name for p in archive_dir(settings, source).rglob("b*.parquet")) == before


def test_records_deleted_by_kafka_before_they_were_archived_stop_the_job(
    speed_settings: Settings, spark: Any
) -> None:
    """Retention caught up with a stopped job: it refuses to skip (naming the offsets), and
    archives nothing of that micro-batch; told to go on, it counts what was lost."""
    from kafka import KafkaAdminClient, TopicPartition

    from lamina.master import archive_dir
    from lamina.streams import read_source_report
    from speed.microbatch import FAILURES

    settings = speed_settings
    catalog, source = ready_source(settings)
    query_name = source_query(source)
    produce(settings, source.topic, truth.pageviews(60, seed=81).raw)
    drain(spark, settings, catalog, source)
    archived = sorted(p.name for p in archive_dir(settings, source).rglob("b*.parquet"))
    first = read_source_report(settings, query_name)
    assert first is not None
    read_before = first["counters"]["records"]

    # While the job is down: 60 more records, then "retention" deletes all but the last
    # 10 of each partition (the first 60 were archived, so only new records are lost).
    produce(settings, source.topic, truth.pageviews(60, seed=82).raw)
    from tests.integration.streams import end_offsets

    ends = {int(p): o for p, o in end_offsets(settings, source.topic).items()}
    cut = {p: max(0, o - 10) for p, o in ends.items()}
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers)
    try:
        admin.delete_records({TopicPartition(source.topic, p): o for p, o in cut.items()})
    finally:
        admin.close()
    total = sum(ends.values())
    deleted_new = sum(cut.values()) - read_before  # deleted records the job never read
    assert deleted_new > 0

    query = start_source(spark, settings, catalog, source)
    try:
        with pytest.raises(Exception, match="before the job archived them"):
            query.processAllAvailable()
    finally:
        query.stop()
    reason = FAILURES[query_name]
    assert f"Kafka deleted {deleted_new} record(s)" in reason and "offsets" in reason
    report = read_source_report(settings, query_name)
    assert report is not None and report["failed"]["reason"] == reason
    assert sorted(p.name for p in archive_dir(settings, source).rglob("b*.parquet")) == archived

    # Told to go on: the rest is archived, the loss counted, the failure cleared.
    go_on = settings.model_copy(
        update={"pipeline": settings.pipeline.model_copy(update={"fail_on_data_loss": False})}
    )
    drain(spark, go_on, catalog, source)
    report = read_source_report(settings, query_name)
    assert report is not None and "failed" not in report
    assert report["counters"]["lost"] == deleted_new
    assert report["counters"]["records"] == total - deleted_new

    # Lag comes from the checkpoint, not from the status the listener last wrote (stale
    # after a restart that re-ran a micro-batch): everything is committed, lag 0.
    from lamina.streams import query_statuses, read_status, write_status

    stale = read_status(settings, query_name) or {}
    stale["end_offsets"] = {source.topic: {str(p): 0 for p in ends}}
    write_status(settings, query_name, stale)
    [status] = query_statuses(settings, {query_name: source})
    assert status.lag == 0, status


def test_a_cassandra_outage_during_a_micro_batch_is_ridden_out(
    speed_settings: Settings, spark: Any
) -> None:
    """Cassandra goes down while the job has records to write: the micro-batch tries again
    until it is back and nothing is lost or counted twice. With a shorter patience the job
    stops with an error naming Cassandra, and a restart resumes exactly."""
    from lamina.stack.manager import Stack
    from speed.microbatch import FAILURES

    settings = speed_settings
    catalog, source = ready_source(settings)
    produced: list[dict[str, Any]] = []

    def round_of(seed: int) -> None:
        g = truth.pageviews(150, seed=seed)
        produce(settings, source.topic, g.raw)
        produced.extend(g.good)

    cassandra = Stack(settings, ["cassandra"])
    round_of(91)
    query = start_source(spark, settings, catalog, source)
    try:
        query.processAllAvailable()
        cassandra.down()
        try:
            round_of(92)  # read by the running job while Cassandra is down
            time.sleep(8)  # its micro-batch keeps trying meanwhile
        finally:
            cassandra.up()
        query.processAllAvailable()
        assert query.isActive
        check_answers(settings, {VIEW: produced})
    finally:
        query.stop()

    impatient = settings.model_copy(
        update={"cassandra": settings.cassandra.model_copy(update={"outage_retry_s": 2.0})}
    )
    query = start_source(spark, impatient, catalog, source)
    try:
        round_of(93)
        query.processAllAvailable()  # connected, written
        cassandra.down()
        try:
            round_of(94)
            with pytest.raises(Exception, match="Cassandra did not take"):
                query.processAllAvailable()
            assert "real-time writes of view" in FAILURES[source_query(source)]
        finally:
            cassandra.up()
    finally:
        query.stop()
    query = start_source(spark, settings, catalog, source)
    try:
        query.processAllAvailable()
        check_answers(settings, {VIEW: produced})
    finally:
        query.stop()

    # A job started while Cassandra is down (a supervisor's relaunch during the outage)
    # waits for it instead of failing at once, then goes on exactly.
    round_of(95)
    cassandra.down()
    with ThreadPoolExecutor(1) as pool:
        back = pool.submit(lambda: (time.sleep(6), cassandra.up()))
        try:
            [query] = start_all(spark, settings, catalog, [source.name])
        finally:
            back.result()
            release_locks()
    try:
        query.processAllAvailable()
        check_answers(settings, {VIEW: produced})
    finally:
        query.stop()


def test_a_sum_of_longs_past_64_bits_is_exact_in_both_layers(
    speed_settings: Settings, spark: Any
) -> None:
    """Two instance_seconds near 5e18 in one cell overflow a 64-bit sum: batch and speed
    both keep it exact (a varint state), and the merged answer adds them."""
    import json

    from batch.recompute import run_batch
    from tests.integration.answers import answers
    from tests.integration.conftest import import_events

    settings = speed_settings
    catalog = load_views(settings.pipeline.views_file)
    source = catalog.view("cloud_metering").source
    big = 5 * 10**18

    def event(i: int) -> dict[str, Any]:
        return {
            "usage_id": f"u{i}",
            "ts": truth.BASE,
            "customer": "acme",
            "instance_type": "m5",
            "instance_seconds": big,
        }

    path = settings.master_dir.parent / "big.jsonl"
    assert import_events(settings, source, [event(0), event(1)], path).accepted == 2
    time.sleep(2 * EPOCH_S)  # the import's epoch is complete
    run_batch(spark, settings, catalog, ["cloud_metering"])
    ensure_topics(settings, [source.topic])
    produce(settings, source.topic, [json.dumps(event(i)).encode() for i in (2, 3)])
    drain(spark, settings, catalog, source)
    got = answers(settings, catalog, "cloud_metering", ["acme"])
    [cell] = got.values()
    assert cell["values"]["instance_seconds"] == 4 * big
    assert cell["values"]["records"] == 4


def test_a_key_too_large_for_cassandra_stops_nothing(speed_settings: Settings, spark: Any) -> None:
    """A 70 kB URL (a valid pageview) is a key Cassandra refuses: it once failed the batch
    build and every micro-batch of its topic (replayed at each restart). Both layers now
    leave it out of the view alike, the batch counts it, and every other cell is exact."""
    import json

    from batch.recompute import run_batch
    from serving.store import open_store as store_of
    from tests.integration.conftest import import_events

    settings = speed_settings
    catalog, source = ready_source(settings)
    g = truth.pageviews(200, seed=71, redeliver=0.0, bad=0.0)
    huge = {**g.good[0], "event_id": "huge-1", "url": "/" + "x" * 70_000, "status": 200}
    history, live = g.good[:100], g.good[100:]
    path = settings.master_dir.parent / "history.jsonl"
    assert import_events(settings, source, [*history, huge], path).accepted == 101
    time.sleep(2 * EPOCH_S)  # the import's epoch is complete; live events come after
    [done] = run_batch(spark, settings, catalog, [VIEW])
    with store_of(settings.cassandra, catalog) as store:
        built = store.version(catalog.view(VIEW), done.version)
    assert built is not None and built.timings["oversize_keys"] == 1
    huge2 = {**huge, "event_id": "huge-2"}
    produce(settings, source.topic, [json.dumps(e).encode() for e in [*live, huge2]])
    drain(spark, settings, catalog, source)  # raised InvalidRequest ("Key length ...") before
    check_answers(settings, {VIEW: g.good})
