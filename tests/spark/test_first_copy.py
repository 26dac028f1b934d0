"""The batch layer keeps the first copy of an event id (earliest ingest epoch, then Kafka
partition and offset, imports first), whatever the order Spark reads the files in."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import batch.recompute
from batch.recompute import deduplicate, first_copies, master_read, read_master
from lamina.master import archive_dir, archive_file, arrow_schema, imports_dir
from lamina.settings import Settings
from lamina.views import load_views
from tests.conftest import ROOT, isolated

CATALOG = load_views(ROOT / "conf" / "views.toml")
VIEW = CATALOG.view("web_pageviews")


def _event(event_id: str, url: str, partition: int | None, offset: int | None) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "ts": "2026-01-01T00:00:00Z",
        "url": url,
        "visitor": "v",
        "status": 200,
        "load_ms": 1.0,
        "_event_time": 1767225600.0,
        "topic": None if partition is None else "pageviews",
        "partition": partition,
        "offset": offset,
    }


def _write(directory: Path, name: str, rows: list[dict[str, Any]]) -> None:
    schema = arrow_schema(VIEW.source)
    directory.mkdir(parents=True, exist_ok=True)
    table = pa.table({f: [r[f] for r in rows] for f in schema.names}, schema=schema)
    pq.write_table(table, directory / name)


def test_the_first_copy_of_an_event_wins(settings: Settings, spark: Any, tmp_path: Path) -> None:
    s = isolated(settings, tmp_path)
    archive = archive_dir(s, VIEW.source)
    # Epoch 100 sorts before epoch 90 by name, and its file is the biggest (Spark packs
    # files by size, biggest first): an arbitrary pick takes the later copies.
    filler = [_event(f"f{i}", "/filler", 0, 1000 + i) for i in range(2000)]
    _write(
        archive / "ingest_epoch=100",
        archive_file(5, 0),
        [_event("a", "/late", 0, 50), _event("b", "/late", 1, 7), *filler],
    )
    _write(archive / "ingest_epoch=90", archive_file(4, 0), [_event("a", "/first", 1, 40)])
    # Same epoch: partition 0 before 1; offset order within a partition.
    _write(
        archive / "ingest_epoch=90",
        archive_file(4, 1),
        [_event("b", "/second", 1, 9), _event("b", "/first", 0, 99), _event("c", "/late", 1, 3)],
    )
    _write(archive / "ingest_epoch=80", archive_file(3, 0), [_event("c", "/late", 1, 2)])
    # An imported copy (no Kafka origin) in the same epoch as a Kafka copy comes first.
    _write(
        imports_dir(s, VIEW.source) / "ingest_epoch=80",
        "import-1.parquet",
        [_event("c", "/first", None, None)],
    )
    for _ in range(3):  # the same answer every time
        rows = read_master(spark, s, VIEW, cutoff=1000).where("url != '/filler'").collect()
        assert sorted((r["event_id"], r["url"]) for r in rows) == [
            ("a", "/first"),
            ("b", "/first"),
            ("c", "/first"),
        ]


def _plan(df: Any) -> str:
    return str(df._jdf.queryExecution().executedPlan().toString())


@pytest.mark.parametrize("broadcast", [True, False])
def test_copies_tied_on_the_order_keep_the_copy_every_column_picks(
    settings: Settings, spark: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, broadcast: bool
) -> None:
    """Copies of an id at the same (epoch, partition, offset) are ordered by the other
    columns, every one of them, as :func:`first_copies` does: the build reads only the view's
    columns, and settles the ids whose tied copies differ in one of them from every column
    (here ``ts``, which web_pageviews does not read, decides between ``/a`` and ``/b``).
    Without ``broadcast``, too many repeated hashes to broadcast: every row is grouped."""
    if not broadcast:
        monkeypatch.setattr(batch.recompute, "MAX_BROADCAST_HASHES", 0)
    s = isolated(settings, tmp_path)
    imports = imports_dir(s, VIEW.source)

    def imported(event_id: str, ts: str, url: str, visitor: str | None = "v") -> dict[str, Any]:
        return _event(event_id, url, None, None) | {"ts": ts, "visitor": visitor}

    _write(
        imports / "ingest_epoch=80",
        "import-1.parquet",
        [
            imported("t", "2026-01-01T00:00:01Z", "/a"),
            imported("same", "2026-01-01T00:00:05Z", "/s", None),
            imported("u", "2026-01-01T00:00:00Z", "/u"),
            *(_event(f"f{i}", "/filler", 0, i) for i in range(500)),
        ],
    )
    _write(
        imports / "ingest_epoch=80",
        "import-2.parquet",
        [
            imported("t", "2026-01-01T00:00:00Z", "/b"),
            imported("same", "2026-01-01T00:00:04Z", "/s", None),
            _event("u", "/later", 0, 1),  # a Kafka copy: an import comes first in an epoch
            _event("k", "/k", 0, 7),
            _event("k", "/k", 0, 7),  # a redelivery of the same record
            _event(None, "/no-id", 0, 8),  # type: ignore[arg-type]
            _event(None, "/no-id", 0, 9),  # type: ignore[arg-type]
        ],
    )
    read = master_read(spark, s, VIEW, cutoff=1000)
    deduped = deduplicate(spark, read, VIEW)
    try:
        columns = [c for c in deduped.events.columns]
        want = first_copies(read.union(spark, VIEW), VIEW.source.event_id).select(*columns)
        assert sorted(map(tuple, deduped.events.collect()), key=repr) == sorted(
            map(tuple, want.collect()), key=repr
        )
        got = {r["event_id"]: r["url"] for r in deduped.events.where("url != '/filler'").collect()}
        assert got == {"t": "/b", "same": "/s", "u": "/u", "k": "/k", None: "/no-id"}
        # "t" alone differs in a column the view reads; "same" only in ts (not read).
        assert (deduped.repeated, deduped.ambiguous) == (5, 1)
        assert (deduped.count, deduped.consumed) == (505, 510)
        assert deduped.read_rows == {80: (510, 508)}
    finally:
        deduped.unpersist()


def test_the_build_reads_only_the_columns_of_the_view(
    settings: Settings, spark: Any, tmp_path: Path
) -> None:
    """The Parquet scan of a build reads the view's columns, not the source's others
    (web_pageviews: ``ts`` is parsed into ``_event_time`` and never read again)."""
    s = isolated(settings, tmp_path)
    _write(
        archive_dir(s, VIEW.source) / "ingest_epoch=90",
        archive_file(4, 0),
        [_event("a", "/a", 0, 1), _event("a", "/a", 0, 1), _event("b", "/b", 1, 2)],
    )
    spark.conf.set("spark.sql.maxMetadataStringLength", "1000")
    try:
        events = read_master(spark, s, VIEW, cutoff=1000)
        plan = _plan(events)
    finally:
        spark.conf.unset("spark.sql.maxMetadataStringLength")
    schemas = [line.split("ReadSchema: ")[1] for line in plan.splitlines() if "ReadSchema" in line]
    assert schemas, plan
    for schema in schemas:
        assert schema.startswith(
            "struct<event_id:string,url:string,visitor:string,status:bigint,load_ms:double,"
            "_event_time:double,topic:string,partition:int,offset:bigint"
        ), schema
        assert "ts:" not in schema
    assert sorted((r["event_id"], r["url"]) for r in events.collect()) == [("a", "/a"), ("b", "/b")]
