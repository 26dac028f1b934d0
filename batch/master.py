"""The master dataset: every accepted event, immutable, append-only Parquet.

Layout, per source, partitioned by ingest epoch:

- ``<master_dir>/<source>/stream/ingest_epoch=<E>/...`` written by the archiver, Spark's
  exactly-once file sink (its ``_spark_metadata`` log says which files are committed);
- ``<master_dir>/<source>/imports/ingest_epoch=<E>/<writer>-<uuid>.parquet`` written by
  ``lamina master import``.

Each row holds the source's typed fields, ``_event_time`` (float seconds, UTC), and where it
came from: ``topic``, ``partition``, ``offset`` (null for imported files). Files appear
atomically (written under a dot-name Spark ignores, then renamed).

Progress: each writer records in ``<source>/_progress/<writer>.json`` the epoch before which
it has written everything (``complete_before``). A batch cuts off at the smallest
``complete_before`` of the active writers (or the largest of finished ones if none is
active), so it never reads half an epoch.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from lamina.buckets import ingest_epoch
from lamina.errors import ConfigError
from lamina.events import EVENT_TIME, Rejection, parse_event
from lamina.settings import Settings
from lamina.views import Source

log = logging.getLogger(__name__)

ARROW_TYPES = {
    "string": pa.string(),
    "long": pa.int64(),
    "double": pa.float64(),
    "boolean": pa.bool_(),
}
ORIGIN = [("topic", pa.string()), ("partition", pa.int32()), ("offset", pa.int64())]


def arrow_schema(source: Source) -> pa.Schema:
    """Schema of a master file of ``source`` (``ingest_epoch`` lives in the path)."""
    return pa.schema(
        [pa.field(f, ARROW_TYPES[t]) for f, t in source.fields.items()]
        + [pa.field(EVENT_TIME, pa.float64(), nullable=False)]
        + [pa.field(n, t) for n, t in ORIGIN]
    )


def source_dir(settings: Settings, source: Source) -> Path:
    return settings.master_dir / source.name


def imports_dir(settings: Settings, source: Source) -> Path:
    return source_dir(settings, source) / "imports"


def stream_dir(settings: Settings, source: Source) -> Path:
    """The archiver's file-sink root (read it whole: Spark honours its metadata log)."""
    return source_dir(settings, source) / "stream"


def deadletter_dir(settings: Settings, source: Source) -> Path:
    return settings.master_dir / "_deadletters" / source.name


def write_epoch(
    settings: Settings, source: Source, epoch: int, table: pa.Table, writer: str
) -> Path:
    """Append one Parquet file of events to ingest epoch ``epoch``; atomic by rename."""
    d = imports_dir(settings, source) / f"ingest_epoch={epoch}"
    d.mkdir(parents=True, exist_ok=True)
    name = f"{writer}-{uuid.uuid4().hex}.parquet"
    tmp = d / f".{name}.tmp"
    pq.write_table(table.cast(arrow_schema(source)), tmp, compression="zstd")
    os.replace(tmp, d / name)
    return d / name


def record_progress(
    settings: Settings, source: Source, writer: str, complete_before: int, *, active: bool
) -> None:
    """Record that ``writer`` has written every event of epochs ``< complete_before``."""
    d = source_dir(settings, source) / "_progress"
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f".{writer}.json.tmp"
    tmp.write_text(
        json.dumps(
            {"complete_before": complete_before, "active": active, "updated_at": time.time()}
        )
    )
    os.replace(tmp, d / f"{writer}.json")


def progress(settings: Settings, source: Source) -> dict[str, dict[str, Any]]:
    d = source_dir(settings, source) / "_progress"
    return {p.stem: json.loads(p.read_text()) for p in sorted(d.glob("*.json"))}


def complete_cutoff(settings: Settings, source: Source) -> int | None:
    """The epoch a batch may cut off at: every event of earlier epochs is in the dataset."""
    writers = progress(settings, source)
    active = [w["complete_before"] for w in writers.values() if w.get("active")]
    if active:
        return int(min(active))
    done = [w["complete_before"] for w in writers.values()]
    return int(max(done)) if done else None


# -- import -----------------------------------------------------------------------------


