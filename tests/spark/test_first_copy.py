"""The batch layer keeps the first copy of an event id (earliest ingest epoch, then Kafka
partition and offset, imports first), whatever the order Spark reads the files in."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from batch.recompute import read_master
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
