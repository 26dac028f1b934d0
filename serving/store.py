"""Lamina's Cassandra store: schema creation, version bookkeeping, publish and reads.

The tables (the ``catalog`` of published versions, ``versions``, ``reconciliation``, and per
view ``b_<view>_v<N>`` and ``rt_<view>``) are defined in :mod:`serving.schema`. Publishing is
one single-row write to ``catalog``, hence atomic: a reader sees the old (version, cutoff) or
the new. All statements on data paths are prepared; bulk row writes go through
:mod:`serving.writer`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from cassandra import InvalidRequest
from cassandra.cluster import Session
from cassandra.query import PreparedStatement

from lamina.errors import NotFoundError, PublishError
from lamina.schema import INGEST_EPOCH
from lamina.settings import CassandraSettings
from lamina.views import View, ViewCatalog
from serving.cassandra import ensure_keyspace, session
from serving.schema import (
    APPLIED_BATCH,
    batch_ddl,
    batch_table,
    catalog_ddl,
    realtime_ddl,
    realtime_table,
)
from serving.writer import write_rows

PUBLISHABLE = ("ready", "published", "superseded")
"""Version states whose table is complete and may be (re-)published."""


@dataclass(frozen=True)
class Published:
    """The catalog row of a view: what readers merge against."""

    view: str
    version: int
    cutoff: int
    rows: int
    published_at: float
    definition_hash: str

    def cutoff_age_s(self, now: float) -> float:
        """Seconds from the end of the data this version covers to ``now`` (epoch seconds).

        ``cutoff`` is the start, in epoch seconds, of the first ingest epoch the version does
        not cover, i.e. the exclusive end of its last complete epoch; real-time rows answer
        for everything ingested since.
        """
        return now - self.cutoff


@dataclass(frozen=True)
class Version:
    view: str
    version: int
    state: str  # building | ready | published | superseded | failed | collected
    cutoff: int
    rows: int
    started_at: float
    finished_at: float | None
    definition_hash: str
    timings: dict[str, float]


@contextmanager
def open_store(settings: CassandraSettings, catalog: ViewCatalog | None = None) -> Iterator[Store]:
    """Connect, yield a :class:`Store` (schema ensured for ``catalog`` if given), close."""
    with session(settings) as s:
        store = Store(s, settings)
        if catalog is not None:
            store.ensure_schema(catalog)
        yield store


class Store:
    """Schema management, version bookkeeping and reads over one Cassandra session."""

    def __init__(self, session: Session, settings: CassandraSettings) -> None:
        self.session = session
        self.ks = settings.keyspace
        self.settings = settings
        self._prepared: dict[str, PreparedStatement] = {}

    def prepare(self, cql: str) -> PreparedStatement:
        stmt = self._prepared.get(cql)
        if stmt is None:
            stmt = self._prepared[cql] = self.session.prepare(cql)
        return stmt

    # -- schema -------------------------------------------------------------------------

    def ensure_schema(self, catalog: ViewCatalog) -> None:
        """Create the keyspace, the catalog tables and every view's real-time table."""
        s = self.session
        ensure_keyspace(s, self.settings)
        for ddl in catalog_ddl(self.ks):
            s.execute(ddl)
        for view in catalog.views.values():
            s.execute(realtime_ddl(view, self.ks))
            self._add_column(realtime_table(view), APPLIED_BATCH, "bigint")

    def _add_column(self, table: str, column: str, cql_type: str) -> None:
        """Add ``column`` to a table created by an older Lamina (idempotent)."""
        found = self.session.execute(
            "SELECT column_name FROM system_schema.columns WHERE keyspace_name = %s "
            "AND table_name = %s AND column_name = %s",
            (self.ks, table, column),
        ).one()
        if found is None:
            try:
                self.session.execute(f"ALTER TABLE {self.ks}.{table} ADD {column} {cql_type}")
            except InvalidRequest as exc:  # another process added it since the check
                if "already exist" not in str(exc) and "conflicts" not in str(exc):
                    raise

    # -- versions -----------------------------------------------------------------------

    @staticmethod
    def _version(r: Any) -> Version:
        return Version(
            r.view_name,
            r.version,
            r.state,
            r.cutoff or 0,
            r.rows or 0,
            r.started_at or 0.0,
            r.finished_at,
            r.definition_hash or "",
            json.loads(r.timings or "{}"),
        )

    def versions(self, view: View) -> list[Version]:
        """Every version of ``view``, newest first."""
        rows = self.session.execute(
            self.prepare(f"SELECT * FROM {self.ks}.versions WHERE view_name = ?"), (view.name,)
        )
        return [self._version(r) for r in rows]

    def version(self, view: View, version: int) -> Version | None:
        """One version of ``view``, or ``None`` if there is no such version."""
        row = self.session.execute(
            self.prepare(f"SELECT * FROM {self.ks}.versions WHERE view_name = ? AND version = ?"),
            (view.name, version),
        ).one()
        return None if row is None else self._version(row)

    def begin_version(self, view: View, cutoff: int) -> int:
        """Allocate the next version number (lightweight transaction), create its table."""
        last = max((v.version for v in self.versions(view)), default=0)
        for version in range(last + 1, last + 100):
            applied = self.session.execute(
                self.prepare(
                    f"INSERT INTO {self.ks}.versions (view_name, version, state, cutoff, "
                    "started_at, definition_hash) VALUES (?, ?, 'building', ?, ?, ?) IF NOT EXISTS"
                ),
                (view.name, version, cutoff, time.time(), view.definition_hash),
            ).was_applied
            if applied:
                self.session.execute(batch_ddl(view, version, self.ks))
                return version
        raise PublishError(f"view {view.name!r}: could not allocate a batch version")

    def finish_version(
        self, view: View, version: int, state: str, rows: int, timings: dict[str, float]
    ) -> None:
        self.session.execute(
            self.prepare(
                f"UPDATE {self.ks}.versions SET state = ?, rows = ?, finished_at = ?, timings = ? "
                "WHERE view_name = ? AND version = ?"
            ),
            (state, rows, time.time(), json.dumps(timings), view.name, version),
        )

    def published(self, view: View) -> Published | None:
        row = self.session.execute(
            self.prepare(f"SELECT * FROM {self.ks}.catalog WHERE view_name = ?"), (view.name,)
        ).one()
        if row is None:
            return None
        return Published(
            row.view_name,
            row.version,
            row.cutoff,
            row.rows or 0,
            row.published_at or 0.0,
            row.definition_hash or "",
        )

    def publish(self, view: View, version: Version) -> Published:
        """Point readers at ``version``: one single-row write of the catalog (atomic)."""
        old = self.published(view)
        pub = Published(
            view.name,
            version.version,
            version.cutoff,
            version.rows,
            time.time(),
            version.definition_hash,
        )
        self.session.execute(
            self.prepare(
                f"INSERT INTO {self.ks}.catalog (view_name, version, cutoff, rows, published_at, "
                "definition_hash) VALUES (?, ?, ?, ?, ?, ?)"
            ),
            (pub.view, pub.version, pub.cutoff, pub.rows, pub.published_at, pub.definition_hash),
        )
        self._set_state(view, version.version, "published")
        if old is not None and old.version != version.version:
            self._set_state(view, old.version, "superseded")
        return pub

    def _set_state(self, view: View, version: int, state: str) -> None:
        self.session.execute(
            self.prepare(
                f"UPDATE {self.ks}.versions SET state = ? WHERE view_name = ? AND version = ?"
            ),
            (state, view.name, version),
        )

    def publish_version(self, view: View, version: int) -> Published:
        """Publish version number ``version``: a new build (``ready``) or, for a rollback,
        an older one that was not garbage-collected."""
        v = self.version(view, version)
        if v is None:
            raise NotFoundError(
                f"view {view.name!r} has no version {version}",
                hint="see `lamina batch versions VIEW`",
            )
        if v.state not in PUBLISHABLE:
            raise PublishError(
                f"view {view.name!r} version {version} is {v.state}, not publishable",
                hint="only complete versions that were not garbage-collected can be re-published",
            )
        return self.publish(view, v)

    rollback = publish_version

    def collect_garbage(self, view: View, retain: int) -> list[int]:
        """Drop batch tables beyond the newest ``retain`` complete versions (never the
        published one) and of failed builds; returns the versions collected."""
        pub = self.published(view)
        keep: set[int] = {pub.version} if pub else set()
        versions = self.versions(view)
        complete = [v for v in versions if v.state in PUBLISHABLE]
        keep |= {v.version for v in complete[:retain]}
        dropped = []
        for v in versions:
            if v.version in keep or v.state == "collected" or v.state == "building":
                continue
            self.session.execute(f"DROP TABLE IF EXISTS {self.ks}.{batch_table(view, v.version)}")
            self._set_state(view, v.version, "collected")
            dropped.append(v.version)
        return dropped

    def save_reconciliation(self, view: View, version: int, report: dict[str, Any]) -> None:
        """Store (or replace) the reconciliation report of one version, as JSON."""
        self.session.execute(
            self.prepare(
                f"INSERT INTO {self.ks}.reconciliation (view_name, version, report, created_at) "
                "VALUES (?, ?, ?, ?)"
            ),
            (view.name, version, json.dumps(report), time.time()),
        )

    def reconciliation(self, view: View, version: int) -> dict[str, Any] | None:
        """The stored reconciliation report of one version, or ``None`` if there is none."""
        row = self.session.execute(
            self.prepare(
                f"SELECT report FROM {self.ks}.reconciliation WHERE view_name = ? AND version = ?"
            ),
            (view.name, version),
        ).one()
        return None if row is None else dict(json.loads(row.report))

    def retained_min_cutoff(self, view: View) -> int | None:
        """Smallest cutoff among versions one could still publish (real-time rows of
        epochs at or after it must be kept so a rollback stays exact)."""
        cut = [v.cutoff for v in self.versions(view) if v.state in PUBLISHABLE]
        return min(cut) if cut else None

    # -- reads --------------------------------------------------------------------------

    def read_batch(
        self, view: View, version: int, key: Sequence[Any], b_from: int, b_to: int
    ) -> Iterator[Any]:
        """Rows of one key with ``b_from <= bucket < b_to`` from batch version ``version``."""
        where = " AND ".join(f"{k} = ?" for k in view.keys)
        cols = ", ".join(["bucket", *(c for c, _ in view.value_columns)])
        stmt = self.prepare(
            f"SELECT {cols} FROM {self.ks}.{batch_table(view, version)} "
            f"WHERE {where} AND bucket >= ? AND bucket < ?"
        )
        return iter(self.session.execute(stmt, (*key, b_from, b_to)))

    def read_realtime(
        self, view: View, key: Sequence[Any], b_from: int, b_to: int
    ) -> Iterator[Any]:
        where = " AND ".join(f"{k} = ?" for k in view.keys)
        cols = ", ".join(["bucket", INGEST_EPOCH, *(c for c, _ in view.value_columns)])
        stmt = self.prepare(
            f"SELECT {cols} FROM {self.ks}.{realtime_table(view)} "
            f"WHERE {where} AND bucket >= ? AND bucket < ?"
        )
        return iter(self.session.execute(stmt, (*key, b_from, b_to)))

    def _realtime_before(
        self, view: View, before_epoch: int, *, values: bool
    ) -> Iterator[tuple[Any, ...]]:
        """Every real-time row of epochs ``< before_epoch``: a scan of the whole table, which
        holds only the epochs no purge has removed yet. Rows are ``(*keys, bucket,
        ingest_epoch[, *value columns])``."""
        cols = [*view.keys, "bucket", INGEST_EPOCH]
        if values:
            cols += [c for c, _ in view.value_columns]
        rows = self.session.execute(
            f"SELECT {', '.join(cols)} FROM {self.ks}.{realtime_table(view)}"
        )
        return (tuple(r) for r in rows if r.ingest_epoch < before_epoch)

    def realtime_before(
        self, view: View, before_epoch: int
    ) -> Iterator[tuple[tuple[Any, ...], int, int, tuple[Any, ...]]]:
        """``(key, bucket, ingest_epoch, values)`` of every real-time row of epochs
        ``< before_epoch``, values in ``view.value_columns`` order (blobs as ``bytes``)."""
        n = len(view.keys)
        for r in self._realtime_before(view, before_epoch, values=True):
            yield r[:n], r[n], r[n + 1], r[n + 2 :]

    def purge_realtime(self, view: View, before_epoch: int) -> int:
        """Delete real-time rows of epochs ``< before_epoch`` (covered by every retained
        batch version). Returns the number of rows deleted."""
        where = " AND ".join(f"{k} = ?" for k in view.keys)
        stmt = self.prepare(
            f"DELETE FROM {self.ks}.{realtime_table(view)} WHERE {where} AND bucket = ? "
            "AND ingest_epoch = ?"
        )
        doomed = list(self._realtime_before(view, before_epoch, values=False))
        return write_rows(self.session, stmt, doomed, 64)