@dataclass
class ImportReport:
    """What ``master import`` did: counts, rejection reasons, where the rejects went."""

    accepted: int = 0
    rejected: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    files: list[str] = field(default_factory=list)
    deadletters: Path | None = None
    epoch: int = 0


def _rows(path: Path) -> Iterator[tuple[int, Any, bool]]:
    """``(line_or_row_number, raw, coerce)`` for each record of a JSONL, CSV or Parquet file."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        with path.open("rb") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    yield n, line, False
    elif suffix == ".csv":
        with path.open(newline="") as f:
            for n, row in enumerate(csv.DictReader(f), 2):
                yield n, row, True
    elif suffix == ".parquet":
        pf = pq.ParquetFile(path)
        n = 0
        for batch in pf.iter_batches(batch_size=65_536):
            for row in batch.to_pylist():
                n += 1
                yield n, row, False
    else:
        raise ConfigError(
            f"cannot import {path}: unknown format {suffix or '(no extension)'!r}",
            hint="use .jsonl/.ndjson/.json (JSON lines), .csv or .parquet",
        )


def import_files(
    settings: Settings,
    source: Source,
    paths: Iterable[Path],
    *,
    chunk_rows: int = 200_000,
    on_progress: Callable[[int, int], None] | None = None,
) -> ImportReport:
    """Append historical events from files to the master dataset, validated like the stream.

    Rejected rows are written, with their reason and origin (file, line), as JSON lines under
    the source's dead-letter directory; nothing is dropped silently. All rows of one import
    get the current ingest epoch, which is marked complete when the import finishes.
    """
    paths = list(paths)
    for p in paths:
        if not p.is_file():
            raise ConfigError(f"cannot import {p}: no such file")
    # Never write into an epoch a batch may already have covered: go past every cutoff so far.
    done = [int(w["complete_before"]) for w in progress(settings, source).values()]
    epoch = max([ingest_epoch(int(time.time() * 1000), settings.pipeline.epoch_seconds), *done])
    writer = f"import-{uuid.uuid4().hex[:8]}"
    report = ImportReport(epoch=epoch)
    dl_dir = deadletter_dir(settings, source)
    dl_path = dl_dir / f"{writer}.jsonl"
    dl_file = None
    schema = arrow_schema(source)
    buf: dict[str, list[Any]] = {n: [] for n in schema.names}

    def flush() -> None:
        if buf[EVENT_TIME]:
            write_epoch(settings, source, epoch, pa.table(buf, schema=schema), writer)
            for v in buf.values():
                v.clear()

    try:
        for path in paths:
            report.files.append(str(path))
            for n, raw, coerce in _rows(path):
                parsed = parse_event(raw, source, coerce=coerce)
                if isinstance(parsed, Rejection):
                    report.rejected += 1
                    report.reasons[parsed.reason.split(":")[0]] += 1
                    if dl_file is None:
                        dl_dir.mkdir(parents=True, exist_ok=True)
                        dl_file = dl_path.open("w")
                    text = (
                        raw.decode(errors="replace")
                        if isinstance(raw, bytes)
                        else (json.dumps(raw, default=str))
                    )
                    dl_file.write(
                        json.dumps(
                            {
                                "reason": parsed.reason,
                                "raw": text.rstrip("\n"),
                                "file": str(path),
                                "line": n,
                            }
                        )
                        + "\n"
                    )
                    continue
                for f in source.fields:
                    buf[f].append(parsed[f])
                buf[EVENT_TIME].append(parsed[EVENT_TIME])
                for name, _ in ORIGIN:
                    buf[name].append(None)
                report.accepted += 1
                if len(buf[EVENT_TIME]) >= chunk_rows:
                    flush()
                if on_progress and (report.accepted + report.rejected) % 50_000 == 0:
                    on_progress(report.accepted, report.rejected)
        flush()
    finally:
        if dl_file is not None:
            dl_file.close()
            report.deadletters = dl_path
    record_progress(settings, source, writer, epoch + settings.pipeline.epoch_seconds, active=False)
    log.info(
        "import into %s: %d accepted, %d rejected (epoch %d)",
        source.name,
        report.accepted,
        report.rejected,
        epoch,
    )
    return report
