"""``lamina batch run``: recompute views from the master dataset and publish new versions.

For each view: take the view's build lease (one build of a view at a time), pick the cutoff
(complete ingest epochs only, never older than the published one), read the master dataset up
to it, drop duplicate event ids, aggregate through :func:`engine.translate.aggregate`, write a
new version table from the Spark tasks (:func:`write_input`: each task gets whole view keys,
sorted, and writes a key's rows in unlogged single-partition batches,
:func:`serving.writer.partition_writer`), check it against the
master dataset it read and reconcile it with the real-time view on the epochs both cover
(report stored per version, :mod:`batch.reconcile`), then publish it with one conditional
catalog write (:meth:`serving.store.Store.publish`), unless its self-check failed. A crash
before the publish leaves the published version untouched (the half-built version stays
``building`` and its lease expires).

Incremental builds (opt-in, ``[batch] incremental``): where it equals a full recompute, a
version is the published version's stored states ⊕ the epochs completed since its cutoff
(:mod:`batch.incremental`; :func:`build_view` plans it and hands over).

The purge and a build in flight: the purge floor does not wait for ``building`` versions.
Each purge records its floor in the catalog before it deletes, and no version below that
floor is ever published (:meth:`serving.store.Store.check_publishable`): a build that started
at an older cutoff and ends after a newer publish and its purge is refused at its publish,
instead of holding every purge back behind builds that may have died.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import reduce
from typing import Any

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from batch.incremental import (
    Plan,
    build_incremental,
    conclude_build,
    drop_state,
    finish_build,
    plan_build,
    state_dir,
    write_version,
)
from batch.reconcile import (
    Reconciliation,
    realtime_overlap,
    reconcile,
    self_check,
    stored_verdict,
)
from engine.schema import master_schema
from engine.translate import aggregate, key_fits
from lamina.errors import PublishError
from lamina.master import (
    archive_dir,
    check_schema,
    committed_imports,
    complete_cutoff,
    epoch_dirs,
    footer_rows,
    imports_dir,
    not_covered,
    stream_dir,
)
from lamina.progress import Progress, as_progress
from lamina.schema import EVENT_TIME, INGEST_EPOCH
from lamina.settings import Settings
from lamina.views import MAX_KEY_BYTES, Source, View, ViewCatalog
from serving.store import BuildLease, Published, Store, Version, open_store, utc
from serving.writer import state_row

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchResult:
    view: str
    version: int
    cutoff: int
    rows: int
    events: int
    timings: dict[str, float]
    published: Published


@dataclass(frozen=True)
class MasterRead:
    """A build's read of the master dataset before the dedup (one Spark file listing each,
    taken when it was created): ``epochs`` the archive and imports, pruned to the epochs
    before the cutoff; ``legacy`` the legacy file-sink archive. ``None``: nothing there."""

    epochs: DataFrame | None
    legacy: DataFrame | None

    def union(self, spark: SparkSession, view: View, columns: list[str] | None = None) -> DataFrame:
        """Both parts as one DataFrame: every master column, or only ``columns`` (then the
        Parquet scans read only those)."""
        parts = [p for p in (self.legacy, self.epochs) if p is not None]
        if not parts:
            empty = spark.createDataFrame([], master_schema(view.source))
            return empty if columns is None else empty.select(*columns)
        if columns is not None:
            parts = [p.select(*columns) for p in parts]
        df = parts[0]
        for p in parts[1:]:
            df = df.unionByName(p)
        return df


def master_read(
    spark: SparkSession, settings: Settings, view: View, cutoff: int, since: int | None = None
) -> MasterRead:
    """The view's source in the master dataset with ingest epoch ``< cutoff`` (and, with
    ``since``, ``>= since``), every copy: the source job's archive and the committed imports
    (:func:`lamina.master.committed_imports`: never a part of an import), pruned to those
    epochs, and the legacy file-sink archive through its metadata log, when present. Call it
    after choosing ``cutoff``: an import committed since then has an epoch at or after it
    (see "Imports" in :mod:`lamina.master`)."""
    schema = master_schema(view.source)
    legacy = None
    stream = stream_dir(settings, view.source)
    low = -(2**63) if since is None else since
    if (stream / "_spark_metadata").exists():
        legacy = spark.read.schema(schema).parquet(str(stream))
        legacy = legacy.where(F.col(INGEST_EPOCH) < F.lit(cutoff))
        if since is not None:
            legacy = legacy.where(F.col(INGEST_EPOCH) >= F.lit(since))
    archived = [
        str(d)
        for e, d in epoch_dirs(archive_dir(settings, view.source)).items()
        if low <= e < cutoff
    ]
    imported = [
        str(f)
        for e, files in committed_imports(settings, view.source).items()
        if low <= e < cutoff
        for f in files
    ]
    parts: list[DataFrame] = []
    for root, paths in (
        (archive_dir(settings, view.source), archived),
        (imports_dir(settings, view.source), imported),
    ):
        if paths:
            # ``ingest_epoch`` from the paths (``<root>/ingest_epoch=<E>/...``).
            parts.append(spark.read.schema(schema).option("basePath", str(root)).parquet(*paths))
    found = None
    for p in parts:
        found = p if found is None else found.unionByName(p)
    return MasterRead(found, legacy)


def read_master(spark: SparkSession, settings: Settings, view: View, cutoff: int) -> DataFrame:
    """Every event of the view's source with ingest epoch ``< cutoff``, one per event id,
    the columns ``view`` reads (:func:`master_read`, :func:`deduplicate`). The result stays
    cached (for tests and tools; a build unpersists its :class:`Deduped`)."""
    return deduplicate(spark, master_read(spark, settings, view, cutoff), view).events


FIRST_COPY_ORDER = (INGEST_EPOCH, "partition", "offset")
"""Which copy of an event id the batch keeps: the smallest (ingest epoch, Kafka partition,
offset), imported copies (no partition) first within an epoch, then the other columns.
The speed layer's duplicate index keeps the same copy when the copies are read in one
micro-batch or in different epochs (it judges in that order and is seeded with the
imports); two copies of one epoch on different partitions read in different micro-batches
can differ (the speed layer keeps the one read first), which only matters if their
contents differ, and the batch then corrects the speed layer."""


def first_copies(events: DataFrame, event_id: str) -> DataFrame:
    """One row per ``event_id``: its first copy by :data:`FIRST_COPY_ORDER` (deterministic,
    whatever the files' order; redeliveries by producer retries or replays share the id),
    over every column of ``events``: the definition :func:`deduplicate` keeps to."""
    columns = events.columns
    rest = [c for c in columns if c not in FIRST_COPY_ORDER and c != event_id]
    first = F.min(F.struct(*FIRST_COPY_ORDER, *rest)).alias("_first")
    return (
        events.groupBy(event_id)
        .agg(first)
        .select(event_id, *(F.col(f"_first.{c}").alias(c) for c in (*FIRST_COPY_ORDER, *rest)))
        .select(*columns)
    )


def needed_columns(*views: View) -> list[str]:
    """The master columns a build of ``views`` (views of one source) reads, in the master
    schema's order: the event id, the views' keys, filtered and aggregated fields, the event
    time, the copy order (:data:`FIRST_COPY_ORDER`) and ``topic`` (the reconciliation
    compares only events that came through Kafka). The source's other fields (its raw
    event-time field, fields no aggregation of these views reads) are not read."""
    source = _one_source(views)
    wanted = {
        source.event_id,
        EVENT_TIME,
        "topic",
        *FIRST_COPY_ORDER,
    }
    for view in views:
        wanted |= {
            *view.keys,
            *(c.field for c in view.filter),
            *(a.field for a in view.aggregations.values() if a.field),
        }
    return [c for c in master_schema(source).fieldNames() if c in wanted]


def _one_source(views: Sequence[View]) -> Source:
    if not views:
        raise ValueError("no view given")
    sources = {v.source.name for v in views}
    if len(sources) > 1:
        raise ValueError(f"views of several sources ({', '.join(sorted(sources))}) in one read")
    return views[0].source


ID_HASH = "_id_hash"
"""``xxhash64`` of the event id, the dedup's pre-check (:func:`deduplicate`)."""
LEGACY = "_legacy"
"""Whether a row was read from the legacy file-sink archive (counted apart)."""


