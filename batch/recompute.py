"""``lamina batch run``: recompute views from the master dataset and publish new versions.

For each view: take the view's build lease (one build of a view at a time), pick the cutoff
(complete ingest epochs only, never older than the published one), read the master dataset up
to it, drop duplicate event ids, aggregate through :func:`engine.translate.aggregate`, write a
new version table with concurrent prepared inserts from the Spark tasks, reconcile it with
the real-time view on the epochs both cover (report stored per version), then publish it
with one conditional catalog write (:meth:`serving.store.Store.publish`). A crash before the
publish leaves the published version untouched (the half-built version stays ``building``
and its lease expires).

The purge and a build in flight: the purge floor does not wait for ``building`` versions.
Each purge records its floor in the catalog before it deletes, and no version below that
floor is ever published (:meth:`serving.store.Store.check_publishable`): a build that started
at an older cutoff and ends after a newer publish and its purge is refused at its publish,
instead of holding every purge back behind builds that may have died.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from batch.reconcile import Reconciliation, realtime_overlap, reconcile
from engine.schema import master_schema
from engine.translate import aggregate
from lamina.errors import PublishError
from lamina.master import (
    archive_dir,
    committed_imports,
    complete_cutoff,
    epoch_dirs,
    imports_dir,
    not_covered,
    stream_dir,
)
from lamina.schema import EVENT_TIME, INGEST_EPOCH
from lamina.settings import Settings
from lamina.views import View, ViewCatalog
from serving.schema import batch_table
from serving.store import BuildLease, Published, Store, Version, open_store, utc
from serving.writer import partition_writer, state_row

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


def read_master(spark: SparkSession, settings: Settings, view: View, cutoff: int) -> DataFrame:
    """Every event of the view's source with ingest epoch ``< cutoff``, one per event id.

    Reads the source job's archive and the committed imports
    (:func:`lamina.master.committed_imports`: never a part of an import), pruned to the
    epochs before the cutoff (and the legacy file-sink archive through its metadata log,
    when present). Call it after choosing ``cutoff``: an import committed since then has an
    epoch at or after it (see "Imports" in :mod:`lamina.master`).
    """
    schema = master_schema(view.source)
    parts: list[DataFrame] = []
    stream = stream_dir(settings, view.source)
    if (stream / "_spark_metadata").exists():
        parts.append(spark.read.schema(schema).parquet(str(stream)))
    archived = [
        str(d) for e, d in epoch_dirs(archive_dir(settings, view.source)).items() if e < cutoff
    ]
    imported = [
        str(f)
        for e, files in committed_imports(settings, view.source).items()
        if e < cutoff
        for f in files
    ]
    for root, paths in (
        (archive_dir(settings, view.source), archived),
        (imports_dir(settings, view.source), imported),
    ):
        if paths:
            # ``ingest_epoch`` from the paths (``<root>/ingest_epoch=<E>/...``).
            parts.append(spark.read.schema(schema).option("basePath", str(root)).parquet(*paths))
    if not parts:
        return spark.createDataFrame([], schema)
    df = parts[0]
    for p in parts[1:]:
        df = df.unionByName(p)
    df = df.where(F.col(INGEST_EPOCH) < F.lit(cutoff))
    return first_copies(df, view.source.event_id)


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
    whatever the files' order; redeliveries by producer retries or replays share the id)."""
    columns = events.columns
    rest = [c for c in columns if c not in FIRST_COPY_ORDER and c != event_id]
    first = F.min(F.struct(*FIRST_COPY_ORDER, *rest)).alias("_first")
    return (
        events.groupBy(event_id)
        .agg(first)
        .select(event_id, *(F.col(f"_first.{c}").alias(c) for c in (*FIRST_COPY_ORDER, *rest)))
        .select(*columns)
    )


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
) -> Version:
    """Recompute one view into a new, unpublished version (state ``ready``), with its
    reconciliation against the real-time view stored (:func:`reconcile_version`).

    Holds the view's build lease (``lease``, or its own: :meth:`Store.build_lease`), so a
    second build of the view meanwhile is refused with :class:`ConflictError`. The cutoff is
    checked by :func:`check_cutoff`; an older one than the published is let through (a
    from-scratch recompute: validation and the publish decide).

    Raises; a failed build is marked ``failed`` and the published version stays as it was.
    """
    if lease is None:
        with store.build_lease(view) as own:
            return build_view(
                spark, settings, store, view, cutoff=cutoff, progress=progress, lease=own
            )
    t0 = time.monotonic()
    cut = check_cutoff(settings, store, view, cutoff, allow_older_cutoff=True)
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
    version = store.begin_version(view, cut)
    timings: dict[str, float] = {}
    try:
        events = read_master(spark, settings, view, cut).select(
            *view.source.fields, EVENT_TIME, INGEST_EPOCH, "topic"
        )
        events.cache()
        n_events = events.count()
        timings["events"] = n_events
        timings["read_s"] = round(time.monotonic() - t0, 3)
        progress(f"{view.name} v{version}: {n_events} events before cutoff {cut}; aggregating")
        agg = aggregate(events, view)
        writer = partition_writer(
            settings.cassandra,
            view,
            batch_table(view, version),
            settings.pipeline.write_concurrency,
        )
        t1 = time.monotonic()
        rows = int(agg.rdd.mapPartitions(writer).sum())
        timings["aggregate_write_s"] = round(time.monotonic() - t1, 3)
        t2 = time.monotonic()
        report = reconcile_version(store, view, version, cut, events)
        timings["reconcile_s"] = round(time.monotonic() - t2, 3)
        events.unpersist()
        progress(
            f"{view.name} v{version}: reconciled {report.cells} cells with the real-time view "
            f"(epochs {report.epoch_from}..{cut}): {report.diverging} diverging"
        )
        lease.check()  # another build may hold the view: this one is not to be published
    except BaseException:
        store.finish_version(view, version, "failed", 0, timings)
        raise
    timings["total_s"] = round(time.monotonic() - t0, 3)
    store.finish_version(view, version, "ready", rows, timings)
    built = store.version(view, version)
    assert built is not None  # begin_version wrote it
    return built


