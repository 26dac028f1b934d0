"""A source job's duplicate index is seeded from every part of the master dataset at once:
its archive, its committed imports (in both layouts, never a staged one) and the file-sink
archive of Lamina <= 0.3 (each read with its own base path)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from lamina.master import (
    ImportStaging,
    archive_dir,
    archive_file,
    arrow_schema,
    committed_imports,
    imports_dir,
    stream_dir,
    write_epoch,
)
from lamina.settings import Settings
from lamina.views import load_views
from speed.dedup import DedupIndex
from speed.microbatch import SourceBatches
from tests.conftest import ROOT, isolated

SOURCE = load_views(ROOT / "conf" / "views.toml").sources["pageviews"]


def _table(ids: list[str]) -> pa.Table:
    schema = arrow_schema(SOURCE)
    rows = {f: [None] * len(ids) for f in schema.names}
    rows["event_id"] = ids
    rows["_event_time"] = [1.0] * len(ids)
    return pa.table(rows, schema=schema)


def _write(path: Path, ids: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(_table(ids), path)


def test_the_index_is_seeded_from_archive_imports_and_the_legacy_archive(
    settings: Settings, spark: Any, tmp_path: Path
) -> None:
    s = isolated(settings, tmp_path)
    archived = archive_dir(s, SOURCE) / "ingest_epoch=100" / archive_file(0, 0)
    _write(archived, ["a1", "a2"])
    _write(imports_dir(s, SOURCE) / "ingest_epoch=100" / "import-1.parquet", ["i1"])  # old
    write_epoch(s, SOURCE, 110, _table(["i2", "i3"]), "import")  # committed by a manifest
    staged = ImportStaging(s, SOURCE, "import-running")  # an import still writing
    staged.add(_table(["x1", "x2"]))
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
    imported = [str(f) for files in committed_imports(s, SOURCE).values() for f in files]
    job._seed(index, [str(archived)], imported, floor=0)
    staged.close()
    assert len(index) == 8