@dataclass(frozen=True)
class Deduped:
    """A build's events, one per event id, from one read of the master dataset
    (:func:`deduplicate`), and the counts its self-check needs
    (:func:`batch.reconcile.self_check`).

    ``events`` has the columns of :func:`needed_columns` (of every view the read was made
    for) but ``partition`` and ``offset``; it is computed from cached data: call
    :meth:`unpersist` when every build that uses it is done. ``read_rows`` maps each ingest
    epoch of the archive and the imports to (rows read, rows with an event id);
    ``legacy_rows`` were read from the legacy archive. The dedup consumed exactly those rows
    (it reads the cached read, nothing else). ``count``: events; ``oversize``: per view
    name, events whose key Cassandra cannot store (:func:`key_fits`); ``repeated``: event
    ids with more than one copy; ``ambiguous``: of those, ids whose first copies tie on
    :data:`FIRST_COPY_ORDER` and differ in a column read (settled from every column, read
    again)."""

    events: DataFrame
    read_rows: dict[int, tuple[int, int]]
    legacy_rows: int
    count: int
    oversize: dict[str, int]
    repeated: int
    ambiguous: int
    cached: tuple[DataFrame, ...]

    @property
    def consumed(self) -> int:
        """Rows the dedup consumed: every row read."""
        return sum(n for n, _ in self.read_rows.values()) + self.legacy_rows

    def events_of(self, view: View) -> DataFrame:
        """``events`` with only the columns ``view`` needs (a read shared by several views
        of a source carries the columns of all)."""
        wanted = set(needed_columns(view))
        return self.events.select(*(c for c in self.events.columns if c in wanted))

    def unpersist(self) -> None:
        for df in self.cached:
            df.unpersist()


