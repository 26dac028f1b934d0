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

from lamina.errors import ConfigError, ConflictError, NotFoundError, PublishError
from lamina.schema import INGEST_EPOCH
from lamina.settings import CassandraSettings
from lamina.views import View, ViewCatalog
from serving.cassandra import ensure_keyspace, session
from serving.schema import (
    APPLIED_BATCH,
    CATALOG_GUARD_COLUMNS,
    batch_ddl,
    batch_table,
    catalog_ddl,
    realtime_ddl,
    realtime_table,
)
from serving.writer import write_rows

log = logging.getLogger(__name__)

PUBLISHABLE = ("ready", "published", "superseded")
"""Version states whose table is complete and may be (re-)published."""

LEASE_TTL_S = 30
"""Seconds a build lease lives without renewal (it is renewed every third of that): how long a
view stays locked after its build's process died without releasing it."""

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
        """Create the keyspace, the catalog tables and every view's real-time table."""
        s = self.session
        ensure_keyspace(s, self.settings)
        self._ensure_catalog(force=True)
        for view in catalog.views.values():
            s.execute(realtime_ddl(view, self.ks))
            self._follow_definition(view)

    def _follow_definition(self, view: View) -> None:
        """Bring ``view``'s real-time table (created by an earlier definition) in line with
        the current one where Cassandra can: a new aggregation's columns are added (its
        real-time states start with the events read from then on; the next batch, rebuilt
        from scratch, covers the epochs before). A changed key or a column of another type
        cannot be altered: :class:`ConfigError` says how to start the table afresh. Sums
        of longs stored as ``bigint`` by an older Lamina keep working below 2**63 (a warning);
        a table made before ``applied_batch`` gets it. One read of the table's columns.
        """
        table = realtime_table(view)
        rows = self.session.execute(
            "SELECT column_name, kind, type FROM system_schema.columns "
            "WHERE keyspace_name = %s AND table_name = %s",
            (self.ks, table),
        )
        found = {r.column_name: (r.kind, r.type) for r in rows}
        keys = sorted(c for c, (kind, _) in found.items() if kind == "partition_key")
        fix = (
            f"stop its source job, DROP TABLE {self.ks}.{table}, start the job again (its "
            f"real-time part restarts empty) and recompute the view (lamina batch run --view "
            f"{view.name})"
        )
        if keys != sorted(view.keys):
            raise ConfigError(
                f"view {view.name!r}: its real-time table {table} is keyed by {keys}, the "
                f"definition now by {sorted(view.keys)}: Cassandra cannot change a table's key",
                hint=fix,
            )
        for column, cql_type in [*view.value_columns, (APPLIED_BATCH, "bigint")]:
            if column not in found:
                log.info("view %s: adding column %s %s to %s", view.name, column, cql_type, table)
                self._add_column(table, column, cql_type)
                continue
            stored = found[column][1]
            if stored == cql_type:
                continue
            if (stored, cql_type) == ("bigint", "varint"):
                log.warning(
                    "view %s: %s.%s is bigint (an older Lamina): sums past 2**63 fail there; "
                    "to store them whole, %s",
                    view.name,
                    table,
                    column,
                    fix,
                )
                continue
            raise ConfigError(
                f"view {view.name!r}: column {column} of its real-time table {table} is "
                f"{stored}, the definition now needs {cql_type}",
                hint=fix,
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
