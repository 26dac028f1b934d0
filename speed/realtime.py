"""A view's real-time table, kept by read-modify-write with exactly-once per micro-batch.

Each micro-batch of a source job aggregates its new events per view into partial states per
cell ``(key, bucket, ingest epoch)`` (Spark, :func:`engine.translate.aggregate`); this module
folds them into the stored states with the same monoid ``plus`` the serving merge uses, and
writes each touched cell back with ``applied_batch`` = the micro-batch id.

Exactly-once: a cell whose stored ``applied_batch`` is already this micro-batch's id (or a
later one) is skipped, so a micro-batch replayed after a crash (Spark replays the same
offsets, hence the same partial states) adds to the cells it had not reached, never twice to
the ones it had. One Cassandra row write is atomic, so a cell is either before or after.

The key index (``rx_<view>``, :mod:`serving.schema`) gets each written cell's whole state too,
*before* the cell: its rows are overwritten, never added to, so the cell's guard covers them.
A micro-batch interrupted after an index row and before its cell finds the cell without its
id when replayed and writes both again with the same state (the stored state plus the same
partial); a cell that holds the id has its index row already.

Reads are avoided where they cannot find anything: the cells this process wrote are cached
(the job is the tables' only writer: its checkpoint lock says so), and a cell of an epoch
later than anything archived before the job started and than anything it wrote since cannot
exist yet. Steady state therefore writes only; reads happen after a restart and for cells
of epochs evicted from the cache.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

from cassandra.cluster import Session
from cassandra.concurrent import execute_concurrent, execute_concurrent_with_args
from cassandra.query import BatchStatement, BatchType

from lamina.errors import StoreUnavailableError
from lamina.process import STOP_REQUESTED
from lamina.views import View
from serving.cassandra import OUTAGE_ERRORS, credentials_refused
from serving.merge import decode, encode, plus
from serving.schema import realtime_cell_cql, realtime_index_upsert_cql, realtime_upsert_cql
from serving.writer import state_values

log = logging.getLogger(__name__)

BATCH_ROWS = 100
BATCH_BYTES = 40_000
"""Bounds of one unlogged single-partition batch: rows, and estimated bytes, which keep each
request small (Cassandra 5's ``batch_size_fail_threshold`` is 640 KiB and single-partition
batches are exempt from it, CASSANDRA-10876; sketches are up to a few kB)."""


def _size(params: tuple[Any, ...]) -> int:
    return sum(len(v) if isinstance(v, bytes | str) else 8 for v in params) + 8 * len(params)


def _chunks(rows: list[tuple[Any, ...]]) -> Iterator[list[tuple[Any, ...]]]:
    """``rows`` cut into runs within :data:`BATCH_ROWS` and :data:`BATCH_BYTES`."""
    chunk: list[tuple[Any, ...]] = []
    size = 0
    for r in rows:
        n = _size(r)
        if chunk and (len(chunk) >= BATCH_ROWS or size + n > BATCH_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append(r)
        size += n
    if chunk:
        yield chunk


T = TypeVar("T")


def wait_out_outage(action: Callable[[], T], retry_s: float, what: str) -> T:
    """``action()``, tried again with backoff (1 s, doubling, at most 10 s apart) while
    Cassandra is unreachable or times out (:data:`serving.cassandra.OUTAGE_ERRORS`), for up
    to ``retry_s`` seconds (or until the process is asked to stop); then
    :class:`~lamina.errors.StoreUnavailableError` naming ``what`` could not be done. A
    refused login (wrong or missing ``cassandra.username``/``password``) is raised as that
    error at once. ``action`` must be safe to run again after a failure."""
    deadline = time.monotonic() + retry_s
    delay = 1.0
    while True:
        try:
            return action()
        except OUTAGE_ERRORS as exc:
            refused = credentials_refused(exc)
            if refused is not None:  # not an outage: waiting will not change the password
                raise StoreUnavailableError(
                    f"Cassandra refused the login for {what} ({refused})",
                    hint="check cassandra.username and cassandra.password "
                    "(LAMINA_CASSANDRA__PASSWORD); the job resumes from this micro-batch "
                    "when restarted",
                ) from exc
            if time.monotonic() + delay > deadline or STOP_REQUESTED.is_set():
                raise StoreUnavailableError(
                    f"Cassandra did not take {what} for {retry_s:g} s: {type(exc).__name__}: {exc}",
                    hint="check that Cassandra is up (lamina stack status); the job resumes "
                    "from this micro-batch when restarted, nothing is lost "
                    "(cassandra.outage_retry_s sets how long it waits)",
                ) from exc
            log.warning(
                "Cassandra unavailable for %s (%s); trying again in %.0f s",
                what,
                type(exc).__name__,
                delay,
            )
            STOP_REQUESTED.wait(delay)  # a stop request ends the wait (replayed on restart)
            delay = min(delay * 2, 10.0)


Cell = tuple[Any, ...]
"""``(*key, bucket, ingest_epoch)``."""


class RealtimeCells:
    """The real-time cells of ``view``, as this job wrote them.

    ``written_before``: no cell of an epoch above it was written before this process started
    (``None``: no source job ever wrote any; a row left by Lamina <= 0.3's per-view queries,
    which has no ``applied_batch``, is then replaced, not added to: the job re-derives every
    epoch it reads from Kafka). ``cache_seconds``: how far below the
    latest the cache keeps (in seconds, like the epochs).
    """

    def __init__(
        self,
        session: Session,
        keyspace: str,
        view: View,
        *,
        written_before: int | None,
        cache_seconds: int,
        concurrency: int,
    ) -> None:
        self.view = view
        self.session = session
        self.read_stmt = session.prepare(realtime_cell_cql(view, keyspace))
        self.write_stmt = session.prepare(realtime_upsert_cql(view, keyspace))
        self.index_stmt = session.prepare(realtime_index_upsert_cql(view, keyspace))
        self.cache: dict[Cell, tuple[int, tuple[Any, ...]]] = {}
        self.high = written_before
        self.known_after = written_before
        """Cells of later epochs were all written by this process: absent from the cache
        (and not evicted) means absent from the table."""
        self.evicted_below: int | None = None
        self.cache_seconds = cache_seconds
        self.concurrency = concurrency
        self.reads = 0
        self.writes = 0

    def apply(self, rows: Iterable[Any], batch_id: int, *, retry_s: float = 0.0) -> int:
        """Fold micro-batch ``batch_id``'s partial states (rows with the key fields,
        ``bucket``, ``ingest_epoch`` and the view's state columns) into the table; returns
        the number of cells written.

        While Cassandra is unreachable or times out, tries again with backoff (1 s, doubling,
        at most 10 s apart) for up to ``retry_s`` seconds, then raises
        :class:`~lamina.errors.StoreUnavailableError`. Trying again is safe: a failed attempt
        forgets what it cached, and the next one reads the cells back and skips those that
        already hold ``batch_id`` (as a replayed micro-batch does).
        """
        n = len(self.view.keys) + 2
        partial: dict[Cell, tuple[Any, ...]] = {}
        for r in rows:
            t = tuple(r)  # positional: keys, bucket, ingest_epoch, then the state columns
            partial[t[:n]] = state_values(self.view, t[n:])
        if not partial:
            return 0
        return wait_out_outage(
            lambda: self._apply(partial, batch_id),
            retry_s,
            f"the real-time writes of view {self.view.name!r} (micro-batch {batch_id})",
        )

    def _apply(self, partial: dict[Cell, tuple[Any, ...]], batch_id: int) -> int:
        top = max(c[-1] for c in partial)
        try:
            stored = self._stored(list(partial))
            out: list[tuple[Cell, tuple[Any, ...]]] = []
            for cell, values in partial.items():
                prev = stored.get(cell)
                if prev is not None and prev[0] >= batch_id:
                    continue  # a replayed micro-batch: this cell already holds it
                if prev is not None:
                    merged = plus(self.view, decode(self.view, prev[1]), decode(self.view, values))
                    values = encode(self.view, merged)
                out.append((cell, values))
            self._write(out, batch_id)
        except BaseException:
            # What reached Cassandra is unknown: forget it all and read it back next time.
            self.cache.clear()
            self.high = top if self.high is None else max(self.high, top)
            self.known_after = self.high
            raise
        for cell, values in out:
            self.cache[cell] = (batch_id, values)
        self.high = top if self.high is None else max(self.high, top)
        self._evict()
        return len(out)

    def _stored(self, cells: Sequence[Cell]) -> dict[Cell, tuple[int, tuple[Any, ...]]]:
        """The stored ``(applied_batch, values)`` of ``cells`` that exist."""
        found: dict[Cell, tuple[int, tuple[Any, ...]]] = {}
        unknown = []
        for cell in cells:
            hit = self.cache.get(cell)
            if hit is not None:
                found[cell] = hit
            elif self._may_exist(cell[-1]):
                unknown.append(cell)
        if unknown:
            self.reads += len(unknown)
            results = execute_concurrent_with_args(
                self.session, self.read_stmt, unknown, concurrency=self.concurrency
            )
            for cell, (ok, result) in zip(unknown, results, strict=True):
                if not ok:
                    raise result
                row = result.one()
                if row is not None and row[-1] is not None:  # None: a legacy row, replaced
                    values = tuple(row)
                    found[cell] = (int(values[-1]), tuple(values[:-1]))
        return found

    def _may_exist(self, epoch: int) -> bool:
        """Whether a cell of ``epoch`` missing from the cache may be in the table."""
        if self.known_after is not None and epoch <= self.known_after:
            return True  # written before this process started, perhaps
        return self.evicted_below is not None and epoch < self.evicted_below

    def _write(self, cells: list[tuple[Cell, tuple[Any, ...]]], batch_id: int) -> None:
        """Write ``cells``: first their key index rows (every one acknowledged), then the
        cells (see the module docstring). Each grouped by Cassandra partition (the bucket for
        the index, the view's key for the cells) into unlogged batches of at most
        :data:`BATCH_ROWS` rows, one round trip each (a single-partition batch is applied
        atomically by its replica; no cross-partition coordination)."""
        if not cells:
            return
        n_keys = len(self.view.keys)
        index: dict[Any, list[tuple[Any, ...]]] = {}
        by_partition: dict[tuple[Any, ...], list[tuple[Any, ...]]] = {}
        for cell, values in cells:
            index.setdefault(cell[n_keys], []).append(
                (cell[n_keys], cell[n_keys + 1], *cell[:n_keys], *values, batch_id)
            )
            by_partition.setdefault(cell[:n_keys], []).append((*cell, *values, batch_id))
        self._send(self.index_stmt, index.values())
        self._send(self.write_stmt, by_partition.values())
        self.writes += len(cells)

    def _send(self, stmt: Any, partitions: Iterable[list[tuple[Any, ...]]]) -> None:
        """Execute ``stmt`` for every row, the rows of each partition in unlogged batches."""
        statements: list[tuple[Any, Any]] = []
        for rows in partitions:
            for chunk in _chunks(rows):
                if len(chunk) == 1:
                    statements.append((stmt, chunk[0]))
                    continue
                batch = BatchStatement(batch_type=BatchType.UNLOGGED)
                for params in chunk:
                    batch.add(stmt, params)
                statements.append((batch, ()))
        for ok, result in execute_concurrent(
            self.session, statements, concurrency=self.concurrency
        ):
            if not ok:
                raise result

    def _evict(self) -> None:
        if self.high is None:
            return
        floor = self.high - self.cache_seconds
        if len(self.cache) and min(c[-1] for c in self.cache) < floor:
            self.cache = {c: v for c, v in self.cache.items() if c[-1] >= floor}
            self.evicted_below = max(floor, self.evicted_below or floor)
