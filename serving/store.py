"""Lamina's Cassandra store: schema creation, version bookkeeping, publish and reads.

The tables (the ``catalog`` of published versions, ``versions``, ``reconciliation``, and per
view ``b_<view>_v<N>`` and ``rt_<view>``) are defined in :mod:`serving.schema`. Publishing is
one single-row write to ``catalog``, hence atomic: a reader sees the old (version, cutoff) or
the new. All statements on data paths are prepared; bulk row writes go through
:mod:`serving.writer`.

The guards (issue #12), all lightweight transactions on the view's ``catalog`` or ``leases``
row, so that Paxos orders them with each other:

- a publish is a compare-and-set on the catalog row it checked: it never publishes a cutoff
  older than the published one (except a rollback) nor one below ``purged_before``, whatever
  publishes, rollbacks and purges run at the same time (:meth:`Store.publish`);
- a purge first raises ``purged_before`` on the catalog row it computed its floor from, then
  deletes (:meth:`Store.raise_purge_floor`): a version whose real-time epochs are gone can
  never be published afterwards, so a build in flight at an older cutoff need not hold the
  purge back;
- one build of a view at a time: a lease row with a TTL, renewed while the build runs
  (:meth:`Store.build_lease`);
- garbage collection keeps the version the last publish replaced, for the queries that
  resolved it just before (:meth:`Store.collect_garbage`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from cassandra import InvalidRequest
from cassandra.cluster import Session
from cassandra.query import PreparedStatement

from lamina.errors import ConflictError, NotFoundError, PublishError, ViewNotReadyError
from lamina.schema import INGEST_EPOCH
from lamina.settings import CassandraSettings
from lamina.views import View, ViewCatalog
from serving.cassandra import TUPLES, ensure_keyspace, rows_async, session
from serving.schema import (
    APPLIED_BATCH,
    CATALOG_GUARD_COLUMNS,
    batch_ddl,
    batch_index_ddl,
    batch_index_table,
    batch_table,
    catalog_ddl,
    realtime_ddl,
    realtime_index_ddl,
    realtime_index_table,
    realtime_table,
)
from serving.writer import write_rows

log = logging.getLogger(__name__)

PUBLISHABLE = ("ready", "published", "superseded")
"""Version states whose table is complete and may be (re-)published."""

LEASE_TTL_S = 30
"""Seconds a build lease lives without renewal (it is renewed every third of that): how long a
view stays locked after its build's process died without releasing it."""

SNAPSHOT_MAX_AGE_S = 0.5
"""Longest a query server reuses a view's catalog row and real-time record (its snapshot,
:meth:`serving.query.QueryService.snapshot`): a publish is answered at most this long
after it is written."""

REBUILD_GRACE_S = 4 * SNAPSHOT_MAX_AGE_S
"""How long a rebuild of a real-time table waits between recording ``rebuilding`` and
dropping the table (:meth:`Store.follow_definition`): every query server has seen the record
by then and answers 503, so none reads the table while it is dropped and made anew."""

INDEX_CONCURRENCY = 32
"""Key index partitions (one per bucket and layer) a top-N or key listing reads at once."""

CAS_ATTEMPTS = 5
"""Compare-and-set attempts on a catalog row before giving up (each failed one means another
publish or purge of the view changed the row in between)."""


def utc(epoch_s: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch_s))


@dataclass(frozen=True)
class Published:
    """The catalog row of a view: what readers merge against."""

    view: str
    version: int
    cutoff: int
    rows: int
    published_at: float
    definition_hash: str
    previous_version: int | None = None
    """The version this one replaced (its table is kept while this one is published)."""
    purged_before: int | None = None
    """Real-time rows of epochs before it may be purged (``None``: no purge recorded)."""

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

    @property
    def build(self) -> str:
        """``incremental`` or ``full``: how the version was built (its timings say)."""
        return "incremental" if self.timings.get("incremental") else "full"


@dataclass(frozen=True)
class RealtimeTable:
    """The ``realtime_tables`` row of a view: what its ``rt_<view>`` holds (see
    :mod:`serving.schema`)."""

    view: str
    definition_hash: str
    state: str  # empty | rebuilding | ready
    covers_from: int | None
    """``None``: every epoch its source job read; else the first epoch it holds whole."""
    job_batch: int | None
    """The first micro-batch of the source job run that rebuilt it (``None``: not rebuilt
    by a source job of this Lamina)."""
    updated_at: float


