"""One micro-batch of a source job: every output of a source from one Kafka read and one parse.

A source job is one streaming query per source (``source-<name>``). Spark reads the new
Kafka records and parses them natively (:func:`engine.kafka.parse_records`); the
``foreachBatch`` function :class:`SourceBatches` then, on the cached micro-batch:

1. judges every valid record against the source's duplicate index (:mod:`speed.dedup`),
   once for all views; duplicates past the horizon and reordered copies are listed in
   ``<topic>.duplicates`` and counted;
2. aggregates the kept events per view into partial states per (key, bucket, ingest epoch)
   and folds them into the real-time tables (:mod:`speed.realtime`), exactly once per cell
   (this is what makes an event visible, so it goes first), while a second thread archives
   the valid records into the master dataset, files named by micro-batch id, renamed into
   place over any earlier attempt's: a replay rewrites, never adds (:mod:`lamina.master`);
3. writes the rejected records to ``<topic>.deadletters`` (at least once, keyed by origin;
   ``lamina deadletters`` shows each origin once);
4. records which ingest epochs the master dataset now holds whole, from the newest broker
   timestamp archived per partition (:mod:`speed.completeness`; epoch marks are read for
   that alone).

After a ``kill -9`` anywhere in there, Spark replays the micro-batch with the same offsets:
the archive files are replaced, the dead letters and listings may repeat (shown once), the
index is rebuilt from the archive of earlier micro-batches (so the verdicts repeat), and the
cells that already hold the micro-batch are skipped. Every output is exactly-once.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from pyspark import InheritableThread, SparkContext, StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from engine.kafka import MARK, RAW, REASON
from engine.schema import master_schema
from engine.translate import aggregate
from lamina.errors import DataLossError, LaminaError
from lamina.files import read_json, write_json_atomic
from lamina.master import (
    archive_batch,
    archive_dir,
    archive_file,
    archive_prefix,
    committed_imports,
    epoch_dirs,
    imports_dir,
    record_progress,
    recorded_complete,
    stream_dir,
)
from lamina.schema import INGEST_EPOCH, master_columns
from lamina.settings import Settings
from lamina.streams import (
    ARCHIVER,
    DEADLETTER_RAW_MAX,
    checkpoint_path,
    deadletter_topic,
    duplicates_topic,
    offsets_client,
    planned_offsets,
    source_report_file,
)
from lamina.views import Source, View
from serving.cassandra import shared_session
from serving.store import Store
from speed.completeness import advance, complete_before, newest_stamps
from speed.dedup import KEPT, LISTED, DedupIndex, Verdict
from speed.realtime import RealtimeCells, wait_out_outage

log = logging.getLogger(__name__)

H1, H2 = "_h1", "_h2"


def id_hashes(source: Source) -> list[Any]:
    """The two 64-bit hashes identifying an event id (see :mod:`speed.dedup`)."""
    col = F.col(source.event_id).cast("string")
    return [F.xxhash64(col).alias(H1), F.xxhash64(F.lit("lamina"), col).alias(H2)]


def _partial_states(events: DataFrame, view: View) -> list[Any]:
    """``view``'s partial states of ``events`` per (key, bucket, ingest epoch)."""
    return aggregate(events, view, extra_groups=[INGEST_EPOCH]).collect()


def _before(batch: int | None, first: int) -> bool:
    return batch is not None and batch < first


SINGLE_TASK_ROWS = 100_000
"""Micro-batches with at most this many valid records aggregate in one task."""

COUNTERS = (
    "records",
    "rejected",
    "archived",
    "duplicates",
    "beyond_horizon",
    "reordered",
    "lost",
    "past_complete",
    "epoch_marks",
)

FAILURES: dict[str, str] = {}
"""Why a source query of this process failed on purpose (a :class:`LaminaError` raised in its
micro-batch), by query name: Spark's own message would be a Python traceback."""


class Background:
    """Run ``work`` in a thread that inherits this one's Spark job group and properties (so
    stopping the query cancels its jobs too), its Spark jobs in the scheduler pool ``pool``
    (:data:`engine.session.POOLS`); :meth:`result` waits and returns what ``work`` returned,
    or raises what it raised. :attr:`seconds` is how long it ran."""

    def __init__(self, work: Callable[[], Any], pool: str | None = None) -> None:
        self.error: BaseException | None = None
        self.value: Any = None
        self.seconds = 0.0

        def run() -> None:
            t0 = time.monotonic()
            try:
                if pool is not None:
                    SparkContext.getOrCreate().setLocalProperty("spark.scheduler.pool", pool)
                self.value = work()
            except BaseException as exc:  # re-raised in the caller's thread
                self.error = exc
            self.seconds = round(time.monotonic() - t0, 4)

        self.thread = InheritableThread(target=run, daemon=True)
        self.thread.start()

    def result(self) -> Any:
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.value


