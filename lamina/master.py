"""The master dataset's on-disk contract: every accepted event, immutable, append-only Parquet.

Layout, per source, partitioned by ingest epoch:

- ``<master_dir>/<source>/archive/ingest_epoch=<E>/b<N>-<i>.parquet`` written by the
  speed layer's source job, micro-batch ``N`` (:mod:`speed.microbatch`): written under
  ``archive/_staging/`` and renamed into place, replacing whatever an interrupted attempt of
  the same micro-batch left, so a replayed micro-batch rewrites its files, never adds;
- ``<master_dir>/<source>/stream/`` the archive of Lamina <= 0.3 (Spark's file sink with its
  ``_spark_metadata`` log), still read when present;
- ``<master_dir>/<source>/imports/ingest_epoch=<E>/<writer>/part-<i>.parquet`` with
  ``_manifest.json``: one committed ``lamina master import`` (:mod:`batch.imports`,
  :class:`ImportStaging`), see "Imports" below;
- ``<master_dir>/<source>/imports/ingest_epoch=<E>/<name>.parquet`` (files directly in the
  epoch directory): imports by Lamina before manifests, read as committed (each of those
  files appeared by its own rename; an import of that Lamina killed midway left the files
  it had written, and nothing can tell them apart now).

Each row holds :func:`lamina.schema.master_columns`: the source's typed fields,
``_event_time`` (float seconds, UTC), and where it came from: ``topic``, ``partition``,
``offset`` (null for imported files). Files appear atomically (written under a dot-name or
a ``_staging`` directory Spark ignores, then renamed).

Progress: each writer records in ``<source>/_progress/<writer>.json`` the epoch before which
it has written everything (``complete_before``). A batch cuts off at the smallest
``complete_before`` of the active writers (or the largest of finished ones if none is
active), so it never reads half an epoch. A writer's ``complete_before`` never decreases.

Imports: an import is visible whole or not at all. Its chunk files are written under
``imports/_staging/<writer>/``, which no reader lists; :meth:`ImportStaging.commit` then
writes the manifest (epoch, files, row counts) into that directory and renames the
directory to ``imports/ingest_epoch=<E>/<writer>/`` in one ``rename``: the commit point.
Readers take imports from :func:`committed_imports` only. A killed import leaves only its
staging directory, removed by the next import (:func:`sweep_staging`); a re-run is a new
import (there is no idempotency key), and the batch keeps one copy per event id.

The epoch of an import is chosen at its commit, not when it starts, so that no batch has
cut off past it while it was being written: ``E = max(current epoch, every writer's
complete_before)``, chosen and committed under the source's cutoff lock (an exclusive
``flock`` of ``<source>/_progress/.lock``), while :func:`complete_cutoff` reads the progress
files under the same lock, shared. Why a batch never sees part of an import, and never
misses one it claims to cover: a batch picks its cutoff ``C`` (:func:`complete_cutoff`),
then lists the committed imports and reads those of epochs ``< C``.

- An import committed before the batch picked ``C`` is listed whole (the rename happened
  before the listing); it is in the batch if ``E < C`` and reported by :func:`not_covered`
  otherwise.
- An import committed after the batch picked ``C`` read the progress files after it (the
  lock orders the two), and ``C`` is at most the largest ``complete_before`` then (the
  minimum of the active writers' or the maximum of all), which only grows: ``E >= C``. The
  batch leaves it out whether it lists it or not, and a later batch, whose cutoff passes
  ``E``, covers all of it.

So an import is covered by the first batch whose cutoff passes its epoch, as a whole. The
same holds for a cutoff given with ``--cutoff`` (never beyond the complete cutoff) and for
published cutoffs (each was a complete cutoff once). The lock assumes the master dataset is
on a local file system (``flock``), as the atomic renames already do.

The archiver (speed layer, Spark) and ``master import`` (batch layer, pyarrow) write here and
the batch reads it, so the contract lives in the engine-free core.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from lamina.buckets import ingest_epoch
from lamina.errors import ConfigError, LaminaError
from lamina.files import read_json, write_json_atomic
from lamina.schema import FieldType, master_columns
from lamina.settings import Settings
from lamina.views import Source

log = logging.getLogger(__name__)

MANIFEST = "_manifest.json"
"""The manifest of a committed import, in its directory (a name Spark ignores)."""

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


def progress_dir(settings: Settings, source: Source) -> Path:
    """The writers' progress files of ``source`` and the cutoff lock (see the module doc)."""
    return source_dir(settings, source) / "_progress"


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
    """Per ingest epoch ``< cutoff``: the files of the archive (:func:`data_files`) and of
    the committed imports (:func:`committed_imports`) a batch reads, and the rows their
    Parquet footers declare.

    Reads footer metadata only (pyarrow), never a data page: cheap however large the
    epochs. Not covered: the legacy file-sink archive (:func:`stream_dir`), whose files
    count only through Spark's metadata log. Epochs without files are absent.
    """
    out: dict[int, EpochFiles] = {}
    archived = {e: data_files(d) for e, d in epoch_dirs(archive_dir(settings, source)).items()}
    for listing in (archived, committed_imports(settings, source)):
        for epoch, paths in listing.items():
            if epoch >= cutoff:
                continue
            files, rows, bad = 0, 0, []
            for f in paths:
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
    # An import directory without a readable manifest is skipped by the batch's read (and
    # by the listing above): its events would be missing from a batch that checks itself
    # against the same listing, so it is a problem of its epoch.
    for epoch, d in epoch_dirs(imports_dir(settings, source)).items():
        if epoch >= cutoff:
            continue
        lost = [
            f"{entry}: no readable {MANIFEST}, its files are not read"
            for entry in sorted(d.iterdir())
            if entry.is_dir() and read_json(entry / MANIFEST) is None
        ]
        if lost:
            prev = out.get(epoch, EpochFiles(0, 0))
            out[epoch] = EpochFiles(prev.files, prev.rows, (*prev.unreadable, *lost))
    return dict(sorted(out.items()))


