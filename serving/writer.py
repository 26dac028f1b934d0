"""Executor-side writes: rows of aggregated states into a view table, from Spark tasks.

Runs inside Spark's Python workers (``mapPartitions``), one shared driver session per worker;
statements are prepared once per partition and executed concurrently.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from cassandra.cluster import Session
from cassandra.concurrent import execute_concurrent_with_args
from cassandra.query import PreparedStatement

from lamina.schema import INGEST_EPOCH
from lamina.settings import CassandraSettings
from lamina.views import View
from serving.cassandra import shared_session
from serving.schema import insert_cql


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
    cass: CassandraSettings, view: View, table: str, concurrency: int, *, realtime: bool = False
) -> Callable[[Iterable[Any]], Iterator[int]]:
    """A ``mapPartitions`` function writing aggregated rows of ``view`` into ``table``.

    Each row has the key fields, ``bucket``, ``ingest_epoch`` when ``realtime``, and the
    view's state columns. It runs in a Spark task: one process-wide session per Python
    worker, the statement prepared once per partition. Yields the number of rows written.
    """
    cql = insert_cql(view, table, realtime=realtime)
    extra = (INGEST_EPOCH,) if realtime else ()
    prefix = (*view.keys, "bucket", *extra)

    def write(rows: Iterable[Any]) -> Iterator[int]:
        s = shared_session(cass, cass.keyspace)
        values = ((*(r[c] for c in prefix), *state_row(view, r)) for r in rows)
        yield write_rows(s, s.prepare(cql), values, concurrency)

    return write
