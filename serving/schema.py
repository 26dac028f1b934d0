"""Lamina's Cassandra schema: table names and DDL generated from view definitions.

Tables, all in the configured keyspace (never hand-written per view):

- ``catalog``: one row per view, the *published* batch version and its cutoff. Publishing is
  one single-row write, hence atomic: a reader sees the old (version, cutoff) or the new. The
  row also holds ``previous_version`` (the version the last publish replaced, whose table is
  kept for the queries that resolved it) and ``purged_before`` (real-time rows of epochs
  before it may be purged: no version with an older cutoff may be published again). Every
  write of it is a lightweight transaction on the row as read (see :mod:`serving.store`).
- ``versions``: every batch version of a view (state, cutoff, row count, timings, hash).
- ``b_<view>_v<N>``: batch view version N; ``PRIMARY KEY ((keys...), bucket)`` so a key's
  bucket range is one partition slice.
- ``bx_<view>_v<N>``: the key index of batch version N, the same rows as ``b_<view>_v<N>``
  keyed the other way round: ``PRIMARY KEY ((bucket), keys...)``, so the keys of a bucket
  (with their states) are one partition, for top-N and key listings. Written by the same
  build before the version can be published, dropped with the version's table.
- ``rx_<view>``: the key index of the real-time view, the same cells as ``rt_<view>``:
  ``PRIMARY KEY ((bucket), ingest_epoch, keys...)``, so a bucket's cells of the epochs at or
  after a cutoff are one slice. The speed layer writes a cell's index row (its whole state,
  with ``applied_batch``) before the cell itself, so the cell's ``applied_batch`` guard covers
  both (see :mod:`speed.realtime`); purged and rebuilt with ``rt_<view>``.
- ``rt_<view>``: real-time view; ``PRIMARY KEY ((keys...), bucket, ingest_epoch)``, plus
  ``applied_batch``: the last micro-batch of the source job folded into the row (a replayed
  micro-batch skips the rows that already hold it: exactly-once read-modify-write).
- ``realtime_tables``: per view, the definition its ``rt_<view>`` holds
  (``definition_hash``), its ``state`` (``empty``: created empty by a process that is not its
  source job, never written; ``rebuilding``; ``ready``), ``covers_from`` (``null``: every
  epoch its source job read; else the first epoch it holds whole since its source job
  rebuilt it, so only a batch at a cutoff at or after it merges exactly) and ``job_batch``
  (the first micro-batch of the job run that built or adopted it). See
  :meth:`serving.store.Store.follow_definition`.
- ``leases``: per view, the build that holds the view (``holder``), a row with a TTL renewed
  while the build runs: one build of a view at a time (:meth:`serving.store.Store.build_lease`).
- ``reconciliation``: per view and version, the JSON report comparing the version with the
  real-time view on the epochs both cover (see :mod:`batch.reconcile`); kept after the
  version's table is garbage-collected, as history.
"""

from __future__ import annotations

from lamina.schema import INGEST_EPOCH, FieldType
from lamina.views import View

CQL_TYPES: dict[FieldType, str] = {
    FieldType.STRING: "text",
    FieldType.LONG: "bigint",
    FieldType.DOUBLE: "double",
    FieldType.BOOLEAN: "boolean",
}


def batch_table(view: View, version: int) -> str:
    return f"b_{view.name}_v{version}"


def realtime_table(view: View) -> str:
    return f"rt_{view.name}"


def batch_index_table(view: View, version: int) -> str:
    return f"bx_{view.name}_v{version}"


def realtime_index_table(view: View) -> str:
    return f"rx_{view.name}"


def _key_columns(view: View) -> str:
    return ", ".join(f"{k} {CQL_TYPES[view.source.fields[k]]}" for k in view.keys)


def _value_columns(view: View) -> str:
    return ", ".join(f"{c} {t}" for c, t in view.value_columns)


def batch_ddl(view: View, version: int, keyspace: str) -> str:
    keys = ", ".join(view.keys)
    return (
        f"CREATE TABLE IF NOT EXISTS {keyspace}.{batch_table(view, version)} "
        f"({_key_columns(view)}, bucket bigint, {_value_columns(view)}, "
        f"PRIMARY KEY (({keys}), bucket))"
    )


def batch_index_ddl(view: View, version: int, keyspace: str) -> str:
    keys = ", ".join(view.keys)
    return (
        f"CREATE TABLE IF NOT EXISTS {keyspace}.{batch_index_table(view, version)} "
        f"(bucket bigint, {_key_columns(view)}, {_value_columns(view)}, "
        f"PRIMARY KEY ((bucket), {keys}))"
    )


