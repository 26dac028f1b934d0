"""The master dataset's on-disk contract: every accepted event, immutable, append-only Parquet.

Layout, per source, partitioned by ingest epoch:

- ``<master_dir>/<source>/archive/ingest_epoch=<E>/b<N>-<i>.parquet`` written by the
  speed layer's source job, micro-batch ``N`` (:mod:`speed.microbatch`): written under
  ``archive/_staging/`` and renamed into place, replacing whatever an interrupted attempt of
  the same micro-batch left, so a replayed micro-batch rewrites its files, never adds;
- ``<master_dir>/<source>/stream/`` the archive of Lamina <= 0.3 (Spark's file sink with its
  ``_spark_metadata`` log), still read when present;
- ``<master_dir>/<source>/imports/ingest_epoch=<E>/<writer>-<uuid>.parquet`` written by
  ``lamina master import`` (:mod:`batch.imports`).

Each row holds :func:`lamina.schema.master_columns`: the source's typed fields,
``_event_time`` (float seconds, UTC), and where it came from: ``topic``, ``partition``,
``offset`` (null for imported files). Files appear atomically (written under a dot-name
Spark ignores, then renamed).

Progress: each writer records in ``<source>/_progress/<writer>.json`` the epoch before which
it has written everything (``complete_before``). A batch cuts off at the smallest
``complete_before`` of the active writers (or the largest of finished ones if none is
active), so it never reads half an epoch.

The archiver (speed layer, Spark) and ``master import`` (batch layer, pyarrow) write here and
the batch reads it, so the contract lives in the engine-free core.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from lamina.errors import LaminaError
from lamina.files import read_json, write_json_atomic
from lamina.schema import FieldType, master_columns
from lamina.settings import Settings
from lamina.views import Source

ARROW_TYPES: dict[FieldType, pa.DataType] = {
    FieldType.STRING: pa.string(),
    FieldType.LONG: pa.int64(),
    FieldType.DOUBLE: pa.float64(),
    FieldType.BOOLEAN: pa.bool_(),
    FieldType.INT: pa.int32(),
    FieldType.TIMESTAMP: pa.timestamp("us", tz="UTC"),
    FieldType.BINARY: pa.binary(),
}


def arrow_schema(source: Source) -> pa.Schema:
    """Schema of a master file of ``source`` (``ingest_epoch`` lives in the path)."""
    return pa.schema(
        [pa.field(c.name, ARROW_TYPES[c.type], nullable=c.nullable) for c in master_columns(source)]
    )


def source_dir(settings: Settings, source: Source) -> Path:
    return settings.master_dir / source.name


def imports_dir(settings: Settings, source: Source) -> Path:
    return source_dir(settings, source) / "imports"


def stream_dir(settings: Settings, source: Source) -> Path:
    """The legacy file-sink archive (read it whole: Spark honours its metadata log)."""
    return source_dir(settings, source) / "stream"


def archive_dir(settings: Settings, source: Source) -> Path:
    """The source job's archive: ``ingest_epoch=<E>/b<N>-<i>.parquet`` per micro-batch."""
    return source_dir(settings, source) / "archive"


def archive_prefix(batch_id: int) -> str:
    """What the names of every archive file of micro-batch ``batch_id`` start with."""
    return f"b{batch_id:012d}-"


def archive_file(batch_id: int, index: int) -> str:
    """The name of the ``index``-th file micro-batch ``batch_id`` wrote into an epoch."""
    return f"{archive_prefix(batch_id)}{index:05d}.parquet"


def archive_batch(name: str) -> int | None:
    """The micro-batch that wrote archive file ``name`` (``None``: not an archive file)."""
    n = len(archive_prefix(0))
    if len(name) > n and name[0] == "b" and name[n - 1] == "-" and name[1 : n - 1].isdigit():
        return int(name[1 : n - 1])
    return None


def epoch_dirs(root: Path) -> dict[int, Path]:
    """The ``ingest_epoch=<E>`` directories under ``root``, by epoch."""
    out: dict[int, Path] = {}
    if root.is_dir():
        for d in root.iterdir():
            if d.name.startswith("ingest_epoch="):
                try:
                    out[int(d.name.split("=", 1)[1])] = d
                except ValueError:
                    continue
    return out