def deadletter_dir(settings: Settings, source: Source) -> Path:
    return settings.master_dir / "_deadletters" / source.name


def staging_dir(settings: Settings, source: Source) -> Path:
    """Where imports write their files until they commit (no reader lists it)."""
    return imports_dir(settings, source) / "_staging"


@contextlib.contextmanager
def cutoff_lock(settings: Settings, source: Source, *, exclusive: bool) -> Iterator[None]:
    """Hold the source's cutoff lock (see "Imports" in the module doc): exclusive while an
    import chooses its epoch and commits, shared while a cutoff is read from the progress
    files. Waits for the holder (an exclusive holder only renames and writes small files);
    the kernel drops it when its holder exits, however it exits.

    The shared side needs read access only (readers may run as another user: the API, an
    Airflow worker) and takes no lock while the lock file does not exist: no import has
    begun to commit, so there is nothing to order against (:func:`complete_cutoff` looks
    again after reading). A file system without ``flock`` is a :class:`LaminaError`."""
    lock = progress_dir(settings, source) / ".lock"
    try:
        if exclusive:
            lock.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        else:
            try:
                fd = os.open(lock, os.O_RDONLY)
            except FileNotFoundError:
                yield
                return
        with os.fdopen(fd, "rb") as f:
            fcntl.flock(f, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
    except OSError as e:
        if isinstance(e, FileNotFoundError | PermissionError) or e.errno not in _NO_LOCKS:
            raise LaminaError(
                f"cannot use the cutoff lock {lock}: {e}",
                hint="the master dataset must be readable (and, for imports, writable) by "
                "this user",
            ) from e
        raise LaminaError(
            f"the file system of {lock} does not support flock ({e})",
            hint="imports and batches order themselves by a lock in the master dataset: "
            "keep pipeline.master_dir on a local disk or NFSv4/EFS (see docs/operations.md)",
        ) from e


_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL)
"""``flock`` errors of file systems that do not support it."""