def check_answerable(
    view: View,
    pub: Published | None,
    rec: RealtimeTable | None,
    job_views: list[str] | None = None,
) -> bool:
    """Raise :class:`ViewNotReadyError` unless a merge of ``pub`` and the real-time table
    recorded by ``rec`` answers for every valid event of ``view``'s current definition;
    returns whether the real-time table is to be read (``False``: it holds no rows).

    Refused: a published version built under another definition hash (versions recorded
    without one, by an older Lamina, count as matching); a real-time table not recorded
    (made for another definition, not rebuilt yet), being rebuilt, or ``ready`` under another
    definition; a table rebuilt from epoch ``covers_from`` on while no version at a cutoff at
    or after it is published; a table recorded ``empty`` while the source's job keeps other
    views only (``job_views``, as the job last recorded them; ``None``: unknown), i.e. the
    view is newer than the job's start. An ``empty`` table is read only under its own
    definition (under another it holds no rows of this one). Pure: no I/O.
    """
    name, src = view.name, view.source.name
    batch_hint = f"run `lamina batch run --view {name}`"
    job_hint = (
        f"restart the source job of source {src!r} (`lamina stream restart` or `lamina stream "
        "run`) with the current view definitions: it rebuilds the table when it starts"
    )
    if pub is not None and not view.built_under(pub.definition_hash):
        raise ViewNotReadyError(
            f"view {name!r}: its published batch version {pub.version} was built under "
            f"another definition ({pub.definition_hash}; now {view.definition_hash})",
            hint=f"{batch_hint}; if the source job was not restarted since the change, "
            f"{job_hint} first",
        )
    if rec is None:
        raise ViewNotReadyError(
            f"view {name!r}: its real-time table was made for another definition and no "
            "source job has rebuilt it yet",
            hint=f"{job_hint}, then {batch_hint}",
        )
    if rec.state == "empty" and job_views is not None and name not in job_views:
        raise ViewNotReadyError(
            f"view {name!r}: the source job of source {src!r} keeps only "
            f"{', '.join(job_views) or 'no views'}: it started before this view was defined, "
            "so the events it reads are in no table of this view",
            hint=f"{job_hint}, then {batch_hint}",
        )
    if rec.state == "empty":  # no source job wrote it: rows only of its own definition
        return rec.definition_hash == view.definition_hash
    if rec.state == "rebuilding":
        raise ViewNotReadyError(
            f"view {name!r}: its real-time table is being rebuilt by the source job of "
            f"source {src!r}",
            hint="try again in a moment; if that job is not running, start it",
        )
    if rec.definition_hash != view.definition_hash:
        raise ViewNotReadyError(
            f"view {name!r}: its real-time table holds another definition "
            f"({rec.definition_hash}) than this one ({view.definition_hash})",
            hint=f"{job_hint}, then {batch_hint}; if the job already runs the current "
            "definitions, this process reads older ones: restart it",
        )
    if rec.covers_from is not None and (pub is None or pub.cutoff < rec.covers_from):
        have = "no version is published" if pub is None else f"the published cutoff is {pub.cutoff}"
        raise ViewNotReadyError(
            f"view {name!r}: its real-time table was rebuilt by its source job and holds the "
            f"epochs from {rec.covers_from} ({utc(rec.covers_from)}) on, but {have}: the "
            "epochs before it are in no table yet",
            hint=f"{batch_hint} once the source has archived that epoch whole (the run's "
            "cutoff must be at or after it)",
        )
    return True