def data_files(epoch_dir: Path) -> list[Path]:
    """The files of an epoch directory a Spark read takes: every regular file whose name
    starts with neither ``_`` nor ``.`` (Spark's rule for hidden files, which covers the
    dot-named files being written)."""
    return sorted(f for f in epoch_dir.iterdir() if f.name[:1] not in ("_", ".") and f.is_file())


@dataclass(frozen=True)
class EpochFiles:
    """What the master dataset holds in one ingest epoch, by its Parquet footers."""

    files: int
    rows: int
    """Rows the readable files' footers declare."""
    unreadable: tuple[str, ...] = ()
    """``"<path>: <reason>"`` of each file whose footer could not be read."""


def footer_rows(settings: Settings, source: Source, cutoff: int) -> dict[int, EpochFiles]:
    """Per ingest epoch ``< cutoff``: the files of the archive and the imports a batch reads
    (:func:`data_files`) and the rows their Parquet footers declare.

    Reads footer metadata only (pyarrow), never a data page: cheap however large the
    epochs. Not covered: the legacy file-sink archive (:func:`stream_dir`), whose files
    count only through Spark's metadata log. Epochs without files are absent.
    """
    out: dict[int, EpochFiles] = {}
    for root in (archive_dir(settings, source), imports_dir(settings, source)):
        for epoch, d in epoch_dirs(root).items():
            if epoch >= cutoff:
                continue
            files, rows, bad = 0, 0, []
            for f in data_files(d):
                files += 1
                try:
                    rows += pq.read_metadata(f).num_rows
                except (OSError, pa.ArrowException) as e:
                    bad.append(f"{f}: {e}")
            if files:
                prev = out.get(epoch, EpochFiles(0, 0))
                out[epoch] = EpochFiles(
                    prev.files + files, prev.rows + rows, (*prev.unreadable, *bad)
                )
    return dict(sorted(out.items()))


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
    path = source_dir(settings, source) / "_progress" / f"{writer}.json"
    write_json_atomic(
        path, {"complete_before": complete_before, "active": active, "updated_at": time.time()}
    )


def progress(settings: Settings, source: Source) -> dict[str, dict[str, Any]]:
    """Each writer's last recorded progress, by writer name."""
    d = source_dir(settings, source) / "_progress"
    found: dict[str, dict[str, Any]] = {}
    for p in sorted(d.glob("*.json")):
        data = read_json(p)
        if data is None:
            # A cutoff computed without this writer could cover epochs it has not finished.
            raise LaminaError(
                f"unreadable progress file {p}", hint="restore it or remove the writer"
            )
        found[p.stem] = data
    return found


def complete_cutoff(settings: Settings, source: Source) -> int | None:
    """The epoch a batch may cut off at: every event of earlier epochs is in the dataset."""
    writers = progress(settings, source)
    active = [w["complete_before"] for w in writers.values() if w.get("active")]
    if active:
        return int(min(active))
    done = [w["complete_before"] for w in writers.values()]
    return int(max(done)) if done else None


def not_covered(settings: Settings, source: Source, cutoff: int) -> str | None:
    """What the master dataset holds of ``source`` in epochs ``>= cutoff`` (which a batch at
    ``cutoff`` cannot cover yet) and which writer holds the cutoff there, as one sentence
    for the user; ``None`` if nothing is beyond the cutoff. Imports count: they are what a
    user expects a batch to pick up (archive files beyond the cutoff are the normal state
    of a running source job)."""
    later = {e: d for e, d in epoch_dirs(imports_dir(settings, source)).items() if e >= cutoff}
    files = sum(1 for d in later.values() for f in d.iterdir() if f.suffix == ".parquet")
    if not files:
        return None
    holders = [
        f"{name} ({'active' if w.get('active') else 'finished'}, complete before "
        f"{w['complete_before']}, last recorded {time.time() - float(w.get('updated_at', 0)):.0f}"
        " s ago)"
        for name, w in progress(settings, source).items()
        if int(w["complete_before"]) == cutoff
    ]
    return (
        f"{files} imported file(s) of source {source.name!r} in epochs {min(later)}.."
        f"{max(later)} are at or after the cutoff {cutoff} and not in this batch; the cutoff "
        f"is held by {', '.join(holders) or 'the writers'}: a stopped source job holds it "
        "(Kafka may have records it has not archived) until it runs again"
    )