def _oversize(i: int) -> str:
    return f"_oversize_copies_{i}"


def deduplicate(spark: SparkSession, read: MasterRead, *views: View) -> Deduped:
    """The first copy of every event id of ``read`` (:data:`FIRST_COPY_ORDER`: exactly the
    copy :func:`first_copies` keeps over every column), reading only the columns ``views``
    (one or more views of one source) need (:func:`needed_columns`), in one pass over the
    files: several views of a source share one read and one dedup (:class:`SourceReads`).

    Plan (Spark jobs in order):

    1. The pruned rows and the ``xxhash64`` of their event id are cached; the same job
       counts them per ingest epoch (the self-check's side of the files: nothing else reads
       them, so the dedup consumes exactly the rows counted).
    2. Hashes seen more than once, from the cache: an exchange of 8-byte hashes, no row.
       Ids whose hash is seen once have one copy, which is their first: those rows (all but
       the redeliveries, usually) are events as they are, never shuffled.
    3. The rows of repeated hashes (a hash collision only sends a few more): per event id,
       the copies at the smallest (epoch, partition, offset) are compared on the columns
       read. If they agree (redeliveries do), that is the first copy's content, whatever
       the other columns (which only break such ties). If they differ, the id is settled by
       :func:`first_copies` over every column, read again for those ids only (an extra
       Spark job only when it happens: two imported copies of an id in one epoch that
       differ, or one Kafka position under two topics).

    Shuffles are sized from the rows read (:func:`write_tasks`), not
    ``spark.sql.shuffle.partitions``.
    """
    source = _one_source(views)
    event_id = source.event_id
    columns = needed_columns(*views)
    parts = [
        p.select(*columns, F.lit(legacy).alias(LEGACY))
        for p, legacy in ((read.legacy, True), (read.epochs, False))
        if p is not None
    ]
    if parts:
        rows = parts[0]
        for p in parts[1:]:
            rows = rows.unionByName(p)
    else:
        rows = read.union(spark, views[0], columns).withColumn(LEGACY, F.lit(False))
    rows = rows.withColumn(ID_HASH, F.xxhash64(F.col(event_id))).cache()
    cached = [rows]
    try:
        fits = [key_fits(v) for v in views]
        read_rows: dict[int, tuple[int, int]] = {}
        legacy_rows = total = 0
        oversize_rows = [0] * len(views)
        for r in (
            rows.groupBy(INGEST_EPOCH, LEGACY)
            .agg(
                F.count(F.lit(1)).alias("n"),
                F.count(event_id).alias("ids"),
                *(F.count(F.when(~f, 1)).alias(_oversize(i)) for i, f in enumerate(fits)),
            )
            .collect()
        ):
            n = int(r["n"])
            total += n
            for i in range(len(views)):
                oversize_rows[i] += int(r[_oversize(i)])
            if r[LEGACY]:
                legacy_rows += n
            else:
                epoch = int(r[INGEST_EPOCH])
                prev = read_rows.get(epoch, (0, 0))
                read_rows[epoch] = (prev[0] + n, prev[1] + int(r["ids"]))
        parallelism = spark.sparkContext.defaultParallelism
        out = [c for c in columns if c not in ("partition", "offset")]

        def per_view(counts: Sequence[int]) -> dict[str, int]:
            return {v.name: n for v, n in zip(views, counts, strict=True)}

        hashes = (
            rows.select(ID_HASH)
            .repartition(write_tasks(total, parallelism), ID_HASH)
            .groupBy(ID_HASH)
            .agg(F.count(F.lit(1)).alias("n"))
            .where(F.col("n") > 1)
            .select(ID_HASH)
            .cache()
        )
        cached.append(hashes)
        repeated_hashes = hashes.count()
        if not repeated_hashes:
            return Deduped(
                rows.select(*out),
                read_rows,
                legacy_rows,
                total,
                per_view(oversize_rows),
                0,
                0,
                tuple(cached),
            )
        if repeated_hashes <= MAX_BROADCAST_HASHES:
            single = rows.join(F.broadcast(hashes), ID_HASH, "left_anti").select(*out)
            repeated_rows = rows.join(F.broadcast(hashes), ID_HASH, "left_semi")
            tasks = write_tasks(2 * repeated_hashes, parallelism)
        else:  # too many to broadcast (a replay of a whole topic): every row goes through
            single = rows.where(F.lit(False)).select(*out)
            repeated_rows, tasks = rows, write_tasks(total, parallelism)
        firsts = _first_of_repeated(
            repeated_rows.drop(ID_HASH, LEGACY), views, columns, tasks
        ).cache()
        cached.append(firsts)
        s = firsts.agg(
            F.count(F.lit(1)),
            F.count(F.when(F.col(COPIES) > 1, 1)),
            F.sum(COPIES),
            F.count(F.when(F.col("_ambiguous"), 1)),
            *(F.sum(_oversize(i)) for i in range(len(views))),
            *(F.count(F.when(~f, 1)) for f in fits),
        ).first()
        assert s is not None
        ids, repeated, copies, ambiguous, *over = (int(x or 0) for x in s)
        oversize_copies, oversize_firsts = over[: len(views)], over[len(views) :]
        settled = firsts.where(~F.col("_ambiguous")).select(*out)
        if ambiguous:
            tie = firsts.where(F.col("_ambiguous")).select(F.col(event_id).alias("_tied"))
            full = read.union(spark, views[0])
            tied = full.join(F.broadcast(tie), full[event_id].eqNullSafe(tie["_tied"]), "left_semi")
            again = first_copies(tied, event_id).select(*out).cache()
            cached.append(again)
            settled = settled.unionByName(again)
        return Deduped(
            single.unionByName(settled),
            read_rows,
            legacy_rows,
            total - copies + ids,
            per_view(
                [
                    r - c + f
                    for r, c, f in zip(oversize_rows, oversize_copies, oversize_firsts, strict=True)
                ]
            ),
            repeated,
            ambiguous,
            tuple(cached),
        )
    except BaseException:
        for df in cached:
            df.unpersist()
        raise


