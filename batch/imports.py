"""``lamina master import``: historical files (JSON lines, CSV, Parquet) into the master
dataset (:mod:`lamina.master`), validated by the same rule as the stream; rejects go to the
source's dead-letter directory with their reason and origin. No record, whatever its bytes,
stops an import: it is imported or it is a dead letter.

An import is visible to the batch whole or not at all: its files are staged and committed
by a manifest at the end (:class:`lamina.master.ImportStaging`), in an ingest epoch chosen
then, at or after every cutoff a batch may have taken meanwhile. An import that fails or is
killed leaves no events and no dead letters (its staging directory is removed, by itself
or by the next import). There is no idempotency key: running the same files twice imports
them twice, and the batch keeps one copy per event id."""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from lamina.errors import ConfigError
from lamina.events import Rejection, parse_event, reason_kind
from lamina.master import (
    ImportStaging,
    arrow_schema,
    check_schema,
    deadletter_dir,
    epoch_dirs,
    imports_dir,
    sweep_staging,
)
from lamina.schema import EVENT_TIME, ORIGIN
from lamina.settings import Settings
from lamina.views import Source

log = logging.getLogger(__name__)
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass
class ImportReport:
    """What ``master import`` did: counts, rejection reasons, where the rejects went."""

    accepted: int = 0
    rejected: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    files: list[str] = field(default_factory=list)
    deadletters: Path | None = None
    epoch: int = 0


@dataclass(frozen=True)
class _Unreadable:
    """A record the file's reader could not read: its text and why."""

    text: str
    reason: str


def _csv_records(f: Iterable[str]) -> Iterator[dict[str, Any] | _Unreadable]:
    """The rows of CSV text ``f``, each a dict, or :class:`_Unreadable` for a row the csv
    module refuses (a field over its size limit): the next row is read after it."""
    taken: list[str] = []

    def lines() -> Iterator[str]:
        for line in f:
            taken.append(line)
            yield line

    reader = csv.DictReader(lines())
    while True:
        taken.clear()
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            yield _Unreadable("".join(taken), f"not valid CSV: {e}")
            continue
        yield row


def _rows(path: Path) -> Iterator[tuple[int, Any, bool]]:
    """``(line_or_row_number, raw, coerce)`` for each record of a JSONL, CSV or Parquet file
    (``raw`` is :class:`_Unreadable` for a CSV row the reader refused)."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        with path.open("rb") as f:
            for n, line in enumerate(f, 1):
                if line.strip(b" \t\r\n"):  # a blank line is JSON whitespace only
                    yield n, line, False
    elif suffix == ".csv":
        # UTF-8 whatever the locale; bytes that are not UTF-8 arrive as lone surrogates
        # (``surrogateescape``), which the validator rejects, naming the field.
        with path.open(encoding="utf-8", errors="surrogateescape", newline="") as f:
            for n, row in enumerate(_csv_records(f), 2):
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


def _dead_text(raw: Any) -> str:
    """A rejected record as text for its dead letter: a JSON line as it was, a CSV row the
    reader refused as its lines, a decoded row as JSON; bytes that were not UTF-8 (and lone
    surrogates) replaced by U+FFFD."""
    if isinstance(raw, bytes):
        text = raw.decode(errors="replace")
    elif isinstance(raw, _Unreadable):
        text = _SURROGATE.sub("\ufffd", raw.text).rstrip("\r")
    else:
        clean = {
            _SURROGATE.sub("\ufffd", k) if isinstance(k, str) else k: (
                _SURROGATE.sub("\ufffd", v) if isinstance(v, str) else v
            )
            for k, v in raw.items()
        }
        text = json.dumps(clean, default=str)
    return text.rstrip("\n")


DEADLETTERS_STAGED = "_deadletters.jsonl"
"""An import's dead letters, next to its chunks until they move to :func:`deadletter_dir`."""


def _move_deadletters(settings: Settings, source: Source, committed: Path) -> Path:
    """Move a committed import's dead letters (``committed`` is its directory) to the
    source's dead-letter directory, as ``<writer>.jsonl``; returns where they are."""
    dl_dir = deadletter_dir(settings, source)
    dl_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    target = dl_dir / f"{committed.name}.jsonl"
    os.replace(committed / DEADLETTERS_STAGED, target)
    return target


def recover_deadletters(settings: Settings, source: Source) -> list[Path]:
    """Move the dead letters that committed imports left in their directory (killed between
    their commit and that move) to the dead-letter directory; returns their new paths."""
    moved = []
    for d in epoch_dirs(imports_dir(settings, source)).values():
        for left in sorted(d.glob(f"*/{DEADLETTERS_STAGED}")):
            moved.append(_move_deadletters(settings, source, left.parent))
    return moved


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
    get one ingest epoch, chosen when the import commits (see the module doc), which is
    marked complete then. Raises before committing anything when it fails.
    """
    paths = list(paths)
    for p in paths:
        if not p.is_file():
            raise ConfigError(f"cannot import {p}: no such file")
    check_schema(settings, source)
    swept = sweep_staging(settings, source)
    if swept:
        log.info("removed the staged files of imports that did not finish: %s", swept)
    for path in recover_deadletters(settings, source):
        log.warning("dead letters of an earlier import, left behind when it was stopped: %s", path)
    writer = f"import-{uuid.uuid4().hex[:8]}"
    report = ImportReport()
    schema = arrow_schema(source)
    buf: dict[str, list[Any]] = {n: [] for n in schema.names}
    with ImportStaging(settings, source, writer) as staged:
        dl_staged = staged.dir / DEADLETTERS_STAGED
        dl_file = None

        def flush() -> None:
            if buf[EVENT_TIME]:
                staged.add(pa.table(buf, schema=schema))
                for v in buf.values():
                    v.clear()

        try:
            for path in paths:
                report.files.append(str(path))
                for n, raw, coerce in _rows(path):
                    parsed = (
                        Rejection(raw.reason)
                        if isinstance(raw, _Unreadable)
                        else parse_event(raw, source, coerce=coerce)
                    )
                    if isinstance(parsed, Rejection):
                        report.rejected += 1
                        report.reasons[reason_kind(parsed.reason)] += 1
                        if dl_file is None:  # raw input: private to the importing user
                            fd = os.open(dl_staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                            dl_file = os.fdopen(fd, "w")
                        dl_file.write(
                            json.dumps(
                                {
                                    "reason": parsed.reason,
                                    "raw": _dead_text(raw),
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
                    for col in ORIGIN:
                        buf[col.name].append(None)
                    report.accepted += 1
                    if len(buf[EVENT_TIME]) >= chunk_rows:
                        flush()
                    if on_progress and (report.accepted + report.rejected) % 50_000 == 0:
                        on_progress(report.accepted, report.rejected)
            flush()
        finally:
            if dl_file is not None:
                dl_file.close()
        report.epoch = staged.commit(
            inputs=report.files, rejected=report.rejected, deadletters=dl_file is not None
        )
        if dl_file is not None:
            # After the commit: a kill in between leaves them in the import's directory,
            # where the next import finds and moves them (recover_deadletters).
            assert staged.committed is not None
            report.deadletters = _move_deadletters(settings, source, staged.committed)
    log.info(
        "import into %s: %d accepted, %d rejected (epoch %d)",
        source.name,
        report.accepted,
        report.rejected,
        report.epoch,
    )
    return report
