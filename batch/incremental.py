"""Incremental batch builds: a new version as the published version ⊕ the newly complete epochs.

Opt-in (``[batch] incremental = true``, or ``lamina batch run --incremental``); the default
stays the full recompute of :func:`batch.recompute.build_view`, and every build that is not
provably equal to a full recompute is one (:func:`plan_build` says which and why; the
version's report stores it under ``build``, its timings say ``incremental`` 0 or 1).

**The state.** A build made with the option on keeps the rows it wrote, the aggregated
monoid states per (key, bucket) exactly as :func:`engine.translate.aggregate` produced them
(sums of longs as ``decimal(38,0)``, sketches as DataSketches bytes), as Parquet under
``<master_dir>/_batch_state/<keyspace>/<view>/v<N>/rows/``, next to the master dataset
(reading the version table back from Cassandra would be slower than a recompute). The
record ``_state.json`` beside it is written last, once the version passed its self-check:
without it the state does not exist. It records what the state stands for: keyspace,
version, cutoff, definition hash, the source's schema record, the master dataset's files of
the epochs below the cutoff (:func:`listing`: count, bytes, a digest of every file's path,
size and modification time), the events, the oversize keys, the rows, and how many
incremental builds in a row led to it (``chain``). States of versions that can no longer be
published (collected, failed) are removed by the next build of the view
(:func:`prune_states`).

**The build** (:func:`build_incremental`), with the base ``B`` = the published version at
cutoff ``Cb`` and the new cutoff ``C``:

1. read the epochs ``[Cb, C)`` of the archive and the imports and keep each event id's
   first copy among them, by the full build's dedup (:func:`batch.recompute.deduplicate`:
   the view's columns only; several views of a source built from the same base cutoff in
   one run share the read, :class:`batch.recompute.SourceReads`);
2. dedup across the boundary: the batch keeps an id's first copy by
   :data:`batch.recompute.FIRST_COPY_ORDER`, whose first term is the ingest epoch, so a copy
   in a new epoch is never first when an epoch below ``Cb`` holds the id (a re-send): it is
   dropped. Which ids those are: a left-semi join of the event-id column alone of the
   epochs below ``Cb`` (Parquet column pruning) against the new ids, broadcast when there
   are at most :data:`BROADCAST_IDS` of them (the old ids are then scanned, never
   shuffled). Keeping a set of ids per version instead would cost a copy of the id column
   at every build and read the same bytes; the scan is what it measured (bench/README.md);
3. aggregate the events left (:func:`engine.translate.aggregate`), union them with ``B``'s
   state rows, and merge per (key, bucket) with the monoids' ``plus`` in Spark
   (:func:`engine.translate.merge_states`: sums, min, max, (sum, count) and the
   DataSketches union / merge, as :mod:`lamina.monoids` does for the speed layer and
   serving). A late event (old event time, new ingest epoch) merges into its old bucket
   cell like any other. The rows are partitioned by the view's keys before the merge, so
   the merge and the writer share one exchange (as :func:`batch.recompute.write_input`);
4. write every merged row into the new version table (a version is a whole table: the
   publish cost is that of a full build) and the state of the new version.

So the version equals a full recompute at ``C``: the same events (every event id once, its
first copy) aggregated by the same monoids, counts, sums of longs, min and max exactly,
sums of doubles up to the order of addition (as between two full builds), the sketches as
mergeable sketches (an HLL union, a KLL merge: within their stated error, exact in their
exact ranges; ``tests/integration/test_incremental.py`` checks it cell for cell).

**When it is a full build instead** (each reason is said): the option is off; an
aggregation has no Spark merge (:func:`engine.translate.mergeable`; all of today's have
one); the legacy file-sink archive exists (its files are not listed per epoch); nothing is
published; the published version was built under another definition hash, or has no
state (built with the option off, by an older Lamina, or its state was removed), or a state
of another keyspace, version or cutoff, or of another :data:`STATE_FORMAT` (bumped when the
translation of a view changes); the source's schema record changed (``lamina master
accept-schema``); the new cutoff is older than the base's; ``[batch] full_every``
incremental builds were made in a row; **or any file of an epoch below the base's cutoff
differs** from the listing the base recorded: a record archived into an epoch already
declared complete (``past_complete``), an import committed below the cutoff (``lamina
master import`` cannot: it takes an epoch at or after every cutoff a batch can have taken,
see :mod:`lamina.master`; :func:`lamina.master.write_epoch` for tests and benchmarks and the
files of pre-manifest imports can), a replaced, removed or added file (Lamina never purges
the master dataset; an operator's deletion shows here). The listing is taken when the build
starts and stored with the new state; a change during the build shows at the next one.

**The self-check of an incremental version** (stored like a full build's, ``lamina batch
report``): for the new epochs ``[Cb, C)``, the rows Spark read against the footers (listed
again at the end), rows without an event id, and the rows the dedup consumed; for the
epochs below ``Cb``: their files are still exactly those the base was built from (listed
again at the end), and the base passed its own self-check over them when it was built. It
does not re-read the old epochs' rows: a file that rots in place without a change of size
or modification time is not seen (a full build's footer check would catch only a file
whose footer fails). The periodic full build (``full_every``) re-checks everything.

**The reconciliation** of an incremental version compares the new epochs only: the batch's
events of ``[max(Cb, first real-time epoch), C)`` (after the cross-boundary dedup, i.e. the
events a full build counts there) with the real-time rows of those epochs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from batch.reconcile import judge, self_check
from engine.progress import watched
from engine.translate import aggregate, key_fits, merge_states, mergeable
from lamina.files import read_json, write_json_atomic
from lamina.master import (
    archive_dir,
    epoch_dirs,
    footer_rows,
    imports_dir,
    source_dir,
    stream_dir,
)
from lamina.progress import Progress, as_progress
from lamina.settings import Settings
from lamina.views import Source, View
from serving.schema import batch_index_table, batch_table
from serving.store import PUBLISHABLE, BuildLease, Store, Version
from serving.writer import partition_writer

if TYPE_CHECKING:
    from batch.recompute import SourceReads
    from batch.reconcile import Reconciliation, SelfCheck, Verdict

log = logging.getLogger(__name__)

STATE_FORMAT = 1
"""Version of the stored state: bump it when a view's translation into states changes
(:mod:`engine.translate`), so that no build merges states of the old translation."""

STATE_RECORD = "_state.json"
ROWS = "rows"

BROADCAST_IDS = 2_000_000
"""Up to this many new event ids, the old epochs' ids are matched against a broadcast copy
of them (no shuffle of the old ids); beyond, Spark plans the join itself."""


def state_root(settings: Settings, view: View) -> Path:
    """Where the states of ``view``'s versions of this keyspace live."""
    return settings.master_dir / "_batch_state" / settings.cassandra.keyspace / view.name