class SourceReads:
    """A run's deduplicated reads of the master dataset, one per (source, first epoch,
    cutoff), shared by the builds of every view of that source in the run: ``lamina batch
    run`` over several views of one source reads and deduplicates it once
    (:func:`deduplicate` for all of them at once: the columns of every view, the oversize
    keys of each), not once per view.

    ``views``: the views the run builds (the read of a source is made for those of its
    views). :meth:`dedup` makes a read on first use and hands the same one to the next
    build; :meth:`done` says a view's build no longer needs any (its read is unpersisted
    once every view it was made for is done); :meth:`close` (or leaving the ``with``
    block) unpersists what is left. ``passes`` counts the reads made per key: the proof
    that a source was read and deduplicated once."""

    def __init__(self, spark: SparkSession, settings: Settings, views: Iterable[View]) -> None:
        self._spark = spark
        self._settings = settings
        self._views: dict[str, dict[str, View]] = {}
        for v in views:
            self._views.setdefault(v.source.name, {})[v.name] = v
        self._reads: dict[tuple[str, int | None, int], Deduped] = {}
        self._waiting: dict[tuple[str, int | None, int], set[str]] = {}
        self._used: dict[tuple[str, int | None, int], int] = {}
        self._done: set[str] = set()
        self.passes: dict[tuple[str, int | None, int], int] = {}

    def dedup(self, view: View, cutoff: int, since: int | None = None) -> tuple[Deduped, int]:
        """The deduplicated events of ``view``'s source in the epochs ``[since, cutoff)``
        (``since`` ``None``: every epoch below ``cutoff``), and how many builds used this
        read before this one (0: made now)."""
        key = (view.source.name, since, cutoff)
        found = self._reads.get(key)
        if found is not None:
            self._done.discard(view.name)
            used = self._used[key]
            self._used[key] += 1
            self._waiting[key].add(view.name)
            return found, used
        group = {**self._views.get(view.source.name, {}), view.name: view}
        read = master_read(self._spark, self._settings, view, cutoff, since)
        deduped = deduplicate(self._spark, read, *group.values())
        self.passes[key] = self.passes.get(key, 0) + 1
        self._reads[key] = deduped
        self._used[key] = 1
        self._waiting[key] = {n for n in group if n not in self._done} | {view.name}
        return deduped, 0

    def done(self, view: View) -> None:
        """``view``'s build is over (built or failed): reads no other view waits for go."""
        self._done.add(view.name)
        for key in list(self._reads):
            self._waiting[key].discard(view.name)
            if not self._waiting[key]:
                self._reads.pop(key).unpersist()
                del self._waiting[key]

    def close(self) -> None:
        """Unpersist every read left."""
        for deduped in self._reads.values():
            deduped.unpersist()
        self._reads.clear()
        self._waiting.clear()

    def __enter__(self) -> SourceReads:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


COPIES = "_copies"
MAX_BROADCAST_HASHES = 2_000_000
"""Repeated id hashes :func:`deduplicate` broadcasts to every task (8 bytes each) to pick
the rows of repeated ids out; beyond, every row goes through the grouping by event id."""