class ImportStaging:
    """The files of one import, invisible until :meth:`commit` (see "Imports" in the module
    doc). Holds an ``flock`` on ``_staging/<writer>.lock`` while it lives, so that
    :func:`sweep_staging` removes only the staging directories of imports that died.
    Use as a context manager: leaving it without a commit removes the files."""

    def __init__(self, settings: Settings, source: Source, writer: str) -> None:
        self.settings, self.source, self.writer = settings, source, writer
        root = staging_dir(settings, source)
        root.mkdir(parents=True, exist_ok=True)
        # The lock before the directory: a sweeper never sees the directory unlocked.
        self._lock = (root / f"{writer}.lock").open("a+")
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        self.dir = root / writer
        self.dir.mkdir()
        self.files: list[dict[str, Any]] = []
        self.committed: Path | None = None

    def add(self, table: pa.Table) -> Path:
        """Write ``table`` (cast to the source's schema) as the next chunk file."""
        name = f"part-{len(self.files):05d}.parquet"
        path = self.dir / name
        pq.write_table(table.cast(arrow_schema(self.source)), path, compression="zstd")
        self.files.append({"name": name, "rows": table.num_rows, "bytes": path.stat().st_size})
        return path

    def commit(self, epoch: int | None = None, *, record: bool = True, **about: Any) -> int:
        """Make every file visible at once, in ingest epoch ``epoch`` (default: chosen now,
        :func:`import_epoch`), record the import's progress (complete before the epoch's
        end; unless not ``record``) and return the epoch. ``about`` goes into the manifest
        as it is. A given ``epoch`` is for writing history at chosen epochs (tests,
        benchmarks): it is not ordered against the cutoff."""
        es = self.settings.pipeline.epoch_seconds
        with cutoff_lock(self.settings, self.source, exclusive=True):
            chosen = import_epoch(self.settings, self.source) if epoch is None else epoch
            manifest = {
                "writer": self.writer,
                "epoch": chosen,
                "rows": sum(f["rows"] for f in self.files),
                "files": self.files,
                "committed_at": time.time(),
                **about,
            }
            write_json_atomic(self.dir / MANIFEST, manifest)
            target = imports_dir(self.settings, self.source) / f"ingest_epoch={chosen}"
            target.mkdir(parents=True, exist_ok=True)
            if record:
                # Before the rename: killed in between, the import is not there and the
                # epoch it would have taken is merely complete (a re-run takes a later one);
                # no cutoff is read in between (the lock).
                record_progress(self.settings, self.source, self.writer, chosen + es, active=False)
            os.rename(self.dir, target / self.writer)  # the commit point
            self.committed = target / self.writer
        self.close()
        return chosen

    def close(self) -> None:
        """Remove what is left uncommitted and release the staging lock."""
        if self._lock.closed:
            return
        if self.committed is None:
            shutil.rmtree(self.dir, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._lock.name)
        self._lock.close()

    def __enter__(self) -> ImportStaging:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def import_epoch(settings: Settings, source: Source) -> int:
    """The ingest epoch an import committing now takes: the current epoch, or later if a
    writer has recorded progress beyond it (a cutoff may be there). Call it under the
    exclusive :func:`cutoff_lock`, and commit before releasing it."""
    now = ingest_epoch(int(time.time() * 1000), settings.pipeline.epoch_seconds)
    done = [int(w["complete_before"]) for w in progress(settings, source).values()]
    return max([now, *done])


def _staged(settings: Settings, source: Source) -> Iterator[tuple[Path, bool]]:
    """Each staging directory of ``source`` and whether its import is alive (holds its
    lock); a dead one's lock is held by the caller until the next item is asked for."""
    root = staging_dir(settings, source)
    for d in sorted(root.iterdir()) if root.is_dir() else []:
        if not d.is_dir():
            continue
        try:  # read-only: a reader of another user may probe (flock needs no write access)
            lock = (root / f"{d.name}.lock").open("rb")
        except FileNotFoundError:  # an import takes its lock before its directory: dead
            yield d, False
            continue
        with lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield d, True
                continue
            yield d, False


def running_imports(settings: Settings, source: Source) -> list[str]:
    """The writers of the imports of ``source`` being written now (not committed yet)."""
    return [d.name for d, alive in _staged(settings, source) if alive]


