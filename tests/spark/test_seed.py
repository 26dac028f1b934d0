"""A source job's duplicate index is seeded from every part of the master dataset at once:
its archive, its imports and the file-sink archive of Lamina <= 0.3 (each read with its own
base path)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from lamina.master import archive_dir, archive_file, arrow_schema, imports_dir, stream_dir
from lamina.settings import Settings
from lamina.views import load_views
from speed.dedup import DedupIndex
from speed.microbatch import SourceBatches
from tests.conftest import ROOT, isolated

SOURCE = load_views(ROOT / "conf" / "views.toml").sources["pageviews"]


def _write(path: Path, ids: list[str]) -> None:
    schema = arrow_schema(SOURCE)
    rows = {f: [None] * len(ids) for f in schema.names}
    rows["event_id"] = ids
    rows["_event_time"] = [1.0] * len(ids)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(rows, schema=schema), path)


def test_the_index_is_seeded_from_archive_imports_and_the_legacy_archive(
    settings: Settings, spark: Any, tmp_path: Path
) -> None:
    s = isolated(settings, tmp_path)
    archived = archive_dir(s, SOURCE) / "ingest_epoch=100" / archive_file(0, 0)
    _write(archived, ["a1", "a2"])
    _write(imports_dir(s, SOURCE) / "ingest_epoch=100" / "import-1.parquet", ["i1"])
    legacy = stream_dir(s, SOURCE)
    old = legacy / "ingest_epoch=90" / "part-0.parquet"
    _write(old, ["s1", "s2", "s3"])
    log = legacy / "_spark_metadata"  # Spark's file-sink log, as Lamina <= 0.3 left it
    log.mkdir(parents=True)
    entry = {
        "path": old.as_uri(),
        "size": old.stat().st_size,
        "isDir": False,
        "modificationTime": int(time.time() * 1000),
        "blockReplication": 1,
        "blockSize": 33554432,
        "action": "add",
    }
    (log / "0").write_text("v1\n" + json.dumps(entry))

    job = SourceBatches(spark, s, SOURCE, [], "source-pageviews")
    index = DedupIndex(horizon=600, retain=1200)
    job._seed(
        index,
        [str(archived)],
        [str(imports_dir(s, SOURCE) / "ingest_epoch=100")],
        floor=0,
    )
    assert len(index) == 6