def _first_of_repeated(
    rows: DataFrame, views: Sequence[View], columns: list[str], tasks: int
) -> DataFrame:
    """Per event id of ``rows`` (the copies of ids with a repeated hash, every copy): the
    first copy on ``columns`` (``_lo``'s fields), with ``_copies`` (rows of the id),
    ``_oversize_copies_<i>`` (of those, rows whose key does not fit ``views[i]``) and
    ``_ambiguous``: the copies at the smallest :data:`FIRST_COPY_ORDER` differ in a column
    of ``columns``, so the columns not read decide (:func:`deduplicate`)."""
    event_id = views[0].source.event_id
    rest = [c for c in columns if c not in FIRST_COPY_ORDER and c != event_id]
    per_id = Window.partitionBy(event_id)
    oversize = [_oversize(i) for i in range(len(views))]
    ranked = rows.repartition(tasks, event_id).select(
        *columns,
        F.min(F.struct(*FIRST_COPY_ORDER)).over(per_id).alias("_first"),
        F.count(F.lit(1)).over(per_id).alias(COPIES),
        *(
            F.count(F.when(~key_fits(v), 1)).over(per_id).alias(o)
            for v, o in zip(views, oversize, strict=True)
        ),
    )
    at_first = ranked.where(
        reduce(
            lambda a, b: a & b,
            (F.col(c).eqNullSafe(F.col(f"_first.{c}")) for c in FIRST_COPY_ORDER),
        )
    )
    lo = F.min(F.struct(*FIRST_COPY_ORDER, *rest)).alias("_lo")
    hi = F.max(F.struct(*rest)).alias("_hi")
    return (
        at_first.groupBy(event_id)
        .agg(lo, hi, F.max(COPIES).alias(COPIES), *(F.max(o).alias(o) for o in oversize))
        .select(
            event_id,
            *(F.col(f"_lo.{c}").alias(c) for c in (*FIRST_COPY_ORDER, *rest)),
            COPIES,
            *oversize,
            (~F.struct(*(F.col(f"_lo.{c}").alias(c) for c in rest)).eqNullSafe(F.col("_hi"))).alias(
                "_ambiguous"
            ),
        )
        .select(*columns, COPIES, *oversize, "_ambiguous")
    )


WRITE_TASK_EVENTS = 1_000_000
"""Deduplicated events aggregated and written per Spark task, about (:func:`write_tasks`)."""
MAX_SHUFFLE_TASKS = 8192
"""The most tasks a build's shuffle is cut into (:func:`write_tasks`): beyond, each task
takes more events instead (a shuffle's files grow with map tasks × reduce tasks)."""