class BuildLease:
    """The lease of one build of a view, held in its ``leases`` row (see
    :meth:`Store.build_lease`): renewed by a daemon thread every ``ttl_s / 3`` seconds.

    :meth:`check` raises :class:`ConflictError` once a renewal failed (the process stalled
    past the TTL and another build may have taken the view): such a build must not publish.
    """

    def __init__(
        self, store: Store, view: View, holder: str, ttl_s: int, acquired_at: float
    ) -> None:
        self.store, self.view, self.holder, self.ttl_s = store, view, holder, ttl_s
        self.acquired_at = acquired_at
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._renew = store.prepare(
            f"UPDATE {store.ks}.leases USING TTL ? SET holder = ?, acquired_at = ?, "
            "renewed_at = ? WHERE view_name = ? IF holder = ?"
        )
        self._thread = threading.Thread(
            target=self._heartbeat, name=f"lease-{view.name}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop renewing (the caller then deletes the row)."""
        self._stop.set()
        self._thread.join()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                applied = self.store.session.execute(
                    self._renew,
                    (
                        self.ttl_s,
                        self.holder,
                        self.acquired_at,
                        time.time(),
                        self.view.name,
                        self.holder,
                    ),
                ).was_applied
            except Exception:  # a transient failure: the next beat retries within the TTL
                log.warning("view %s: lease renewal failed", self.view.name, exc_info=True)
                continue
            if not applied:
                log.error("view %s: build lease lost (%s)", self.view.name, self.holder)
                self._lost.set()
                return

    def check(self) -> None:
        """Raise :class:`ConflictError` if the lease was lost since it was taken."""
        if self._lost.is_set():
            raise ConflictError(
                f"view {self.view.name!r}: this build lost its lease (no renewal for "
                f"{self.ttl_s} s), another build may hold the view; not publishing",
                hint="run the batch again",
            )


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
        self._catalog_ensured = False

    def prepare(self, cql: str) -> PreparedStatement:
        stmt = self._prepared.get(cql)
        if stmt is None:
            stmt = self._prepared[cql] = self.session.prepare(cql)
        return stmt

    # -- schema -------------------------------------------------------------------------

    def ensure_schema(self, catalog: ViewCatalog) -> None:
        """Create the keyspace, the catalog tables and the real-time table of every view
        that has none (:meth:`_ensure_realtime`). A real-time table made for another
        definition is left as it is: only its source job rebuilds it
        (:meth:`follow_definition`), and queries answer :class:`ViewNotReadyError` meanwhile
        (:func:`check_answerable`)."""
        ensure_keyspace(self.session, self.settings)
        self._ensure_catalog(force=True)
        for view in catalog.views.values():
            self._ensure_realtime(view)

    def _realtime_columns(self, view: View) -> dict[str, tuple[str, str]]:
        """``{column: (kind, cql type)}`` of the view's real-time table (``{}``: none)."""
        rows = self.session.execute(
            "SELECT column_name, kind, type FROM system_schema.columns "
            "WHERE keyspace_name = %s AND table_name = %s",
            (self.ks, realtime_table(view)),
        )
        return {r.column_name: (r.kind, r.type) for r in rows}

    def _misfit(self, view: View, found: dict[str, tuple[str, str]]) -> str | None:
        """Why a real-time table with columns ``found`` cannot hold ``view`` (``None``: it
        can). A sum of longs stored as ``bigint`` by an older Lamina fits (a warning: it
        works below 2**63); ``applied_batch`` may be missing (it is added)."""
        table = realtime_table(view)
        keys = sorted(c for c, (kind, _) in found.items() if kind == "partition_key")
        if keys != sorted(view.keys):
            return f"{table} is keyed by {keys}, the definition by {sorted(view.keys)}"
        for column, cql_type in view.value_columns:
            if column not in found:
                return f"{table} has no column {column}"
            stored = found[column][1]
            if (stored, cql_type) == ("bigint", "varint"):
                log.warning(
                    "view %s: %s.%s is bigint (an older Lamina): sums past 2**63 fail there; "
                    "a rebuild of the table by its source job stores them whole",
                    view.name,
                    table,
                    column,
                )
            elif stored != cql_type:
                return f"column {column} of {table} is {stored}, the definition needs {cql_type}"
        return None

    def _ensure_realtime(self, view: View) -> None:
        """Give ``view`` a recorded real-time table when it has no record: a missing table is
        created (recorded ``empty``: no source job wrote it, so it holds no rows under any
        definition); a table left by a Lamina before ``realtime_tables`` is adopted as it is
        when its columns fit the definition (recorded ``ready``: the upgrade path, which
        assumes the definition did not change with the upgrade), else left unrecorded for its
        source job to rebuild. Both writes are ``IF NOT EXISTS``: a source job's record wins.
        """
        if self.realtime_record(view) is not None:
            return
        found = self._realtime_columns(view)
        if not found:
            self.session.execute(realtime_ddl(view, self.ks))
            self.session.execute(realtime_index_ddl(view, self.ks))
            self._record_realtime(view, "empty", None, None, only_new=True)
            return
        misfit = self._misfit(view, found)
        if misfit is not None:
            log.warning(
                "view %s: the real-time table does not fit the definition (%s): its source "
                "job rebuilds it at its next start; queries answer 503 until then",
                view.name,
                misfit,
            )
            return
        self._add_column(realtime_table(view), APPLIED_BATCH, "bigint")
        self._record_realtime(view, "ready", None, None, only_new=True)
        log.info("view %s: adopted the real-time table of an older Lamina", view.name)

    def realtime_record(self, view: View) -> RealtimeTable | None:
        """The ``realtime_tables`` row of ``view`` (``None``: not recorded)."""
        self._ensure_catalog()
        row = self.session.execute(
            self.prepare(f"SELECT * FROM {self.ks}.realtime_tables WHERE view_name = ?"),
            (view.name,),
        ).one()
        return self._realtime_of(row)

    @staticmethod
    def _realtime_of(row: Any) -> RealtimeTable | None:
        if row is None:
            return None
        return RealtimeTable(
            row.view_name,
            row.definition_hash or "",
            row.state or "",
            row.covers_from,
            row.job_batch,
            row.updated_at or 0.0,
        )

    def _record_realtime(
        self,
        view: View,
        state: str,
        covers_from: int | None,
        job_batch: int | None,
        *,
        only_new: bool = False,
    ) -> None:
        self.session.execute(
            self.prepare(
                f"INSERT INTO {self.ks}.realtime_tables (view_name, definition_hash, state, "
                "covers_from, job_batch, updated_at) VALUES (?, ?, ?, ?, ?, ?)"
                + (" IF NOT EXISTS" if only_new else "")
            ),
            (view.name, view.definition_hash, state, covers_from, job_batch, time.time()),
        )

    def realtime_readable(self, view: View) -> bool:
        """Whether ``view``'s real-time table holds rows of its current definition that may
        be read with it (reconciliation, purge): recorded under the current definition
        hash, and not being rebuilt."""
        rec = self.realtime_record(view)
        return (
            rec is not None
            and rec.definition_hash == view.definition_hash
            and rec.state in ("ready", "empty")
        )

    def follow_definition(
        self, view: View, *, first_batch: int, covers_from: int | None
    ) -> RealtimeTable:
        """Called by ``view``'s source job when it starts (before its first micro-batch
        writes anything): keep the real-time table when it is recorded ``ready`` under the
        current definition and exists; otherwise (another definition, a rebuild that did not
        finish, a table no source job wrote, an unrecorded table that does not fit, a table
        dropped by hand) rebuild it: record
        ``rebuilding``, drop it, create it under the current definition, record ``ready``
        with ``covers_from`` and ``job_batch = first_batch``. Returns the record.

        ``covers_from``: the first epoch that only micro-batches from ``first_batch`` on can
        hold (``None`` when no earlier micro-batch archived anything): the rebuilt table
        lacks the events of earlier epochs, so queries answer
        :class:`ViewNotReadyError` until a batch at a cutoff at or after it is published
        (:func:`check_answerable`). Running it again after a failure is safe.
        """
        rec = self.realtime_record(view)
        exists = self._realtime_columns(view) != {}
        indexed = self._table_exists(realtime_index_table(view))
        current = rec is not None and rec.definition_hash == view.definition_hash
        if current and rec is not None and rec.state == "ready" and exists and indexed:
            return rec
        table = realtime_table(view)
        if not exists:
            why = "it has none (dropped by hand?)" if rec is not None else "it has none"
        elif current and rec is not None and rec.state == "ready":
            why = "it has no key index (made by an older Lamina, or dropped by hand)"
        elif rec is None:
            why = "its table was made for another definition"
        elif rec.state == "empty":
            why = "no source job wrote it yet" + (
                "" if rec.definition_hash == view.definition_hash else " (another definition)"
            )
        elif rec.state == "rebuilding":
            why = "its rebuild did not finish"
        else:
            why = f"its definition changed ({rec.definition_hash} -> {view.definition_hash})"
        first = (rec is None and not exists) or (
            rec is not None and rec.state == "empty" and rec.definition_hash == view.definition_hash
        )  # a new view or a fresh install: nothing to warn about
        log.log(
            logging.INFO if first else logging.WARNING,
            "view %s: %s its real-time table %s (%s); it holds the epochs from %s on",
            view.name,
            "building" if first else "rebuilding",
            table,
            why,
            "the first" if covers_from is None else f"{covers_from} ({utc(covers_from)})",
        )
        self._record_realtime(view, "rebuilding", None, first_batch)
        time.sleep(REBUILD_GRACE_S)  # query servers see "rebuilding" before the drop
        self.session.execute(f"DROP TABLE IF EXISTS {self.ks}.{table}", timeout=120)
        self.session.execute(
            f"DROP TABLE IF EXISTS {self.ks}.{realtime_index_table(view)}", timeout=120
        )
        self.session.execute(realtime_ddl(view, self.ks), timeout=120)
        self.session.execute(realtime_index_ddl(view, self.ks), timeout=120)
        self._record_realtime(view, "ready", covers_from, first_batch)
        found = self.realtime_record(view)
        assert found is not None
        return found

    def _table_exists(self, table: str) -> bool:
        return (
            self.session.execute(
                "SELECT table_name FROM system_schema.tables WHERE keyspace_name = %s "
                "AND table_name = %s",
                (self.ks, table),
            ).one()
            is not None
        )

    def _ensure_catalog(self, *, force: bool = False) -> None:
        """The bookkeeping tables and the catalog's guard columns (added to a catalog made by
        an older Lamina), once per store: stores opened without a view catalog (rollback from
        the CLI) need them too."""
        if self._catalog_ensured and not force:
            return
        for ddl in catalog_ddl(self.ks):
            self.session.execute(ddl)
        for column, cql_type in CATALOG_GUARD_COLUMNS:
            self._add_column("catalog", column, cql_type)
        self._catalog_ensured = True

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
                self.session.execute(batch_index_ddl(view, version, self.ks))
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
        """The catalog row of ``view``: what readers merge against (``None``: nothing yet)."""
        row = self.session.execute(
            self.prepare(f"SELECT * FROM {self.ks}.catalog WHERE view_name = ?"), (view.name,)
        ).one()
        return self._published_of(row)

    @staticmethod
    def _published_of(row: Any) -> Published | None:
        if row is None or row.version is None:
            return None
        return Published(
            row.view_name,
            row.version,
            row.cutoff,
            row.rows or 0,
            row.published_at or 0.0,
            row.definition_hash or "",
            getattr(row, "previous_version", None),
            getattr(row, "purged_before", None),
        )

    @staticmethod
    def check_publishable(
        view: View, cutoff: int, current: Published | None, *, allow_older_cutoff: bool = False
    ) -> None:
        """Raise :class:`PublishError` unless a version at ``cutoff`` may replace ``current``.

        Never below ``current.purged_before`` (real-time rows of the epochs between would be
        gone: answers would undercount), and never older than ``current.cutoff`` unless
        ``allow_older_cutoff`` (a rollback, or a from-scratch recompute that validation let
        through): publishes only go forward.
        """
        if current is None:
            return
        if cutoff < current.cutoff and not allow_older_cutoff:
            raise PublishError(
                f"view {view.name!r}: cutoff {cutoff} ({utc(cutoff)}) is older than the "
                f"published {current.cutoff} ({utc(current.cutoff)}) of version "
                f"{current.version}: a publish never goes backwards",
                hint="to go back on purpose, `lamina batch rollback VIEW N` to a retained "
                "version; otherwise build at the complete cutoff (omit --cutoff)",
            )
        floor = current.purged_before
        if floor is not None and cutoff < floor:
            raise PublishError(
                f"view {view.name!r}: cutoff {cutoff} ({utc(cutoff)}) is older than "
                f"{floor} ({utc(floor)}), before which the real-time rows were purged: "
                f"published, it would miss the events of the epochs in between",
                hint="publish a version at a cutoff at or after that (`lamina batch versions "
                "VIEW`), or build a new one at the complete cutoff (omit --cutoff)",
            )

    def publish(
        self, view: View, version: Version, *, allow_older_cutoff: bool = False
    ) -> Published:
        """Point readers at ``version``: one single-row write of the catalog (atomic).

        The write is a lightweight transaction on the row as read and checked by
        :meth:`check_publishable` (``IF version = <read> AND purged_before = <read>``, or
        ``IF NOT EXISTS``): a publish, rollback or purge that changed the row in between makes
        it re-read and re-check, so a stale publish is refused rather than written over a
        newer one. Raises :class:`PublishError` (refused), :class:`ConflictError` (the row kept
        changing for :data:`CAS_ATTEMPTS` attempts).
        """
        self._ensure_catalog()
        first = self.prepare(
            f"INSERT INTO {self.ks}.catalog (view_name, version, cutoff, rows, published_at, "
            "definition_hash) VALUES (?, ?, ?, ?, ?, ?) IF NOT EXISTS"
        )
        swap = self.prepare(
            f"UPDATE {self.ks}.catalog SET version = ?, cutoff = ?, rows = ?, published_at = ?, "
            "definition_hash = ?, previous_version = ? WHERE view_name = ? "
            "IF version = ? AND purged_before = ?"
        )
        for _ in range(CAS_ATTEMPTS):
            old = self.published(view)
            self.check_publishable(view, version.cutoff, old, allow_older_cutoff=allow_older_cutoff)
            if old is None:
                previous = purged = None
            else:
                purged = old.purged_before
                same = old.version == version.version
                previous = old.previous_version if same else old.version
            pub = Published(
                view.name,
                version.version,
                version.cutoff,
                version.rows,
                time.time(),
                version.definition_hash,
                previous,
                purged,
            )
            values = (pub.version, pub.cutoff, pub.rows, pub.published_at, pub.definition_hash)
            if old is None:
                applied = self.session.execute(first, (view.name, *values)).was_applied
            else:
                applied = self.session.execute(
                    swap, (*values, previous, view.name, old.version, purged)
                ).was_applied
            if applied:
                break
        else:
            raise ConflictError(
                f"view {view.name!r}: the catalog changed {CAS_ATTEMPTS} times while "
                f"publishing version {version.version}",
                hint="another publish or purge of the view is running: try again",
            )
        self._set_state(view, version.version, "published")
        if old is not None and old.version != version.version:
            self._set_state(view, old.version, "superseded")
        return pub

    def fail_abandoned(self, view: View) -> list[int]:
        """Mark every version of ``view`` still ``building`` as ``failed``; returns them.

        Call it only while holding the view's build lease (:meth:`build_lease`): every build
        takes the lease before it begins a version, so a version still ``building`` then
        belongs to a build that died or lost its lease. Its table goes at the next GC."""
        abandoned = [v.version for v in self.versions(view) if v.state == "building"]
        for version in abandoned:
            self._set_state(view, version, "failed")
        return abandoned

    def _set_state(self, view: View, version: int, state: str) -> None:
        self.session.execute(
            self.prepare(
                f"UPDATE {self.ks}.versions SET state = ? WHERE view_name = ? AND version = ?"
            ),
            (state, view.name, version),
        )

    def publish_version(
        self, view: View, version: int, *, allow_older_cutoff: bool = False
    ) -> Published:
        """Publish version number ``version``: a new build (``ready``) or an older one that
        was not garbage-collected, with the checks of :meth:`publish`."""
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
        return self.publish(view, v, allow_older_cutoff=allow_older_cutoff)

    def rollback(self, view: View, version: int) -> Published:
        """Publish a retained version again, also at a cutoff older than the published one:
        refused only when real-time rows it needs were purged (``purged_before``)."""
        return self.publish_version(view, version, allow_older_cutoff=True)

    def collect_garbage(self, view: View, retain: int) -> list[int]:
        """Drop batch tables beyond the newest ``retain`` complete versions, of failed builds
        and of versions that can never be published again (cutoff below ``purged_before``);
        returns the versions collected.

        Never dropped: the published version, the one it replaced (``previous_version``: a
        query that resolved it just before the publish still reads it, whatever ``retain``;
        it goes at the next publish), and builds in flight.
        """
        pub = self.published(view)
        keep: set[int] = set()
        floor = None
        if pub is not None:
            keep |= {pub.version}
            if pub.previous_version is not None:
                keep.add(pub.previous_version)
            floor = pub.purged_before
        versions = self.versions(view)
        complete = [
            v for v in versions if v.state in PUBLISHABLE and (floor is None or v.cutoff >= floor)
        ]
        keep |= {v.version for v in complete[:retain]}
        dropped = []
        for v in versions:
            if v.version in keep or v.state == "collected" or v.state == "building":
                continue
            self.session.execute(f"DROP TABLE IF EXISTS {self.ks}.{batch_table(view, v.version)}")
            self.session.execute(
                f"DROP TABLE IF EXISTS {self.ks}.{batch_index_table(view, v.version)}"
            )
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
        epochs at or after it must be kept so a rollback stays exact). Versions below the
        recorded ``purged_before`` are not counted: they can never be published again."""
        pub = self.published(view)
        floor = None if pub is None else pub.purged_before
        cut = [
            v.cutoff
            for v in self.versions(view)
            if v.state in PUBLISHABLE and (floor is None or v.cutoff >= floor)
        ]
        return min(cut) if cut else None

    def raise_purge_floor(self, view: View, floor: int) -> int | None:
        """Record that real-time rows of epochs ``< floor`` may be deleted; returns the floor
        to purge below, or ``None`` when nothing may be purged.

        The floor is lowered to the published cutoff, never below what is recorded already,
        and written with a lightweight transaction on the catalog row as read (``IF version =
        <read> AND purged_before = <read>``), *before* any row is deleted: a publish or
        rollback that changed the row in between wins and this purge is retried from the row
        it wrote; a publish after it sees the floor and refuses any older cutoff. Nothing is
        purged while nothing is published (queries answer from real-time rows alone).
        """
        self._ensure_catalog()
        stmt = self.prepare(
            f"UPDATE {self.ks}.catalog SET purged_before = ? WHERE view_name = ? "
            "IF version = ? AND purged_before = ?"
        )
        for _ in range(CAS_ATTEMPTS):
            pub = self.published(view)
            if pub is None:
                return None
            new = min(floor, pub.cutoff)
            if pub.purged_before is not None and new <= pub.purged_before:
                return new  # already recorded: those rows may go (again)
            applied = self.session.execute(
                stmt, (new, view.name, pub.version, pub.purged_before)
            ).was_applied
            if applied:
                return new
        log.warning("view %s: catalog kept changing, purge skipped this time", view.name)
        return None

    @contextmanager
    def build_lease(
        self, view: View, what: str = "build", ttl_s: int = LEASE_TTL_S
    ) -> Iterator[BuildLease]:
        """Hold the view's build lease for the block: one build of a view at a time.

        The lease is a ``leases`` row written with ``IF NOT EXISTS`` and a TTL of ``ttl_s``,
        renewed (``IF holder = <ours>``) every ``ttl_s / 3`` seconds by a daemon thread and
        deleted (``IF holder = <ours>``) at the end; a process that dies leaves it to expire.
        Raises :class:`ConflictError` naming the holder when another build holds it.
        """
        self._ensure_catalog()
        holder = f"{what} on {socket.gethostname()} pid {os.getpid()} #{uuid.uuid4().hex[:8]}"
        now = time.time()
        got = self.session.execute(
            self.prepare(
                f"INSERT INTO {self.ks}.leases (view_name, holder, acquired_at, renewed_at) "
                "VALUES (?, ?, ?, ?) IF NOT EXISTS USING TTL ?"
            ),
            (view.name, holder, now, now, ttl_s),
        )
        if not got.was_applied:
            row = got.one()
            other = getattr(row, "holder", None) or "another build"
            since = getattr(row, "acquired_at", None)
            when = "" if since is None else f" since {utc(int(since))}"
            raise ConflictError(
                f"view {view.name!r} is being built by {other}{when}: one build of a view at "
                "a time",
                hint=f"wait for it to finish (`lamina batch versions {view.name}`); if its "
                f"process died, the lease expires within {ttl_s} s",
            )
        lease = BuildLease(self, view, holder, ttl_s, now)
        lease.start()
        try:
            yield lease
        finally:
            lease.stop()
            try:
                self.session.execute(
                    self.prepare(f"DELETE FROM {self.ks}.leases WHERE view_name = ? IF holder = ?"),
                    (view.name, holder),
                )
            except Exception:  # the TTL ends it anyway
                log.warning("view %s: could not release the build lease", view.name)

    # -- reads --------------------------------------------------------------------------

    async def snapshot(self, view: View) -> tuple[Published | None, RealtimeTable | None]:
        """The catalog row and the ``realtime_tables`` row of ``view``, read together
        (asynchronously; call it from an event loop)."""
        self._ensure_catalog()
        pub_rows, rec_rows = await asyncio.gather(
            rows_async(
                self.session.execute_async(
                    self.prepare(f"SELECT * FROM {self.ks}.catalog WHERE view_name = ?"),
                    (view.name,),
                )
            ),
            rows_async(
                self.session.execute_async(
                    self.prepare(f"SELECT * FROM {self.ks}.realtime_tables WHERE view_name = ?"),
                    (view.name,),
                )
            ),
        )
        return (
            self._published_of(pub_rows[0] if pub_rows else None),
            self._realtime_of(rec_rows[0] if rec_rows else None),
        )

    async def read_slices(
        self,
        view: View,
        version: int | None,
        keys: Sequence[Sequence[Any]],
        b_from: int,
        b_to: int,
        *,
        realtime: bool,
    ) -> list[tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]]:
        """For each key, its batch rows of version ``version`` (none when ``None``) and, if
        ``realtime``, its real-time rows, with ``b_from <= bucket < b_to``: every read in
        flight at once (prepared statements, asynchronous; call it from an event loop).

        Batch rows are ``(bucket, *value columns)``, real-time rows ``(bucket, ingest_epoch,
        *value columns)``, value columns in ``view.value_columns`` order.
        """
        where = " AND ".join(f"{k} = ?" for k in view.keys)
        values = ", ".join(c for c, _ in view.value_columns)
        batch = (
            None
            if version is None
            else self.prepare(
                f"SELECT bucket, {values} FROM {self.ks}.{batch_table(view, version)} "
                f"WHERE {where} AND bucket >= ? AND bucket < ?"
            )
        )
        rt = (
            self.prepare(
                f"SELECT bucket, {INGEST_EPOCH}, {values} FROM {self.ks}.{realtime_table(view)} "
                f"WHERE {where} AND bucket >= ? AND bucket < ?"
            )
            if realtime
            else None
        )
        none: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        none.set_result([])
        reads = []
        for key in keys:
            params = (*key, b_from, b_to)
            for stmt in (batch, rt):
                reads.append(
                    none
                    if stmt is None
                    else rows_async(
                        self.session.execute_async(stmt, params, execution_profile=TUPLES)
                    )
                )
        rows = await asyncio.gather(*reads)
        return [(rows[2 * i], rows[2 * i + 1]) for i in range(len(keys))]

    async def read_index(
        self,
        view: View,
        version: int | None,
        b_from: int,
        b_to: int,
        *,
        realtime: bool,
        cutoff: int | None,
        columns: Sequence[str],
        max_rows: int,
        concurrency: int = INDEX_CONCURRENCY,
    ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]] | None:
        """Every key index row of the buckets ``b_from <= bucket < b_to`` (a partition per
        bucket, read ``concurrency`` at a time, asynchronously; call it from an event loop):
        those of batch version ``version`` (none when ``None``) and, if ``realtime``, the
        real-time ones of epochs ``>= cutoff`` (all when ``cutoff`` is ``None``): the rows a
        merge under that cutoff takes (:func:`serving.merge.merge`).

        Batch rows are ``(bucket, *keys, *columns)``, real-time rows ``(bucket,
        ingest_epoch, *keys, *columns)``: ``columns`` are value columns (none: the keys
        alone). Returns ``None`` as soon as more than ``max_rows`` rows were read (the
        caller refuses the request).
        """
        keys = ", ".join(view.keys)
        cols = "".join(f", {c}" for c in columns)
        limit = max_rows + 1
        batch = (
            None
            if version is None
            else self.prepare(
                f"SELECT bucket, {keys}{cols} FROM {self.ks}.{batch_index_table(view, version)} "
                f"WHERE bucket = ? LIMIT {limit}"
            )
        )
        rt = None
        if realtime:
            since = "" if cutoff is None else f" AND {INGEST_EPOCH} >= ?"
            rt = self.prepare(
                f"SELECT bucket, {INGEST_EPOCH}, {keys}{cols} FROM "
                f"{self.ks}.{realtime_index_table(view)} WHERE bucket = ?{since} LIMIT {limit}"
            )
        step = view.bucket.seconds
        reads: list[tuple[PreparedStatement, tuple[Any, ...], list[tuple[Any, ...]]]] = []
        batch_rows: list[tuple[Any, ...]] = []
        rt_rows: list[tuple[Any, ...]] = []
        for b in range(b_from, b_to, step):
            if batch is not None:
                reads.append((batch, (b,), batch_rows))
            if rt is not None:
                reads.append((rt, (b,) if cutoff is None else (b, cutoff), rt_rows))
        gate = asyncio.Semaphore(concurrency)
        total = 0
        over = asyncio.Event()

        async def one(stmt: PreparedStatement, params: tuple[Any, ...], out: list[Any]) -> None:
            nonlocal total
            async with gate:
                if over.is_set():
                    return
                rows = await rows_async(
                    self.session.execute_async(stmt, params, execution_profile=TUPLES)
                )
            total += len(rows)
            if total > max_rows:
                over.set()
                return
            out.extend(rows)

        await asyncio.gather(*(one(*r) for r in reads))
        if over.is_set():
            return None
        return batch_rows, rt_rows

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
        ingest_epoch[, *value columns])``. None while the table is not readable under the
        current definition (:meth:`realtime_readable`): it holds no rows of it."""
        if not self.realtime_readable(view):
            log.info("view %s: real-time table not of the current definition: not read", view.name)
            return iter(())
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
        ``< before_epoch``, values in ``view.value_columns`` order (blobs as ``bytes``).
        Rows of epochs before the table's ``covers_from`` are left out: a table rebuilt by its
        source job holds only part of those epochs."""
        n = len(view.keys)
        rec = self.realtime_record(view)
        floor = None if rec is None else rec.covers_from
        for r in self._realtime_before(view, before_epoch, values=True):
            if floor is None or r[n + 1] >= floor:
                yield r[:n], r[n], r[n + 1], r[n + 2 :]

    def purge_realtime(self, view: View, before_epoch: int) -> int:
        """Delete real-time rows of epochs ``< before_epoch`` (covered by every retained
        batch version). Returns the number of rows deleted (none while the table is not of
        the current definition: its source job drops it whole when it rebuilds it)."""
        where = " AND ".join(f"{k} = ?" for k in view.keys)
        stmt = self.prepare(
            f"DELETE FROM {self.ks}.{realtime_table(view)} WHERE {where} AND bucket = ? "
            "AND ingest_epoch = ?"
        )
        index = self.prepare(
            f"DELETE FROM {self.ks}.{realtime_index_table(view)} WHERE bucket = ? "
            f"AND ingest_epoch = ? AND {where}"
        )
        doomed = list(self._realtime_before(view, before_epoch, values=False))
        n = len(view.keys)
        # The index rows first, then the cells: a purge cut short leaves cells (found and
        # deleted by the next purge, with their index rows again), never orphaned index
        # rows. Either way their epochs are below every cutoff that may still be published,
        # so no query merges them meanwhile.
        write_rows(self.session, index, ((r[n], r[n + 1], *r[:n]) for r in doomed), 64)
        return write_rows(self.session, stmt, doomed, 64)