def batch_index_insert_cql(view: View, table: str) -> str:
    """Write one row of a batch key index: bucket, keys, value columns."""
    cols = ["bucket", *view.keys, *(c for c, _ in view.value_columns)]
    return f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"


APPLIED_BATCH = "applied_batch"


def realtime_index_ddl(view: View, keyspace: str) -> str:
    keys = ", ".join(view.keys)
    return (
        f"CREATE TABLE IF NOT EXISTS {keyspace}.{realtime_index_table(view)} "
        f"(bucket bigint, {INGEST_EPOCH} bigint, {_key_columns(view)}, {_value_columns(view)}, "
        f"{APPLIED_BATCH} bigint, PRIMARY KEY ((bucket), {INGEST_EPOCH}, {keys}))"
    )


def realtime_index_upsert_cql(view: View, keyspace: str) -> str:
    """Write one real-time key index row: bucket, ingest epoch, keys, value columns, applied
    batch (the same values as the cell's :func:`realtime_upsert_cql`)."""
    cols = ["bucket", INGEST_EPOCH, *view.keys, *(c for c, _ in view.value_columns), APPLIED_BATCH]
    return (
        f"INSERT INTO {keyspace}.{realtime_index_table(view)} ({', '.join(cols)}) "
        f"VALUES ({', '.join('?' * len(cols))})"
    )


def realtime_ddl(view: View, keyspace: str) -> str:
    keys = ", ".join(view.keys)
    return (
        f"CREATE TABLE IF NOT EXISTS {keyspace}.{realtime_table(view)} "
        f"({_key_columns(view)}, bucket bigint, {INGEST_EPOCH} bigint, {_value_columns(view)}, "
        f"{APPLIED_BATCH} bigint, PRIMARY KEY (({keys}), bucket, {INGEST_EPOCH}))"
    )


def realtime_cell_cql(view: View, keyspace: str) -> str:
    """Read one real-time cell: its value columns, then ``applied_batch``."""
    where = " AND ".join(f"{k} = ?" for k in (*view.keys, "bucket", INGEST_EPOCH))
    cols = ", ".join([*(c for c, _ in view.value_columns), APPLIED_BATCH])
    return f"SELECT {cols} FROM {keyspace}.{realtime_table(view)} WHERE {where}"


def realtime_upsert_cql(view: View, keyspace: str) -> str:
    """Write one real-time cell: keys, bucket, ingest epoch, value columns, applied batch."""
    cols = [*view.keys, "bucket", INGEST_EPOCH, *(c for c, _ in view.value_columns), APPLIED_BATCH]
    return (
        f"INSERT INTO {keyspace}.{realtime_table(view)} ({', '.join(cols)}) "
        f"VALUES ({', '.join('?' * len(cols))})"
    )


def insert_cql(view: View, table: str, *, realtime: bool = False) -> str:
    cols = [
        *view.keys,
        "bucket",
        *([INGEST_EPOCH] if realtime else []),
        *(c for c, _ in view.value_columns),
    ]
    return f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"


CATALOG_GUARD_COLUMNS = (("previous_version", "int"), ("purged_before", "bigint"))
"""Columns of ``catalog`` added after its first release (older keyspaces get them by ALTER)."""

REALTIME_STATES = ("empty", "rebuilding", "ready")
"""States of a real-time table in ``realtime_tables`` (see the module docstring)."""


def catalog_ddl(keyspace: str) -> list[str]:
    """The bookkeeping tables: ``catalog``, ``versions``, ``leases``, ``reconciliation``,
    ``realtime_tables``."""
    return [
        f"CREATE TABLE IF NOT EXISTS {keyspace}.catalog (view_name text PRIMARY KEY, "
        "version int, cutoff bigint, rows bigint, published_at double, definition_hash text, "
        "previous_version int, purged_before bigint)",
        f"CREATE TABLE IF NOT EXISTS {keyspace}.leases (view_name text PRIMARY KEY, "
        "holder text, acquired_at double, renewed_at double)",
        f"CREATE TABLE IF NOT EXISTS {keyspace}.versions (view_name text, version int, "
        "state text, cutoff bigint, rows bigint, started_at double, finished_at double, "
        "definition_hash text, timings text, PRIMARY KEY (view_name, version)) "
        "WITH CLUSTERING ORDER BY (version DESC)",
        f"CREATE TABLE IF NOT EXISTS {keyspace}.reconciliation (view_name text, version int, "
        "report text, created_at double, PRIMARY KEY (view_name, version)) "
        "WITH CLUSTERING ORDER BY (version DESC)",
        f"CREATE TABLE IF NOT EXISTS {keyspace}.realtime_tables (view_name text PRIMARY KEY, "
        "definition_hash text, state text, covers_from bigint, job_batch bigint, "
        "updated_at double)",
    ]