class Laps:
    """Seconds spent per step of one micro-batch: ``lap(name)`` closes the current step."""

    def __init__(self) -> None:
        self.t0 = self.last = time.monotonic()
        self.timings: dict[str, float] = {}

    def __call__(self, name: str) -> None:
        now = time.monotonic()
        self.timings[name] = round(self.timings.get(name, 0.0) + now - self.last, 4)
        self.last = now


@dataclass
class SourceBatches:
    """The ``foreachBatch`` function of one source's query (see the module docstring)."""

    spark: SparkSession
    settings: Settings
    source: Source
    views: list[View]
    query: str
    index: DedupIndex | None = None
    cells: dict[str, RealtimeCells] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    last_batch: int = -1
    spent: dict[str, float] = field(default_factory=dict)
    """Seconds per step, summed over the micro-batches this process ran."""
    offsets_client: Any = None
    highs: dict[int, int] = field(default_factory=dict)
    """The newest broker timestamp (ms) archived per partition (:mod:`speed.completeness`)."""
    complete: int | None = None
    """The epoch the archiver last recorded every earlier epoch complete before."""

    def __post_init__(self) -> None:
        FAILURES.pop(self.query, None)  # a new run of the query: no failure yet

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        lap = Laps()
        batch.persist(StorageLevel.MEMORY_AND_DISK_DESER)
        try:
            if self.index is None:
                self._start(batch_id)
                lap("start")
            counts = self._run(batch, batch_id, lap)
            self._record_complete(batch_id)
        except LaminaError as exc:
            FAILURES[self.query] = str(exc)
            self._report_failure(batch_id, str(exc))
            raise
        finally:
            batch.unpersist()
        lap.timings["total"] = round(time.monotonic() - lap.t0, 4)
        self._report(batch_id, counts, lap.timings)

    # -- the steps --------------------------------------------------------------------

    def _run(self, batch: DataFrame, batch_id: int, lap: Laps) -> dict[str, int]:
        src = self.source
        meta = batch.select(
            F.col(REASON).isNull().alias("ok"),
            MARK,
            *id_hashes(src),
            INGEST_EPOCH,
            "partition",
            "offset",
            F.expr("unix_millis(timestamp)").alias("stamp_ms"),
        ).toArrow()
        lap("read_parse")
        counts = dict.fromkeys(COUNTERS, 0)
        counts["lost"] = self._lost(batch_id, meta)  # raises unless told to go on
        ok = meta.column("ok").to_numpy(zero_copy_only=False)
        mark = meta.column(MARK).to_numpy(zero_copy_only=False)
        counts["epoch_marks"] = int(mark.sum())
        counts["records"] = len(ok) - counts["epoch_marks"]
        counts["rejected"] = int((~ok & ~mark).sum())
        newest = newest_stamps(
            meta.column("partition").to_numpy(), meta.column("stamp_ms").to_numpy()
        )
        valid = batch.where(F.col(REASON).isNull())
        if ok.any():
            counts["archived"] = int(ok.sum())
            counts["past_complete"] = self._past_complete(meta.column(INGEST_EPOCH).to_numpy()[ok])
            dropped = self._dedup(meta.filter(pa.array(ok)), counts)
            lap("dedup")
            events = valid
            if len(dropped):
                gone = self.spark.createDataFrame(dropped)
                events = valid.join(F.broadcast(gone), ["partition", "offset"], "left_anti")
            if counts["archived"] <= SINGLE_TASK_ROWS:
                # One task, no shuffle: a small micro-batch's aggregation costs its fixed
                # overheads once (what bounds freshness), and leaves the other cores free.
                events = events.coalesce(1)
            # Every view's aggregation is submitted at once (their jobs take the free task
            # slots first: the views make events visible), then the archive, which runs on
            # the slots left; the cells are folded in as the aggregations complete. A replay
            # rewrites both.
            jobs = [Background(partial(_partial_states, events, v), "views") for v in self.views]
            archiving = Background(lambda: self._archive(valid, batch_id), "archive")
            try:
                for view, job in zip(self.views, jobs, strict=True):
                    rows = job.result()
                    job.value = None  # one view's partial states in memory at a time
                    lap(f"aggregate:{view.name}")
                    self.cells[view.name].apply(
                        rows, batch_id, retry_s=self.settings.cassandra.outage_retry_s
                    )
                    del rows
                    lap(f"write:{view.name}")
            except BaseException:
                for job in (*jobs, archiving):  # joined; the views' error is the one raised
                    job.thread.join()
                raise
            archiving.result()
            lap.timings["archive"] = archiving.seconds
            lap("archive_wait")
        if counts["rejected"]:
            self._deadletters(batch.where(F.col(REASON).isNotNull() & ~F.col(MARK)))
            lap("deadletters")
        self.highs = advance(self.highs, newest)  # everything read is archived now
        return counts

    def _past_complete(self, epochs: np.ndarray) -> int:
        """How many of the micro-batch's valid records (ingest ``epochs``) fall in epochs
        already recorded complete (see :mod:`speed.completeness`): archived, in the next
        batch, missing from answers until it publishes."""
        recorded = recorded_complete(self.settings, self.source, ARCHIVER)
        if recorded is None:
            return 0
        late = int((epochs < int(recorded)).sum())
        if late:
            log.warning(
                "source %s: %d record(s) read into epochs before %s, already recorded "
                "complete (a broker clock went backwards?): answers miss them until the "
                "next batch publishes",
                self.source.name,
                late,
                recorded,
            )
        return late

    def _record_complete(self, batch_id: int) -> None:
        """Record the epochs complete after micro-batch ``batch_id`` (never fewer than
        already recorded): those before the oldest epoch among the partitions' newest
        archived records, every partition of the topic counted (the micro-batch's offsets)."""
        partitions = planned_offsets(self.settings, self.query, batch_id)
        if not partitions:
            return
        done = complete_before(self.highs, partitions, self.settings.pipeline.epoch_seconds)
        if done is None or (self.complete is not None and done <= self.complete):
            return
        recorded = recorded_complete(self.settings, self.source, ARCHIVER)
        if recorded is not None and done <= int(recorded):
            self.complete = int(recorded)
            return
        views = [v.name for v in self.views]
        record_progress(self.settings, self.source, ARCHIVER, done, active=True, views=views)
        self.complete = done

    def _lost(self, batch_id: int, meta: pa.Table) -> int:
        """Records of this micro-batch's offset ranges that Kafka deleted (retention) before
        they were read: checked after the read, against the partitions' earliest offsets
        (offsets in a range that were read are not lost). Raises :class:`DataLossError`
        unless ``pipeline.fail_on_data_loss`` is off; returns how many were lost.

        An offset without a record (a transaction marker) inside a deleted range counts as
        lost too: the count is an upper bound, exact for non-transactional producers.
        """
        if batch_id == 0:
            return 0  # the first micro-batch starts at the earliest offsets
        start = planned_offsets(self.settings, self.query, batch_id - 1)
        end = planned_offsets(self.settings, self.query, batch_id)
        if start is None or end is None:
            log.warning(
                "source %s: micro-batch %d: no offsets of micro-batches %d/%d in the "
                "checkpoint; records deleted by Kafka before they were read are not checked",
                self.source.name,
                batch_id,
                batch_id - 1,
                batch_id,
            )
            return 0
        part = meta.column("partition").to_numpy()
        off = meta.column("offset").to_numpy()
        # A partition new since the previous micro-batch starts at offset 0. Where every
        # offset of a range was read, nothing is lost (the common case: no call to Kafka);
        # otherwise the range is checked against the partition's earliest offset now
        # (retention deletes a prefix, possibly while the range was being read).
        read_in = {
            p: int(((part == p) & (off >= start.get(p, 0)) & (off < hi)).sum())
            for p, hi in end.items()
        }
        unsure = [p for p, hi in end.items() if read_in[p] < hi - start.get(p, 0)]
        if not unsure:
            return 0
        earliest = self._earliest(unsure)
        gaps = []
        for p, hi in sorted(end.items()):
            lo = start.get(p, 0)
            gone = min(earliest.get(p, 0), hi)
            if p not in earliest or gone <= lo:
                continue
            read = int(((part == p) & (off >= lo) & (off < gone)).sum())
            if gone - lo - read > 0:
                gaps.append((p, lo, gone, gone - lo - read))
        lost = sum(n for *_, n in gaps)
        if lost and self.settings.pipeline.fail_on_data_loss:
            where = ", ".join(f"partition {p} offsets {lo}..{hi - 1}" for p, lo, hi, _ in gaps)
            raise DataLossError(
                f"source {self.source.name!r}: Kafka deleted {lost} record(s) of topic "
                f"{self.source.topic!r} before the job archived them ({where}); the job "
                "stops rather than leave them out of the master dataset",
                hint="re-send or `lamina master import` what is recoverable, then run once "
                "with pipeline.fail_on_data_loss = false (LAMINA_PIPELINE__FAIL_ON_DATA_LOSS"
                "=false) to go on past them (counted as lost); give the topic a retention "
                "(retention.ms) longer than the job may be down",
            )
        if lost:
            log.warning(
                "source %s: %d records deleted by Kafka before archived", self.source.name, lost
            )
        return lost

    def _earliest(self, partitions: list[int]) -> dict[int, int]:
        """Kafka's earliest offsets of ``partitions`` now (one client kept per job: with
        transactional producers, whose commit markers leave offsets without records, this
        is asked at every micro-batch)."""
        from kafka import TopicPartition

        if self.offsets_client is None:
            self.offsets_client = offsets_client(self.settings)
        tps = [TopicPartition(self.source.topic, p) for p in partitions]
        try:
            found = self.offsets_client.beginning_offsets(tps)
        except Exception:
            self.offsets_client.close()  # a fresh client next time
            self.offsets_client = None
            raise
        return {tp.partition: int(o) for tp, o in found.items()}

    def _deadletters(self, rejected: DataFrame) -> None:
        """Each rejected record to the dead-letter topic: reason, raw bytes (the first
        :data:`DEADLETTER_RAW_MAX` of them) and their whole size, origin, broker time."""
        size = F.length(F.col(RAW))
        raw = F.when(size > DEADLETTER_RAW_MAX, F.substring(RAW, 1, DEADLETTER_RAW_MAX))
        (
            rejected.select(
                F.concat_ws(":", "topic", "partition", "offset").alias("key"),
                F.to_json(
                    F.struct(
                        F.col(REASON).alias("reason"),
                        F.base64(raw.otherwise(F.col(RAW))).alias("raw_base64"),
                        size.alias("raw_size"),
                        "topic",
                        "partition",
                        "offset",
                        F.date_format("timestamp", "yyyy-MM-dd'T'HH:mm:ss.SSSXXX").alias(
                            "timestamp"
                        ),
                    )
                ).alias("value"),
            )
            .write.format("kafka")
            .options(**self.settings.kafka.spark_options())
            .option("topic", deadletter_topic(self.source))
            .save()
        )

    def _archive(self, valid: DataFrame, batch_id: int) -> None:
        """Write the micro-batch's valid events into the archive, replacing any earlier
        attempt's files of the same micro-batch (same offsets, hence same events)."""
        root = archive_dir(self.settings, self.source)
        staging = root / "_staging" / f"b{batch_id}"
        shutil.rmtree(staging, ignore_errors=True)
        columns = [c.name for c in master_columns(self.source)] + [INGEST_EPOCH]
        (
            valid.select(*columns)
            .write.mode("overwrite")
            .partitionBy(INGEST_EPOCH)
            .option("compression", "zstd")
            .parquet(str(staging))
        )
        prefix = archive_prefix(batch_id)
        for d in sorted(epoch_dirs(staging).values()):
            target = root / d.name
            target.mkdir(parents=True, exist_ok=True)
            for old in target.glob(prefix + "*"):
                old.unlink()
            files = sorted(p for p in d.iterdir() if p.suffix == ".parquet")
            for i, f in enumerate(files):
                os.replace(f, target / archive_file(batch_id, i))
        shutil.rmtree(staging, ignore_errors=True)

    def _dedup(self, meta: pa.Table, counts: dict[str, int]) -> pa.Table:
        """Judge the micro-batch's valid records; returns the ``(partition, offset)`` of
        those to drop. Listed copies go to ``<topic>.duplicates``."""
        assert self.index is not None
        epoch = meta.column(INGEST_EPOCH).to_numpy()
        part = meta.column("partition").to_numpy()
        off = meta.column("offset").to_numpy()
        order = np.lexsort((off, part, epoch))  # Kafka order (see speed.dedup)
        meta = meta.take(pa.array(order))
        verdict = self.index.judge(
            meta.column(H1).to_numpy(), meta.column(H2).to_numpy(), epoch[order]
        )
        self.index.advance(int(epoch.max()))
        self.index.evict()
        counts["duplicates"] = int((verdict == Verdict.DUPLICATE).sum())
        counts["beyond_horizon"] = int((verdict == Verdict.BEYOND_HORIZON).sum())
        counts["reordered"] = int((verdict == Verdict.REORDERED).sum())
        listed = np.isin(verdict, LISTED)
        if listed.any():
            self._list(meta.filter(pa.array(listed)), verdict[listed])
        drop = ~np.isin(verdict, KEPT)
        return meta.filter(pa.array(drop)).select(["partition", "offset"])

    def _list(self, meta: pa.Table, verdict: np.ndarray) -> None:
        """Record copies the speed layer may count differently from the batch layer."""
        from kafka import KafkaProducer

        horizon = self.settings.pipeline.dedup_horizon_s
        why = {
            Verdict.BEYOND_HORIZON: f"duplicate past the dedup horizon ({horizon} s): counted "
            "by the speed layer until the batch layer covers it",
            Verdict.REORDERED: "duplicate read before an earlier copy on another partition: "
            "may be counted twice until the batch layer covers it",
        }
        producer = KafkaProducer(**self.settings.kafka.client_config())
        try:
            for row, v in zip(meta.to_pylist(), verdict, strict=True):
                origin = f"{self.source.topic}:{row['partition']}:{row['offset']}"
                letter = {
                    "reason": why[Verdict(int(v))],
                    "topic": self.source.topic,
                    "partition": row["partition"],
                    "offset": row["offset"],
                    "ingest_epoch": row[INGEST_EPOCH],
                    "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                }
                producer.send(
                    duplicates_topic(self.source),
                    key=origin.encode(),
                    value=json.dumps(letter).encode(),
                )
            producer.flush()
        finally:
            producer.close()

    # -- startup ------------------------------------------------------------------------

    def _start(self, first_batch: int) -> None:
        """Build the duplicate index from the master dataset (archive files of earlier
        micro-batches, imports, the legacy archive), bring each view's real-time table in
        line with its definition (:meth:`serving.store.Store.follow_definition`), and make
        the views' writers."""
        settings, src = self.settings, self.source
        pipeline = settings.pipeline
        archive = epoch_dirs(archive_dir(settings, src))
        high = self._archived_high(archive, first_batch)
        index = DedupIndex(horizon=pipeline.dedup_horizon_s, retain=pipeline.dedup_retain_s)
        imports = committed_imports(settings, src)
        if high is not None:
            # The same "latest epoch read" the live job had after the micro-batch before.
            index.advance(high)
        # Imports are seeded but never move the index's clock (an import takes the current
        # epoch); before any micro-batch, the newest import says what is recent.
        ref = high if high is not None else max(imports, default=None)
        if ref is not None:
            floor = ref - index.retain - index.slack
            files = [
                str(f)
                for e, d in archive.items()
                if e >= floor
                for f in d.iterdir()
                if _before(archive_batch(f.name), first_batch)
            ]
            imported = [str(f) for e, fs in imports.items() if e >= floor for f in fs]
            self._seed(index, files, imported, floor)
        self.index = index

        # A real-time table made under another definition is rebuilt, empty, before any
        # write: it then holds whole the epochs after the last one earlier micro-batches
        # archived (those are read from Kafka from here on only), and queries wait for a
        # batch that reaches them (serving.store.check_answerable).
        covers_from = None if high is None else high + pipeline.epoch_seconds

        def connect() -> dict[str, RealtimeCells]:
            session = shared_session(settings.cassandra, settings.cassandra.keyspace)
            store = Store(session, settings.cassandra)
            for view in self.views:
                store.follow_definition(view, first_batch=first_batch, covers_from=covers_from)
            return {
                view.name: RealtimeCells(
                    session,
                    settings.cassandra.keyspace,
                    view,
                    # Cells of later epochs cannot exist (an interrupted attempt of this
                    # micro-batch counts: its epochs are in the archive, or it wrote only
                    # new cells of its own, which the replay rewrites).
                    written_before=max(archive, default=None),
                    # An epoch's cells change only while Kafka records of that epoch are
                    # read: the current epoch and, at a micro-batch boundary, the one before.
                    cache_seconds=3 * pipeline.epoch_seconds,
                    concurrency=pipeline.write_concurrency,
                )
                for view in self.views
            }

        # A job started during a Cassandra outage waits for it, as a micro-batch does.
        self.cells = wait_out_outage(
            connect,
            settings.cassandra.outage_retry_s,
            f"the connection of source job {src.name!r}",
        )
        saved = read_json(source_report_file(settings, self.query)) or {}
        self.counters = {k: int(saved.get("counters", {}).get(k, 0)) for k in COUNTERS}
        self.last_batch = int(saved.get("batch_id", -1))
        # The highs of this checkpoint's run only (the report of the micro-batch before, or
        # of this one's interrupted attempt): after a checkpoint reset they would declare
        # epochs complete that the job is about to read again.
        if self.last_batch in (first_batch - 1, first_batch):
            self.highs = {int(p): int(t) for p, t in saved.get("partition_high_ms", {}).items()}
        log.info(
            "source %s: duplicate index of %d ids (%.1f MB) from the master dataset",
            src.name,
            len(index),
            index.nbytes / 1e6,
        )

    def _archived_high(self, archive: dict[int, Path], first_batch: int) -> int | None:
        """The newest epoch holding files of micro-batches before ``first_batch``; refuses
        an archive holding later micro-batches (a checkpoint reset: replaying batch ids
        would replace files of the earlier run)."""
        for epoch in sorted(archive, reverse=True):
            found = (archive_batch(f.name) for f in archive[epoch].iterdir())
            batches = {b for b in found if b is not None}
            later = {b for b in batches if b > first_batch}
            if later:
                raise LaminaError(
                    f"the archive of source {self.source.name!r} holds micro-batch "
                    f"{max(later)} but its streaming checkpoint starts at micro-batch "
                    f"{first_batch}: the checkpoint was reset or replaced",
                    hint=f"restore the checkpoint ({checkpoint_path(self.settings, self.query)})"
                    f" or move {archive_dir(self.settings, self.source)} aside before starting"
                    " from scratch",
                )
            if any(b < first_batch for b in batches):
                return epoch
        return None

    def _seed(self, index: DedupIndex, files: list[str], imports: list[str], floor: int) -> None:
        legacy = stream_dir(self.settings, self.source)

        def reader() -> Any:
            # A new reader per part: ``option`` sets it on the reader itself, and a base
            # path left from another part makes Spark refuse the next one.
            return self.spark.read.schema(master_schema(self.source))

        frames = []
        if files:
            base = str(archive_dir(self.settings, self.source))
            frames.append(reader().option("basePath", base).parquet(*files))
        if imports:
            base = str(imports_dir(self.settings, self.source))
            frames.append(reader().option("basePath", base).parquet(*imports))
        if (legacy / "_spark_metadata").exists():
            frames.append(reader().parquet(str(legacy)))
        if not frames:
            return
        df = frames[0]
        for f in frames[1:]:
            df = df.unionByName(f)
        seen = (
            df.where(F.col(INGEST_EPOCH) >= floor)
            .select(*id_hashes(self.source), INGEST_EPOCH)
            .groupBy(H1, H2)
            .agg(F.max(INGEST_EPOCH).alias(INGEST_EPOCH))
            .toArrow()
        )
        index.load(
            seen.column(H1).to_numpy(),
            seen.column(H2).to_numpy(),
            seen.column(INGEST_EPOCH).to_numpy(),
        )

    # -- reporting ----------------------------------------------------------------------

    def _report_failure(self, batch_id: int, reason: str) -> None:
        """Record in the report that micro-batch ``batch_id`` stopped the job, and why."""
        path = source_report_file(self.settings, self.query)
        report = read_json(path) or {}
        report["failed"] = {"batch_id": batch_id, "reason": reason, "at": time.time()}
        write_json_atomic(path, report)

    def _report(self, batch_id: int, counts: dict[str, int], timings: dict[str, float]) -> None:
        if batch_id > self.last_batch:  # a replayed micro-batch is counted once
            for k in COUNTERS:
                self.counters[k] = self.counters.get(k, 0) + counts.get(k, 0)
            self.last_batch = batch_id
        for k, v in timings.items():
            self.spent[k] = round(self.spent.get(k, 0.0) + v, 4)
        assert self.index is not None
        write_json_atomic(
            source_report_file(self.settings, self.query),
            {
                "batch_id": batch_id,
                "batch": counts,
                "timings_s": timings,
                "timings_since_start_s": self.spent,
                "counters": self.counters,
                "dedup_index": {"ids": len(self.index), "bytes": self.index.nbytes},
                "partition_high_ms": {str(p): t for p, t in sorted(self.highs.items())},
                "complete_before": self.complete,
                "cells": {
                    v: {"reads": c.reads, "writes": c.writes, "cached": len(c.cache)}
                    for v, c in self.cells.items()
                },
                "written_at": time.time(),
            },
        )