def state_dir(settings: Settings, view: View, version: int) -> Path:
    return state_root(settings, view) / f"v{version}"


@dataclass(frozen=True)
class Listing:
    """The master dataset's files of the epochs below a cutoff (archive and imports, every
    file and manifest in their epoch directories): how many, their bytes, and a digest of
    each one's path, size and modification time."""

    files: int
    bytes: int
    digest: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def listing(settings: Settings, source: Source, before: int) -> Listing:
    """:class:`Listing` of ``source``'s epochs ``< before`` (stat calls only, no reads)."""
    h = hashlib.sha256()
    files = size = 0
    top = source_dir(settings, source)
    for root in (archive_dir(settings, source), imports_dir(settings, source)):
        for epoch, d in sorted(epoch_dirs(root).items()):
            if epoch >= before:
                continue
            for entry in _walk(d):
                st = entry.stat()
                files += 1
                size += st.st_size
                h.update(f"{entry.relative_to(top)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return Listing(files, size, h.hexdigest())


def _walk(d: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(d):
        dirnames.sort()
        for name in sorted(filenames):
            yield Path(dirpath) / name


def schema_record(settings: Settings, source: Source) -> str:
    """A digest of the source's schema record (``_schema.json``: the definition its master
    dataset is written under, with the accepted earlier ones)."""
    path = source_dir(settings, source) / "_schema.json"
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return ""


@dataclass(frozen=True)
class State:
    """The record of a version's stored state (``_state.json``)."""

    format: int
    keyspace: str
    view: str
    version: int
    cutoff: int
    definition_hash: str
    schema_record: str
    files: Listing
    events: int
    oversize_keys: int
    rows: int
    chain: int
    """Incremental builds in a row that led to this state (0: a full build)."""
    kind: str
    built_at: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def read(cls, path: Path) -> State | None:
        """The record in ``path``, or ``None`` if it is missing or not one of this format."""
        data = read_json(path)
        if data is None or data.get("format") != STATE_FORMAT:
            return None
        try:
            return cls(**{**data, "files": Listing(**data["files"])})
        except (TypeError, KeyError):
            return None


@dataclass(frozen=True)
class Plan:
    """How a build of a view is made (:func:`plan_build`)."""

    kind: str  # full | incremental
    why: str
    base: State | None
    """The state an incremental build merges into (``None``: a full build)."""
    keep_state: bool
    """Whether the build stores its state (the option is on and the view can merge)."""
    files: Listing | None
    """The listing of the epochs below the new cutoff, taken when the build was planned
    (stored with the new state)."""
    schema_record: str

    def describe(self) -> dict[str, Any]:
        """The ``build`` entry of the version's report."""
        out: dict[str, Any] = {"kind": self.kind, "why": self.why}
        if self.base is not None:
            out |= {
                "base_version": self.base.version,
                "base_cutoff": self.base.cutoff,
                "chain": self.base.chain + 1,
            }
        return out


def plan_build(
    settings: Settings, store: Store, view: View, cutoff: int, *, incremental: bool
) -> Plan:
    """Whether the build of ``view`` at ``cutoff`` is incremental, and why (see the module
    doc for every reason it is not). Removes the states of versions that can no longer be
    published first (:func:`prune_states`). Call it holding the view's build lease."""
    source = view.source
    record = schema_record(settings, source)

    def full(why: str, keep: bool = True) -> Plan:
        files = listing(settings, source, cutoff) if keep else None
        return Plan("full", why, None, keep, files, record)

    if not incremental:
        return full("incremental builds are off ([batch] incremental)", keep=False)
    prune_states(settings, store, view)
    cannot = mergeable(view)
    if cannot:
        return full(f"aggregations {', '.join(cannot)} cannot be merged", keep=False)
    if (stream_dir(settings, source) / "_spark_metadata").exists():
        return full("the source has a legacy file-sink archive (not listed per epoch)", False)
    pub = store.published(view)
    if pub is None:
        return full("no version is published yet")
    if pub.definition_hash != view.definition_hash:
        return full(f"the published version {pub.version} was built under another definition")
    base = State.read(state_dir(settings, view, pub.version) / STATE_RECORD)
    if base is None or not (state_dir(settings, view, pub.version) / ROWS).is_dir():
        return full(
            f"the published version {pub.version} has no stored state (built with incremental "
            "builds off, or by an older Lamina)"
        )
    expected = (settings.cassandra.keyspace, view.name, pub.version, pub.cutoff)
    if (base.keyspace, base.view, base.version, base.cutoff) != expected:
        return full(f"the state of version {pub.version} is of another build")
    if base.definition_hash != view.definition_hash:
        return full(f"the state of version {pub.version} is of another definition")
    if base.schema_record != record:
        return full(
            f"the source's schema record changed since version {pub.version} was built "
            "(lamina master accept-schema)"
        )
    if cutoff < base.cutoff:
        return full(f"the cutoff {cutoff} is older than version {pub.version}'s {base.cutoff}")
    every = settings.batch.full_every
    if every and base.chain >= every:
        return full(
            f"periodic full recompute: {base.chain} incremental builds in a row "
            f"([batch] full_every = {every})"
        )
    now = listing(settings, source, base.cutoff)
    if now != base.files:
        return full(
            f"the master dataset's files of the epochs below version {pub.version}'s cutoff "
            f"{base.cutoff} changed since it was built ({base.files.files} files, "
            f"{base.files.bytes} bytes then; {now.files}, {now.bytes} now): events archived "
            "or imported below the cutoff, or files replaced or removed"
        )
    files = now if cutoff == base.cutoff else listing(settings, source, cutoff)
    why = f"version {pub.version} (cutoff {base.cutoff}) + the epochs up to {cutoff}"
    return Plan("incremental", why, base, True, files, record)


def prune_states(settings: Settings, store: Store, view: View) -> list[int]:
    """Remove the states of ``view``'s versions that can no longer be published (collected,
    failed, unknown to the store); returns their versions. Call it holding the build lease:
    no other build of the view is writing a state."""
    root = state_root(settings, view)
    if not root.is_dir():
        return []
    keep = {v.version for v in store.versions(view) if v.state in PUBLISHABLE}
    removed = []
    for d in sorted(root.iterdir()):
        n = d.name[1:]
        if d.name.startswith("v") and n.isdigit() and int(n) in keep:
            continue
        shutil.rmtree(d, ignore_errors=True)
        if n.isdigit():
            removed.append(int(n))
    return removed


def write_version(
    agg: DataFrame,
    settings: Settings,
    view: View,
    version: int,
    state: Path | None,
    progress: Progress | None = None,
) -> int:
    """Write the rows ``agg`` of ``view``'s ``version`` from the Spark tasks, into its table
    and its key index; with ``state``, also keep them as Parquet in ``state/rows`` (the rows
    are computed once: persisted for the two writes). Returns the rows written.

    ``progress``: the write is one task of it, counting the Spark tasks of the write done
    of all, with the rows written so far as its status (live output only)."""
    p = as_progress(progress)
    writer = partition_writer(
        settings.cassandra,
        view,
        batch_table(view, version),
        settings.pipeline.write_concurrency,
        index_table=batch_index_table(view, version),
    )
    spark = agg.sparkSession
    written = spark.sparkContext.accumulator(0)

    def counted(rows: Iterable[Any]) -> Iterator[int]:
        for n in writer(rows):
            written.add(n)
            yield n

    def write() -> int:
        return int(agg.rdd.mapPartitions(counted).sum())

    with p.task(f"{view.name} v{version}: aggregating and writing rows") as task:
        if state is None:
            return watched(spark, task, write, lambda: f"{written.value} rows written", live=p.live)
        drop_state(state)
        agg.persist(StorageLevel.MEMORY_AND_DISK)
        try:
            agg.write.parquet(str(state / ROWS))
            return watched(spark, task, write, lambda: f"{written.value} rows written", live=p.live)
        finally:
            agg.unpersist()


def drop_state(state: Path) -> None:
    shutil.rmtree(state, ignore_errors=True)


def commit_state(
    settings: Settings,
    view: View,
    version: int,
    cutoff: int,
    plan: Plan,
    *,
    events: int,
    oversize: int,
    rows: int,
) -> None:
    """Record the state of a version that passed its self-check (the commit point)."""
    assert plan.files is not None
    record = State(
        STATE_FORMAT,
        settings.cassandra.keyspace,
        view.name,
        version,
        cutoff,
        view.definition_hash,
        plan.schema_record,
        plan.files,
        events,
        oversize,
        rows,
        0 if plan.base is None else plan.base.chain + 1,
        plan.kind,
        time.time(),
    )
    write_json_atomic(state_dir(settings, view, version) / STATE_RECORD, record.to_dict())


def build_incremental(
    spark: SparkSession,
    settings: Settings,
    store: Store,
    view: View,
    cutoff: int,
    plan: Plan,
    *,
    progress: Progress,
    lease: BuildLease,
    started: float,
    reads: SourceReads,
) -> Version:
    """Build a new version of ``view`` at ``cutoff`` as ``plan.base`` ⊕ the epochs from the
    base's cutoff (see the module doc), with its report and state; the contract of
    :func:`batch.recompute.build_view`, which calls it. The new epochs are read and
    deduplicated by ``reads`` (:func:`batch.recompute.deduplicate`, the full build's dedup,
    shared with the other views of the source built from the same base cutoff)."""
    # batch.recompute imports this module; its helpers are taken when a build runs.
    from batch.recompute import master_read, reconcile_version, write_tasks

    base = plan.base
    assert base is not None
    eid = view.source.event_id
    version = store.begin_version(view, cutoff)
    state = state_dir(settings, view, version)
    timings: dict[str, float] = {"incremental": 1.0, "base_version": base.version}
    progress(f"{view.name} v{version}: incremental build: {plan.why}")
    events: DataFrame | None = None
    try:
        with progress.task(
            f"{view.name} v{version}: reading the epochs since version "
            f"{base.version} and deduplicating"
        ):
            deduped, used = reads.dedup(view, cutoff, since=base.cutoff)
        timings["read_shared"] = float(used > 0)
        timings["read_views"] = len(deduped.oversize)
        n_fresh = deduped.count
        fresh = deduped.events_of(view)
        old = master_read(spark, settings, view, base.cutoff).epochs
        parallelism = spark.sparkContext.defaultParallelism
        events = fresh
        if old is not None and n_fresh:
            ids = fresh.select(eid)
            small = n_fresh <= BROADCAST_IDS
            resent = old.select(eid).join(F.broadcast(ids) if small else ids, eid, "left_semi")
            # At most the new ids: broadcast too when they are, else both sides go through
            # one shuffle sized from them (write_tasks).
            resent = resent.repartition(write_tasks(n_fresh, parallelism), eid).distinct()
            if small:
                events = events.join(F.broadcast(resent), eid, "left_anti")
            else:
                events = events.repartition(write_tasks(n_fresh, parallelism), eid).join(
                    resent, eid, "left_anti"
                )
        events = events.cache()
        t_resent = time.monotonic()
        row = events.agg(F.count(F.lit(1)), F.count(F.when(~key_fits(view), 1))).first()
        n_new, oversize = (int(row[0]), int(row[1])) if row else (0, 0)
        timings["resent_check_s"] = round(time.monotonic() - t_resent, 3)
        timings |= {
            "events": base.events + n_new,
            "new_events": n_new,
            "resent_dropped": n_fresh - n_new,
            "repeated_ids": deduped.repeated,
            "oversize_keys": base.oversize_keys + oversize,
            "read_s": round(time.monotonic() - started, 3),
        }
        progress(
            f"{view.name} v{version}: {n_new} new events in epochs {base.cutoff}..{cutoff} "
            f"({n_fresh - n_new} re-sends of older events dropped); merging into version "
            f"{base.version}"
        )
        tasks = write_tasks(base.events + n_new, parallelism)
        prev = spark.read.parquet(str(state_dir(settings, view, base.version) / ROWS))
        merged = merge_input(prev, events, view, tasks)
        t1 = time.monotonic()
        rows = write_version(merged, settings, view, version, state, progress)
        timings["write_tasks"] = tasks
        timings["aggregate_write_s"] = round(time.monotonic() - t1, 3)
        t2 = time.monotonic()
        with progress.task(f"{view.name} v{version}: reconciling with the real-time view"):
            report: Reconciliation = reconcile_version(
                store, view, version, cutoff, events, from_epoch=base.cutoff
            )
        timings["reconcile_s"] = round(time.monotonic() - t2, 3)
        footers = {
            e: f for e, f in footer_rows(settings, view.source, cutoff).items() if e >= base.cutoff
        }
        check = self_check(
            footers,
            deduped.read_rows,
            n_fresh,
            event_id=eid,
            legacy_rows=deduped.legacy_rows,
            deduped_rows=deduped.consumed,
        )
        now = listing(settings, view.source, base.cutoff)  # listed again, at the end
        if now != base.files:
            check = dataclasses.replace(
                check,
                problems=[
                    *check.problems,
                    f"the files of the epochs below the base's cutoff {base.cutoff} changed "
                    f"during the build ({base.files.files} files when version {base.version} "
                    f"was built, {now.files} now)",
                ],
            )
        verdict = conclude_build(
            settings,
            store,
            view,
            version,
            cutoff,
            plan,
            report,
            check,
            timings,
            checked_from=t2,
            progress=progress,
            lease=lease,
            state=state,
            summary=(
                f"reconciled {report.cells} cells of the new epochs with the real-time view: "
                f"{report.diverging} diverging; self-check "
                f"{'passed' if check.ok else 'FAILED'} ({check.read_rows} new rows read, "
                f"footers {check.footer_rows}; older files as version {base.version} read "
                f"them: {'yes' if now == base.files else 'NO'})"
            ),
            events=int(timings["events"]),
            oversize=int(timings["oversize_keys"]),
            rows=rows,
        )
    except BaseException:
        store.finish_version(view, version, "failed", 0, timings)
        drop_state(state)
        raise
    finally:
        if events is not None:
            events.unpersist()
    return finish_build(store, view, version, verdict, rows, timings, started)


def merge_input(prev: DataFrame, events: DataFrame, view: View, tasks: int) -> DataFrame:
    """The rows of an incremental version as its writer wants them (as
    :func:`batch.recompute.write_input`): the base's state rows ``prev`` merged per (key,
    bucket) with the aggregated new ``events`` (:func:`engine.translate.merge_states`), in
    ``tasks`` partitions by the view's keys (sized by the caller from every event,
    :func:`batch.recompute.write_tasks`), sorted by key within each.

    The new events are aggregated with Spark's map-side combine: their exchange carries
    cells already folded within each input task, not events (measured: on 3M rows, a
    combine then 2 shuffle tasks took 4.3 s; a raw shuffle into 3 sized tasks 6.0 s; AQE
    coalescing 200 shuffle partitions 18.0 s; bench/README.md)."""
    keys = [F.col(k) for k in view.keys]
    both = prev.unionByName(aggregate(events, view)).repartition(tasks, *keys)
    return merge_states(both, view).sortWithinPartitions(*view.keys)


def conclude_build(
    settings: Settings,
    store: Store,
    view: View,
    version: int,
    cutoff: int,
    plan: Plan,
    report: Reconciliation,
    check: SelfCheck,
    timings: dict[str, float],
    *,
    checked_from: float,
    progress: Callable[[str], None],
    lease: BuildLease,
    state: Path | None,
    summary: str,
    events: int,
    oversize: int,
    rows: int,
) -> Verdict:
    """The end of a build, full or incremental, once its rows are written: judge the
    verdict (:func:`batch.reconcile.judge`, ``[airflow] max_divergence``), store the report
    (reconciliation, self-check, verdict, ``plan``'s ``build`` entry), time the self-check
    (``self_check_s``: since ``checked_from`` less ``reconcile_s``), say ``summary`` and the
    verdict through ``progress``, log its problems and warnings, check the lease (raises if
    another build holds the view), and record the state (``state``, when kept) of a
    publishable version (:func:`commit_state`). Returns the verdict."""
    verdict = judge(report, check, settings.airflow.max_divergence)
    store.save_reconciliation(
        view,
        version,
        report.to_dict()
        | {
            "self_check": check.to_dict(),
            "verdict": verdict.to_dict(),
            "build": plan.describe(),
        },
    )
    timings["self_check_s"] = round(time.monotonic() - checked_from - timings["reconcile_s"], 3)
    progress(f"{view.name} v{version}: {summary}; diverged: {verdict.diverged}")
    for line in [*verdict.problems, *verdict.warnings]:
        log.warning("%s v%s: %s", view.name, version, line)
    lease.check()  # another build may hold the view: this one is not to be published
    if state is not None and verdict.publishable:
        commit_state(
            settings, view, version, cutoff, plan, events=events, oversize=oversize, rows=rows
        )
    return verdict


def finish_build(
    store: Store,
    view: View,
    version: int,
    verdict: Verdict,
    rows: int,
    timings: dict[str, float],
    started: float,
) -> Version:
    """Mark a concluded build ``ready``, or ``failed`` when its verdict refuses it: a batch
    that fails its self-check is never publishable, not even by a rollback, and the next GC
    collects it (it must not crowd the retained versions out). Returns the version."""
    timings["total_s"] = round(time.monotonic() - started, 3)
    store.finish_version(view, version, "ready" if verdict.publishable else "failed", rows, timings)
    built = store.version(view, version)
    assert built is not None  # begin_version wrote it
    return built
