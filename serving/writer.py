"""Executor-side writes: rows of aggregated states into a view table, from Spark tasks.

Runs inside Spark's Python workers (``mapPartitions``), one shared driver session per worker;
statements are prepared once per partition and executed concurrently.

A batch version is written by :func:`partition_writer` as the Spark Cassandra Connector
does: the rows of one Cassandra partition (the view's key) go in unlogged batches bounded
by :data:`BATCH_ROWS` statements and :data:`BATCH_BYTES` estimated bytes, one request each,
routed to a replica of the partition (the session's ``TokenAwarePolicy`` reads the routing
key of a batch's first statement), many requests in flight. A single-partition batch is
applied by its replica as one mutation, without the batch log or any cross-partition
coordination; Cassandra exempts it from ``batch_size_warn/fail_threshold``
(CASSANDRA-10876), the bytes bound keeps requests small and within them anyway. This path
is not the speed layer's (:mod:`speed.realtime` folds cells exactly once by its own guard).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from cassandra.cluster import Session
from cassandra.concurrent import execute_concurrent, execute_concurrent_with_args
from cassandra.query import BatchStatement, BatchType, PreparedStatement

from lamina.schema import INGEST_EPOCH
from lamina.settings import CassandraSettings
from lamina.views import View
from serving.cassandra import shared_session
from serving.schema import batch_index_insert_cql, insert_cql


def write_rows(
    session: Session, statement: PreparedStatement, rows: Iterable[Sequence[Any]], concurrency: int
) -> int:
    """Execute ``statement`` for every row, ``concurrency`` in flight; raise on any failure."""
    n = 0
    chunk: list[Sequence[Any]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= 5000:
            n += _flush(session, statement, chunk, concurrency)
            chunk = []
    if chunk:
        n += _flush(session, statement, chunk, concurrency)
    return n


def _flush(
    session: Session, statement: PreparedStatement, chunk: list[Sequence[Any]], concurrency: int
) -> int:
    for ok, result in execute_concurrent_with_args(
        session, statement, chunk, concurrency=concurrency
    ):
        if not ok:
            raise result
    return len(chunk)


BATCH_ROWS = 100
"""Statements in one unlogged batch at most (the measured knee, see bench/README.md)."""
BATCH_BYTES = 40_000
"""Estimated serialized bytes of one unlogged batch at most (:func:`row_bytes`): below the
node's ``batch_size_warn_threshold`` (48 KiB in ``lamina/stack/templates/cassandra.yaml``;
single-partition batches are exempt, but a request stays small: sketches are KBs each)."""


def row_bytes(values: Sequence[Any]) -> int:
    """An estimate of one row's serialized values as Cassandra sizes a batch: blobs and UTF-8
    text by length, numbers 8 bytes (varints 16), plus a 4-byte length per value."""
    n = 0
    for v in values:
        if isinstance(v, bytes | bytearray):
            n += len(v)
        elif isinstance(v, str):
            n += len(v.encode())
        elif isinstance(v, int) and not isinstance(v, bool) and not -(2**63) <= v < 2**63:
            n += 16
        else:
            n += 8
    return n + 4 * len(values)


def partition_runs(
    rows: Iterable[Sequence[Any]],
    key_len: int,
    max_rows: int = BATCH_ROWS,
    max_bytes: int = BATCH_BYTES,
) -> Iterator[list[Sequence[Any]]]:
    """``rows`` cut into runs of consecutive rows of one Cassandra partition (equal first
    ``key_len`` values), each of at most ``max_rows`` rows and ``max_bytes`` estimated bytes
    (:func:`row_bytes`); a row bigger than ``max_bytes`` alone is a run of its own. Every row
    is in exactly one run, in order. Rows grouped by partition make full runs; rows in any
    other order still all land, in smaller runs."""
    run: list[Sequence[Any]] = []
    key: Sequence[Any] | None = None
    size = 0
    for row in rows:
        n = row_bytes(row)
        k = row[:key_len]
        if run and (k != key or len(run) >= max_rows or size + n > max_bytes):
            yield run
            run, size = [], 0
        run.append(row)
        key = k
        size += n
    if run:
        yield run


@dataclass(frozen=True)
class Written:
    """What :func:`write_grouped` wrote: rows, and requests (batches or single inserts)."""

    rows: int
    requests: int


def write_grouped(
    session: Session,
    statement: PreparedStatement,
    rows: Iterable[Sequence[Any]],
    key_len: int,
    concurrency: int,
    *,
    max_rows: int = BATCH_ROWS,
    max_bytes: int = BATCH_BYTES,
) -> Written:
    """Execute ``statement`` for every row, rows of one partition (equal first ``key_len``
    values, the partition key columns of ``statement``'s table) together in unlogged
    batches (:func:`partition_runs`; a run of one row goes as the plain statement),
    ``concurrency`` requests in flight, read lazily from ``rows``. Raises the first failure
    (rows of requests already sent may have landed: the caller's table is unpublished)."""
    requests = 0
    n = 0

    def statements() -> Iterator[tuple[Any, Sequence[Any]]]:
        nonlocal requests, n
        for run in partition_runs(rows, key_len, max_rows, max_bytes):
            requests += 1
            n += len(run)
            if len(run) == 1:
                yield statement, run[0]
                continue
            batch = BatchStatement(batch_type=BatchType.UNLOGGED)
            for params in run:
                batch.add(statement, params)
            yield batch, ()

    for ok, result in execute_concurrent(
        session, statements(), concurrency=concurrency, results_generator=True
    ):
        if not ok:
            raise result
    return Written(n, requests)


def state_values(view: View, values: Sequence[Any]) -> tuple[Any, ...]:
    """State column values (``view.value_columns`` order) as stored: blobs as ``bytes``
    (Spark returns sketches as ``bytearray``), varints as ``int`` (Spark returns the
    ``decimal(38,0)`` sums of longs as ``Decimal``)."""
    return tuple(
        v if v is None else bytes(v) if t == "blob" else int(v) if t == "varint" else v
        for v, (_, t) in zip(values, view.value_columns, strict=True)
    )


def state_row(view: View, row: Any) -> tuple[Any, ...]:
    """The stored values of one output row, in ``view.value_columns`` order."""
    return state_values(view, [row[c] for c, _ in view.value_columns])


def partition_writer(
    cass: CassandraSettings,
    view: View,
    table: str,
    concurrency: int,
    *,
    realtime: bool = False,
    batch_rows: int = BATCH_ROWS,
    batch_bytes: int = BATCH_BYTES,
    index_table: str | None = None,
) -> Callable[[Iterable[Any]], Iterator[int]]:
    """A ``mapPartitions`` function writing aggregated rows of ``view`` into ``table``.

    Each row has the key fields, ``bucket``, ``ingest_epoch`` when ``realtime``, and the
    view's state columns. It runs in a Spark task: one process-wide session per Python
    worker, the statement prepared once per partition, rows written by
    :func:`write_grouped` (unlogged batches of one Cassandra partition each, bounded by
    ``batch_rows`` and ``batch_bytes``; ``batch_rows=1``: one insert per row). Rows of a key
    should arrive consecutively (:func:`batch.recompute.write_input` sorts them): rows in
    any order all land, in smaller batches. Yields the number of rows written.

    ``index_table`` (a batch version's key index, :func:`serving.schema.batch_index_table`):
    every row is written there too, as ``(bucket, *keys, *state columns)``, by runs of
    :data:`INDEX_CHUNK` rows sorted by bucket (the index's partition), after the run's rows
    in ``table``. The caller's version is unpublished until both are whole.
    """
    cql = insert_cql(view, table, realtime=realtime)
    extra = (INGEST_EPOCH,) if realtime else ()
    prefix = (*view.keys, "bucket", *extra)
    key_len = len(view.keys)

    def write(rows: Iterable[Any]) -> Iterator[int]:
        s = shared_session(cass, cass.keyspace)
        values = ((*(r[c] for c in prefix), *state_row(view, r)) for r in rows)
        if index_table is None:
            chunks: Iterable[Iterable[tuple[Any, ...]]] = [values]
        else:
            chunks = _chunked(values, INDEX_CHUNK)
        stmt = s.prepare(cql)
        index = (
            None if index_table is None else s.prepare(batch_index_insert_cql(view, index_table))
        )
        n = 0
        for chunk in chunks:
            done = write_grouped(
                s,
                stmt,
                chunk,
                key_len,
                concurrency,
                max_rows=batch_rows,
                max_bytes=batch_bytes,
            )
            n += done.rows
            if index is not None:
                assert isinstance(chunk, list)
                by_bucket = sorted(
                    ((v[key_len], *v[:key_len], *v[key_len + 1 :]) for v in chunk),
                    key=lambda v: v[0],
                )
                write_grouped(
                    s, index, by_bucket, 1, concurrency, max_rows=batch_rows, max_bytes=batch_bytes
                )
        yield n

    return write


INDEX_CHUNK = 20_000
"""Rows written to a version's table, then (sorted by bucket) to its key index, at a time."""


def _chunked(rows: Iterable[tuple[Any, ...]], n: int) -> Iterator[list[tuple[Any, ...]]]:
    chunk: list[tuple[Any, ...]] = []
    for r in rows:
        chunk.append(r)
        if len(chunk) >= n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