def write_tasks(events: int, parallelism: int) -> int:
    """How many Spark tasks a shuffle of ``events`` rows of a build is cut into (the dedup's,
    the aggregation and write's, an incremental build's): one per :data:`WRITE_TASK_EVENTS`
    rows, at least ``parallelism`` (Spark's default parallelism: every core works; each
    writing task is a Python process with its own driver connection, which is how the
    Python driver scales), at most :data:`MAX_SHUFFLE_TASKS`.

    Every shuffle of a build is sized this way from rows counted in its read, never by
    ``spark.sql.shuffle.partitions``: that setting is the session's, shared with the
    streaming queries (whose state stores keep the partition count they started with), and
    stays small for their micro-batches."""
    return max(parallelism, 1, min(MAX_SHUFFLE_TASKS, -(-events // WRITE_TASK_EVENTS)))


def write_input(events: DataFrame, view: View, tasks: int) -> DataFrame:
    """The aggregated rows of ``view`` (:func:`engine.translate.aggregate`) as the version's
    writer wants them: each of ``tasks`` partitions holds every row of its view keys (the
    Cassandra partitions), sorted by key, so a key's rows go in few full batches.

    The events are hash-partitioned by the view's keys before the aggregation: that
    partitioning satisfies the aggregation's grouping by (keys, bucket), so the plan has
    this one exchange (of the filtered, projected events), not a second one of the
    aggregated rows; the sort is within each task. A hot key lands whole in one task."""
    grouped = events.repartition(tasks, *(F.col(k) for k in view.keys))
    return aggregate(grouped, view).sortWithinPartitions(*view.keys)


def resolve_cutoff(settings: Settings, view: View, cutoff: int | None) -> int:
    """The cutoff of a build: ``cutoff``, or the complete cutoff of the view's source (the
    newest one before which the master dataset holds every event, :func:`complete_cutoff`).

    Raises :class:`PublishError` when there is no complete epoch yet, or when ``cutoff`` is
    beyond the complete cutoff: such a version would lack events of the epochs in between
    while hiding their real-time rows (they are merged only at or after the cutoff).
    """
    found = complete_cutoff(settings, view.source)
    if cutoff is None and found is None:
        raise PublishError(
            f"view {view.name!r}: the master dataset has no complete epoch of source "
            f"{view.source.name!r} yet",
            hint="import history with `lamina master import` or start the archiver",
        )
    if cutoff is None:
        assert found is not None
        return found
    if found is None or cutoff > found:
        complete = "none yet" if found is None else f"{found} ({utc(found)})"
        raise PublishError(
            f"view {view.name!r}: cutoff {cutoff} ({utc(cutoff)}) is beyond the complete cutoff "
            f"of source {view.source.name!r}, {complete}: the batch would miss events of the "
            "epochs in between and hide their real-time rows",
            hint="omit --cutoff to take the complete cutoff, or wait until the source job or "
            "import has completed those epochs",
        )
    return cutoff


def check_cutoff(
    settings: Settings,
    store: Store,
    view: View,
    cutoff: int | None,
    *,
    allow_older_cutoff: bool = False,
) -> int:
    """The cutoff a build of ``view`` takes (:func:`resolve_cutoff`), checked before any work
    against the published version (:meth:`Store.check_publishable`: never below its purge
    floor; never older than its cutoff unless ``allow_older_cutoff``). The publish checks
    again, atomically: this check only saves a build that could not be published."""
    cut = resolve_cutoff(settings, view, cutoff)
    Store.check_publishable(view, cut, store.published(view), allow_older_cutoff=allow_older_cutoff)
    return cut


def build_view(
    spark: SparkSession,
    settings: Settings,
    store: Store,
    view: View,
    *,
    cutoff: int | None = None,
    progress: Callable[[str], None] = log.info,
    lease: BuildLease | None = None,
    incremental: bool | None = None,
    reads: SourceReads | None = None,
) -> Version:
    """Recompute one view into a new, unpublished version (state ``ready``), with its report
    stored: its self-check against the master dataset it read, its reconciliation with the
    real-time view (:func:`reconcile_version`) and the verdict (:func:`batch.reconcile.judge`,
    with ``[airflow] max_divergence``). A failed self-check does not fail the build: the
    version is built, and refused at validation or by :func:`run_view`.

    The self-check costs no Spark job of its own: the rows read per epoch are counted by the
    job that caches the one read the dedup consumes (:func:`deduplicate`); and the footers
    of the master dataset's files (listed again at the end).

    Holds the view's build lease (``lease``, or its own: :meth:`Store.build_lease`), so a
    second build of the view meanwhile is refused with :class:`ConflictError`. The cutoff is
    checked by :func:`check_cutoff`; an older one than the published is let through (a
    from-scratch recompute: validation and the publish decide).

    ``incremental`` (default ``[batch] incremental``): build it as the published version ⊕
    the epochs completed since, where that equals a full recompute, and keep this build's
    state for the next one (:mod:`batch.incremental`; its report says which kind and why).

    ``reads``: the run's shared reads (:class:`SourceReads`): the views of a source built in
    one run read and deduplicate it once (the version's timings say ``read_shared`` 1 when
    its build took a read another build made, ``read_views`` how many views it was made
    for); by default the build reads for itself.

    Raises; a failed build is marked ``failed`` and the published version stays as it was.
    """
    progress = as_progress(progress)
    if lease is None:
        with store.build_lease(view) as own:
            return build_view(
                spark,
                settings,
                store,
                view,
                cutoff=cutoff,
                progress=progress,
                lease=own,
                incremental=incremental,
                reads=reads,
            )
    t0 = time.monotonic()
    cut = check_cutoff(settings, store, view, cutoff, allow_older_cutoff=True)
    check_schema(settings, view.source)  # stored events parsed under this definition
    abandoned = store.fail_abandoned(view)  # we hold the lease: no other build is alive
    if abandoned:
        progress(
            f"{view.name}: versions {abandoned} were left building by a build that died;"
            " marked failed (their tables go at the next GC)"
        )
    left_out = not_covered(settings, view.source, cut)
    if left_out:
        log.warning("%s: %s", view.name, left_out)
        progress(f"{view.name}: warning: {left_out}")
    on = settings.batch.incremental if incremental is None else incremental
    plan = plan_build(settings, store, view, cut, incremental=on)
    own_reads = reads is None
    shared = SourceReads(spark, settings, [view]) if reads is None else reads
    try:
        if plan.base is None and on:
            progress(f"{view.name}: full build: {plan.why}")
        build = _build_full if plan.base is None else build_incremental
        return build(
            spark,
            settings,
            store,
            view,
            cut,
            plan,
            progress=progress,
            lease=lease,
            started=t0,
            reads=shared,
        )
    finally:
        shared.done(view)
        if own_reads:
            shared.close()


def _build_full(
    spark: SparkSession,
    settings: Settings,
    store: Store,
    view: View,
    cut: int,
    plan: Plan,
    *,
    progress: Progress,
    lease: BuildLease,
    started: float,
    reads: SourceReads,
) -> Version:
    """A full recompute of ``view`` at ``cut`` (:func:`build_view`'s contract)."""
    version = store.begin_version(view, cut)
    state = state_dir(settings, view, version) if plan.keep_state else None
    timings: dict[str, float] = {"incremental": 0.0}
    try:
        with progress.task(
            f"{view.name} v{version}: reading the master dataset of "
            f"{view.source.name!r} and deduplicating"
        ):
            deduped, used = reads.dedup(view, cut)
        events = deduped.events_of(view)
        n_events, oversize = deduped.count, deduped.oversize[view.name]
        timings["oversize_keys"] = oversize
        timings["repeated_ids"] = deduped.repeated
        timings["read_shared"] = float(used > 0)
        timings["read_views"] = len(deduped.oversize)
        if oversize:
            log.warning(
                "%s v%s: %d events with a key over %d bytes",
                view.name,
                version,
                oversize,
                MAX_KEY_BYTES,
            )
            progress(
                f"{view.name} v{version}: warning: {oversize} event(s) have a key larger than "
                f"Cassandra stores ({MAX_KEY_BYTES} bytes): they are in no row of this view"
            )
        timings["events"] = n_events
        timings["read_s"] = round(time.monotonic() - started, 3)
        shared = (
            f" (the read of {view.source.name!r} made for {len(deduped.oversize)} views, "
            f"{'reused' if used else 'made now'})"
            if len(deduped.oversize) > 1
            else ""
        )
        progress(f"{view.name} v{version}: {n_events} events before cutoff {cut}{shared}")
        tasks = write_tasks(n_events, spark.sparkContext.defaultParallelism)
        agg = write_input(events, view, tasks)
        t1 = time.monotonic()
        rows = write_version(agg, settings, view, version, state, progress)
        timings["write_tasks"] = tasks
        timings["aggregate_write_s"] = round(time.monotonic() - t1, 3)
        t2 = time.monotonic()
        with progress.task(f"{view.name} v{version}: reconciling with the real-time view"):
            report = reconcile_version(store, view, version, cut, events)
        timings["reconcile_s"] = round(time.monotonic() - t2, 3)
        # Listed now, at the end: a file that changed while the build ran shows.
        check = self_check(
            footer_rows(settings, view.source, cut),
            deduped.read_rows,
            n_events,
            event_id=view.source.event_id,
            legacy_rows=deduped.legacy_rows,
            deduped_rows=deduped.consumed,
        )
        verdict = conclude_build(
            settings,
            store,
            view,
            version,
            cut,
            plan,
            report,
            check,
            timings,
            checked_from=t2,
            progress=progress,
            lease=lease,
            state=state,
            summary=(
                f"reconciled {report.cells} cells with the real-time view (epochs "
                f"{report.epoch_from}..{cut}): {report.diverging} diverging; self-check "
                f"{'passed' if check.ok else 'FAILED'} ({check.read_rows + check.legacy_rows} "
                f"rows read, footers {check.footer_rows}, {n_events} events)"
            ),
            events=n_events,
            oversize=oversize,
            rows=rows,
        )
    except BaseException:
        store.finish_version(view, version, "failed", 0, timings)
        if state is not None:
            drop_state(state)
        raise
    return finish_build(store, view, version, verdict, rows, timings, started)


def reconcile_version(
    store: Store,
    view: View,
    version: int,
    cutoff: int,
    events: DataFrame,
    from_epoch: int | None = None,
) -> Reconciliation:
    """Compare version ``version`` with the real-time view where both cover (the caller
    stores the report, with the self-check: :func:`build_view`); with ``from_epoch``, only
    on the epochs from it on (an incremental build: :mod:`batch.incremental`).

    ``events`` are the master dataset's events before ``cutoff`` with their ``ingest_epoch``
    and ``topic``. Only events that came through Kafka (``topic`` set) are compared: imported
    files never reach the speed layer. The overlap is ``[first real-time epoch still present,
    cutoff)``; its events are aggregated by :func:`engine.translate.aggregate` (the same
    translation the version and the speed layer use) and streamed to the driver, where
    :func:`batch.reconcile.reconcile` compares them with the fold of the real-time rows.
    """
    rows = store.realtime_before(view, cutoff)
    if from_epoch is not None:
        rows = (r for r in rows if r[2] >= from_epoch)
    realtime = realtime_overlap(view, rows)
    cells: Iterable[tuple[tuple[Any, ...], int, tuple[Any, ...]]] = ()
    if realtime.first_epoch is not None:
        overlap = events.where(
            F.col("topic").isNotNull() & (F.col(INGEST_EPOCH) >= F.lit(realtime.first_epoch))
        )
        cells = (
            (tuple(r[k] for k in view.keys), r["bucket"], state_row(view, r))
            for r in aggregate(overlap, view).toLocalIterator()
        )
    return reconcile(view, version, cutoff, realtime, cells)


def run_view(
    spark: SparkSession,
    settings: Settings,
    store: Store,
    view: View,
    *,
    cutoff: int | None = None,
    progress: Callable[[str], None] = log.info,
    incremental: bool | None = None,
    reads: SourceReads | None = None,
) -> BatchResult:
    """Recompute and publish one view, holding its build lease throughout. Raises; the
    published version stays as it was. A version that fails its self-check is not published
    (:class:`PublishError`); one whose real-time view diverged beyond ``max_divergence`` is,
    with a warning. A cutoff older than the published one is refused
    before the build (and, should one be published meanwhile, at the publish): going back is
    a rollback (:meth:`Store.rollback`). ``reads``: see :func:`build_view`."""
    with store.build_lease(view, "lamina batch run") as lease:
        cut = check_cutoff(settings, store, view, cutoff)
        built = build_view(
            spark,
            settings,
            store,
            view,
            cutoff=cut,
            progress=progress,
            lease=lease,
            incremental=incremental,
            reads=reads,
        )
        report = store.reconciliation(view, built.version)
        verdict = stored_verdict(report, settings.airflow.max_divergence)
        if not verdict.publishable:
            raise PublishError(
                f"view {view.name!r} version {built.version} is not published: "
                + "; ".join(verdict.problems),
                hint="fix the master dataset (or the Spark conf that skips files), then run "
                "the batch again; the published version keeps serving",
            )
        for line in verdict.warnings:
            progress(f"{view.name} v{built.version}: warning: {line}")
        lease.check()
        pub = store.publish(view, built)
    t = built.timings
    progress(
        f"{view.name} v{built.version}: published {built.rows} rows, cutoff {built.cutoff}, "
        f"{t['total_s']:.1f}s"
    )
    rt = store.realtime_record(view)
    if rt is not None and rt.covers_from is not None and built.cutoff < rt.covers_from:
        progress(
            f"{view.name} v{built.version}: warning: its real-time table was rebuilt by its "
            f"source job and holds the epochs from {rt.covers_from} ({utc(rt.covers_from)}) on:"
            " queries answer 503 until a batch reaches it; run the batch again once the source"
            " has archived that epoch"
        )
    return BatchResult(
        view.name, built.version, built.cutoff, built.rows, int(t["events"]), dict(t), pub
    )


def collect_and_purge(
    store: Store, view: View, progress: Callable[[str], None] = log.info
) -> tuple[list[int], int]:
    """After a publish: drop versions beyond ``retain_versions`` and purge real-time rows
    that every retained version covers. Returns (collected versions, purged rows).

    The floor is recorded in the catalog before any row goes
    (:meth:`Store.raise_purge_floor`); versions building meanwhile do not hold it back.
    """
    dropped = store.collect_garbage(view, view.retain_versions)
    if dropped:
        progress(f"{view.name}: collected versions {dropped}")
    # Rows a rollback could still need (epochs >= the oldest retained cutoff) are kept.
    floor = store.retained_min_cutoff(view)
    if floor is not None:
        floor = store.raise_purge_floor(view, floor)
    purged = store.purge_realtime(view, floor) if floor is not None else 0
    if purged:
        progress(f"{view.name}: purged {purged} real-time rows of epochs < {floor}")
    return dropped, purged


def run_batch(
    spark: SparkSession,
    settings: Settings,
    catalog: ViewCatalog,
    views: list[str] | None = None,
    *,
    cutoff: int | None = None,
    progress: Callable[[str], None] = log.info,
    incremental: bool | None = None,
) -> list[BatchResult]:
    """Recompute and publish each named view (all by default), then collect garbage.
    ``incremental``: see :func:`build_view` (default ``[batch] incremental``).

    ``cutoff`` (default: each source's complete cutoff when the run starts) is the same for
    every view of a source, and so is the read: the views of a source share one read and
    dedup of it (:class:`SourceReads`), each view still built, checked and published on its
    own."""
    chosen = [catalog.view(v) for v in views] if views else list(catalog.views.values())
    # One cutoff per source, taken before the first build: the views of a source answer
    # for the same events, however long the builds take.
    cuts: dict[str, int] = {}
    for view in chosen:
        if view.source.name not in cuts:
            cuts[view.source.name] = resolve_cutoff(settings, view, cutoff)
    results = []
    with (
        open_store(settings.cassandra, catalog) as store,
        SourceReads(spark, settings, chosen) as reads,
    ):
        for view in chosen:
            cut = cuts[view.source.name]
            results.append(
                run_view(
                    spark,
                    settings,
                    store,
                    view,
                    cutoff=cut,
                    progress=progress,
                    incremental=incremental,
                    reads=reads,
                )
            )
            collect_and_purge(store, view, progress)
    return results