def reconcile_version(
    store: Store, view: View, version: int, cutoff: int, events: DataFrame
) -> Reconciliation:
    """Compare version ``version`` with the real-time view where both cover, store the report.

    ``events`` are the master dataset's events before ``cutoff`` with their ``ingest_epoch``
    and ``topic``. Only events that came through Kafka (``topic`` set) are compared: imported
    files never reach the speed layer. The overlap is ``[first real-time epoch still present,
    cutoff)``; its events are aggregated by :func:`engine.translate.aggregate` (the same
    translation the version and the speed layer use) and streamed to the driver, where
    :func:`batch.reconcile.reconcile` compares them with the fold of the real-time rows.
    """
    realtime = realtime_overlap(view, store.realtime_before(view, cutoff))
    cells: Iterable[tuple[tuple[Any, ...], int, tuple[Any, ...]]] = ()
    if realtime.first_epoch is not None:
        overlap = events.where(
            F.col("topic").isNotNull() & (F.col(INGEST_EPOCH) >= F.lit(realtime.first_epoch))
        )
        cells = (
            (tuple(r[k] for k in view.keys), r["bucket"], state_row(view, r))
            for r in aggregate(overlap, view).toLocalIterator()
        )
    report = reconcile(view, version, cutoff, realtime, cells)
    store.save_reconciliation(view, version, report.to_dict())
    return report


def run_view(
    spark: SparkSession,
    settings: Settings,
    store: Store,
    view: View,
    *,
    cutoff: int | None = None,
    progress: Callable[[str], None] = log.info,
) -> BatchResult:
    """Recompute and publish one view, holding its build lease throughout. Raises; the
    published version stays as it was. A cutoff older than the published one is refused
    before the build (and, should one be published meanwhile, at the publish): going back is
    a rollback (:meth:`Store.rollback`)."""
    with store.build_lease(view, "lamina batch run") as lease:
        cut = check_cutoff(settings, store, view, cutoff)
        built = build_view(spark, settings, store, view, cutoff=cut, progress=progress, lease=lease)
        lease.check()
        pub = store.publish(view, built)
    t = built.timings
    progress(
        f"{view.name} v{built.version}: published {built.rows} rows, cutoff {built.cutoff}, "
        f"{t['total_s']:.1f}s"
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
) -> list[BatchResult]:
    """Recompute and publish each named view (all by default), then collect garbage.

    ``cutoff`` (default: each source's complete cutoff when the run starts) is the same for
    every view of a source."""
    chosen = [catalog.view(v) for v in views] if views else list(catalog.views.values())
    # One cutoff per source, taken before the first build: the views of a source answer
    # for the same events, however long the builds take.
    cuts: dict[str, int] = {}
    for view in chosen:
        if view.source.name not in cuts:
            cuts[view.source.name] = resolve_cutoff(settings, view, cutoff)
    results = []
    with open_store(settings.cassandra, catalog) as store:
        for view in chosen:
            cut = cuts[view.source.name]
            results.append(run_view(spark, settings, store, view, cutoff=cut, progress=progress))
            collect_and_purge(store, view, progress)
    return results