def sweep_staging(settings: Settings, source: Source) -> list[str]:
    """Remove the staging directories of imports that died before committing (their lock
    is free); returns their writers."""
    swept = []
    for d, alive in _staged(settings, source):
        if not alive:
            shutil.rmtree(d, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(d.parent / f"{d.name}.lock")
            swept.append(d.name)
    return swept


def first_epoch(settings: Settings, source: Source) -> int | None:
    """The first ingest epoch (its start, epoch seconds) holding data of ``source`` in the
    master dataset, archived or imported; ``None`` when it holds none."""
    archived = [e for e, d in epoch_dirs(archive_dir(settings, source)).items() if data_files(d)]
    return min([*archived, *committed_imports(settings, source)], default=None)


def committed_imports(settings: Settings, source: Source) -> dict[int, list[Path]]:
    """The Parquet files of every committed import of ``source``, by ingest epoch (epochs
    holding none are left out): those listed in the manifests of the epochs' import
    directories, and files directly in an epoch directory (imports of Lamina before
    manifests). Staging directories are never read."""
    out: dict[int, list[Path]] = {}
    for epoch, d in sorted(epoch_dirs(imports_dir(settings, source)).items()):
        files: list[Path] = []
        for entry in sorted(d.iterdir()):
            if entry.is_dir():
                manifest = read_json(entry / MANIFEST)
                if manifest is None:
                    log.warning("%s: no readable %s, not read", entry, MANIFEST)
                    continue
                files.extend(entry / f["name"] for f in manifest["files"])
            elif entry.suffix == ".parquet" and not entry.name.startswith((".", "_")):
                files.append(entry)
        if files:
            out[epoch] = files
    return out


SCHEMA_FILE = "_schema.json"
"""The source definition a source's master dataset is written under (:func:`check_schema`)."""


def check_schema(settings: Settings, source: Source) -> None:
    """Refuse to write or read ``source``'s master dataset under a definition (fields, types,
    event id, event time and format: :attr:`Source.parsing`) other than the one it was
    written under, recorded in ``<source>/_schema.json``; record it when there is none yet
    (the first writer, or a master dataset of an older Lamina: taken as written under it).

    Rows are stored parsed: under a changed definition a new field reads as null for every
    earlier event, events the old one rejected exist only as dead letters, and a changed
    type or time rule never applies to them, so a batch would publish numbers that are not
    the aggregation of the events under the new definition. Raises :class:`ConfigError`
    naming the way out (:func:`accept_schema`, or reverting).
    """
    path = source_dir(settings, source) / SCHEMA_FILE
    found = read_json(path)
    if found is None:
        _record_schema(path, source, [])
        return
    if found.get("hash") == source.schema_hash:
        return
    was, now = found.get("schema", {}), source.parsing
    changed = sorted(
        {f"field {f}" for f in set(was.get("fields", {})) ^ set(now["fields"])}
        | {
            f"type of {f}"
            for f in set(was.get("fields", {})) & set(now["fields"])
            if was["fields"][f] != now["fields"][f]
        }
        | {
            k.replace("_", " ")
            for k in ("event_id", "event_time", "event_time_format")
            if was.get(k) != now[k]
        }
    )
    raise ConfigError(
        f"source {source.name!r}: its definition changed ({', '.join(changed) or 'schema'}) "
        f"since its master dataset was written ({found.get('hash')} -> {source.schema_hash}): "
        "the events stored so far were parsed under the old one (a new field is null for "
        "them, events it rejected are only dead letters, a new type or time rule does not "
        "apply to them), so views of the new definition cannot be recomputed exactly",
        hint=f"revert the change, or accept that history keeps its old parse with `lamina master "
        f"accept-schema {source.name}` (new events are parsed under the new definition), or "
        "import the history again under a source of a new name",
    )


def accept_schema(settings: Settings, source: Source) -> dict[str, Any]:
    """Record ``source``'s current definition as the one its master dataset is written
    under from now on (the events stored so far keep their old parse); returns the record,
    with the earlier hashes in ``history``."""
    path = source_dir(settings, source) / SCHEMA_FILE
    found = read_json(path) or {}
    history = [*found.get("history", []), *([found["hash"]] if "hash" in found else [])]
    return _record_schema(path, source, [h for h in history if h != source.schema_hash])


def _record_schema(path: Path, source: Source, history: list[str]) -> dict[str, Any]:
    record = {
        "hash": source.schema_hash,
        "schema": source.parsing,
        "history": history,
        "recorded_at": time.time(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, record)
    return record


def write_epoch(
    settings: Settings, source: Source, epoch: int, table: pa.Table, writer: str
) -> Path:
    """Commit ``table`` as one import of its own in ingest epoch ``epoch`` (chosen by the
    caller: tests and benchmarks writing history), without recording progress; returns its
    file."""
    with ImportStaging(settings, source, f"{writer}-{uuid.uuid4().hex[:12]}") as staged:
        name = staged.add(table).name
        staged.commit(epoch, record=False)
        assert staged.committed is not None
        return staged.committed / name


def record_progress(
    settings: Settings,
    source: Source,
    writer: str,
    complete_before: int,
    *,
    active: bool,
    views: list[str] | None = None,
) -> None:
    """Record that ``writer`` has written every event of epochs ``< complete_before``; a
    source job also names the ``views`` it keeps (``None``: those recorded before, if any)."""
    path = progress_dir(settings, source) / f"{writer}.json"
    record: dict[str, Any] = {
        "complete_before": complete_before,
        "active": active,
        "updated_at": time.time(),
    }
    if views is None:
        views = (read_json(path) or {}).get("views")
    if views is not None:
        record["views"] = sorted(views)
    write_json_atomic(path, record)


def progress(settings: Settings, source: Source) -> dict[str, dict[str, Any]]:
    """Each writer's last recorded progress, by writer name."""
    d = progress_dir(settings, source)
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


def recorded_complete(settings: Settings, source: Source, writer: str) -> int | None:
    """The ``complete_before`` that ``writer`` last recorded (:func:`progress`), if any."""
    found = progress(settings, source).get(writer, {}).get("complete_before")
    return None if found is None else int(found)


def complete_cutoff(settings: Settings, source: Source) -> int | None:
    """The epoch a batch may cut off at: every event of earlier epochs is in the dataset.
    Read under the shared :func:`cutoff_lock`: an import committing later takes an epoch at
    or after it (see "Imports" in the module doc)."""
    lock = progress_dir(settings, source) / ".lock"
    while True:
        existed = lock.exists()
        with cutoff_lock(settings, source, exclusive=False):
            writers = progress(settings, source)
        if existed or not lock.exists():
            break
        # An import began to commit while the progress files were read without the lock
        # (there was no lock file yet): read them again under it.
    active = [w["complete_before"] for w in writers.values() if w.get("active")]
    if active:
        return int(min(active))
    done = [w["complete_before"] for w in writers.values()]
    return int(max(done)) if done else None


def not_covered(settings: Settings, source: Source, cutoff: int) -> str | None:
    """What the master dataset holds of ``source`` that a batch at ``cutoff`` cannot cover
    yet, as one sentence for the user (``None``: nothing): committed imports in epochs
    ``>= cutoff`` and which writer holds the cutoff there, and imports still being written.
    Imports count: they are what a user expects a batch to pick up (archive files beyond the
    cutoff are the normal state of a running source job)."""
    said = []
    later = {e: f for e, f in committed_imports(settings, source).items() if e >= cutoff}
    files = sum(len(f) for f in later.values())
    if files:
        holders = [
            f"{name} ({'active' if w.get('active') else 'finished'}, complete before "
            f"{w['complete_before']}, last recorded "
            f"{time.time() - float(w.get('updated_at', 0)):.0f} s ago)"
            for name, w in progress(settings, source).items()
            if int(w["complete_before"]) == cutoff
        ]
        said.append(
            f"{files} imported file(s) of source {source.name!r} in epochs {min(later)}.."
            f"{max(later)} are at or after the cutoff {cutoff} and not in this batch; the "
            f"cutoff is held by {', '.join(holders) or 'the writers'}: a stopped source job "
            "holds it (Kafka may have records it has not archived) until it runs again"
        )
    running = running_imports(settings, source)
    if running:
        said.append(
            f"{len(running)} import(s) of source {source.name!r} still being written "
            f"({', '.join(running)}) are not in this batch: an import is in the first batch "
            "whose cutoff passes the epoch it takes when it completes"
        )
    return "; ".join(said) or None
