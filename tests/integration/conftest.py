"""Integration fixtures: private, populated worlds (master dataset + published batch).

A *world* is a private keyspace and master dataset holding generated events with a known
truth, and one published batch of every view. The session-wide ``world`` is read-only by
contract: a test that adds events, versions or real-time rows builds its own world with
:func:`make_world` (or ``private_world``), so the suite passes in any order.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from batch.imports import ImportReport, import_files
from batch.recompute import run_batch
from lamina.events import parse_event
from lamina.master import arrow_schema, record_progress, write_epoch
from lamina.schema import EVENT_TIME
from lamina.settings import Settings
from lamina.views import Source, load_views
from serving.cassandra import session
from tests import truth
from tests.conftest import ROOT, isolated

GENERATORS = {
    "web_pageviews": ("pageviews", truth.pageviews),
    "iot_temperature": ("sensors", truth.sensors),
    "cloud_metering": ("metering", truth.metering),
}


def import_events(
    settings: Settings, source: Source, events: list[dict[str, Any]], path: Path
) -> ImportReport:
    """Write ``events`` as JSON lines to ``path`` and ``lamina master import`` them (one
    import, one ingest epoch: the report's ``epoch``)."""
    path.write_text("".join(json.dumps(ev) + "\n" for ev in events))
    return import_files(settings, source, [path])


def make_world(
    stack: Settings,
    tmp: Path,
    spark: Any,
    n: int = 3000,
    views: list[str] | None = None,
) -> dict[str, Any]:
    """Import ``n`` generated events per source of ``views`` (all three example views by
    default) into a private keyspace and master dataset under ``tmp``, and publish one batch.

    Returns ``{"settings", "catalog", "data": {view: Generated}, "results"}``; drop it with
    :func:`drop_world`.
    """
    settings = isolated(stack, tmp)
    catalog = load_views(ROOT / "conf" / "views.toml")
    chosen = views or list(GENERATORS)
    data = {}
    for view in chosen:
        source, gen = GENERATORS[view]
        g = gen(n)
        path = tmp / f"{source}.jsonl"
        path.write_bytes(b"\n".join(g.raw) + b"\n")
        report = import_files(settings, catalog.sources[source], [path])
        assert report.accepted == len(g.raw) - len(g.bad)
        assert report.rejected == len(g.bad)
        data[view] = g
    results = run_batch(spark, settings, catalog, chosen)
    return {"settings": settings, "catalog": catalog, "data": data, "results": results}


def drop_keyspace(settings: Settings) -> None:
    """Drop the private keyspace of ``settings`` (never the configured shared one)."""
    ks = settings.cassandra.keyspace
    assert ks.startswith("t_"), f"refusing to drop non-private keyspace {ks!r}"
    with session(settings.cassandra) as s:
        s.execute(f"DROP KEYSPACE IF EXISTS {ks}", timeout=120)


def drop_world(world: dict[str, Any]) -> None:
    drop_keyspace(world["settings"])


@pytest.fixture(scope="session")
def world(
    stack: Settings, tmp_path_factory: pytest.TempPathFactory, spark: Any
) -> Iterator[dict[str, Any]]:
    """The shared, read-only world: 3000 events per example view, one batch published.

    Tests must not add data, versions or real-time rows to it (use ``private_world``)."""
    w = make_world(stack, tmp_path_factory.mktemp("world"), spark)
    yield w
    drop_world(w)


@pytest.fixture(scope="module")
def private_world(
    stack: Settings, tmp_path_factory: pytest.TempPathFactory, spark: Any
) -> Iterator[dict[str, Any]]:
    """A world of the test module's own (same content as ``world``), dropped afterwards."""
    w = make_world(stack, tmp_path_factory.mktemp("private_world"), spark)
    yield w
    drop_world(w)


def archive(settings: Settings, source: Source, events: list[dict[str, Any]], epoch: int) -> Path:
    """Write ``events`` into ingest epoch ``epoch`` of the master dataset as the archiver
    stores them: with their Kafka origin (topic, partition, offset); returns the file."""
    parsed = [parse_event(json.dumps(ev).encode(), source) for ev in events]
    rows = [p for p in parsed if isinstance(p, dict)]
    assert len(rows) == len(events)
    cols = {f: [r[f] for r in rows] for f in [*source.fields, EVENT_TIME]}
    cols |= {
        "topic": [source.topic] * len(events),
        "partition": [0] * len(events),
        "offset": list(range(len(events))),
    }
    return write_epoch(
        settings, source, epoch, pa.table(cols, schema=arrow_schema(source)), "archiver"
    )


def archive_two_epochs(
    settings: Settings, source: Source, events: list[dict[str, Any]], e1: int
) -> tuple[list[Path], dict[tuple[str, int, int], tuple]]:
    """Archive the first half of ``events`` in epoch ``e1`` and the rest in the next one, as
    the archiver would, and record it complete up to both; returns the files and the speed
    layer's rows for them (:func:`realtime_states`)."""
    es = settings.pipeline.epoch_seconds
    half = len(events) // 2
    files, rt = [], {}
    for epoch, part in ((e1, events[:half]), (e1 + es, events[half:])):
        files.append(archive(settings, source, part, epoch))
        rt |= realtime_states(part, epoch)
    record_progress(settings, source, "archiver", e1 + 2 * es, active=False)
    return files, rt


def realtime_states(events: list[dict[str, Any]], epoch: int) -> dict[tuple[str, int, int], tuple]:
    """The speed layer's rows of cloud_metering for ``events`` of one ingest epoch:
    ``(customer, bucket, epoch) -> (sum of instance_seconds, records)``, from the truth."""
    return {
        (c, b, epoch): (v["instance_seconds"], v["records"])
        for (c, b), v in truth.truth("cloud_metering", events).items()
    }
