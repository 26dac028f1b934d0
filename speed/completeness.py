"""When an ingest epoch of a source is complete in the master dataset: decided from Kafka
offsets and broker timestamps, never from the driver's clock.

Source topics stamp records with the broker's append time (``LogAppendTime``; a job refuses
any other at start, :func:`lamina.streams.require_broker_timestamps`), in offset order within
a partition. Once the job has archived a record of partition ``p`` stamped ``t``, every
record of ``p`` stamped before ``t`` sits at a lower offset and is archived too: every epoch
that ended by ``t`` is complete for ``p``. This is the rule "the offset of the first record
at or after the epoch's end is archived", without asking Kafka for that offset. An epoch is
complete for the source when it is complete for every partition of the topic::

    complete_before = min over partitions p of ingest_epoch(newest archived stamp of p)

The job reads with ``read_committed``: a record of an open transaction is not readable yet,
and neither is anything after it in its partition, so it holds its partition back until it
commits (its records are then read and archived) or aborts (they never count).

A partition no one writes to would hold every epoch back for ever. When the job is caught
up and a partition has no record of the current epoch (by the driver's clock), the job
appends an *epoch mark* to it (:data:`lamina.streams.EPOCH_MARK_KEY`, at most one per
partition and epoch; ``pipeline.epoch_marks``). A mark is read like any record but never
archived nor a dead letter; its broker stamp moves its partition on. The driver's clock only
decides when to write a mark: a wrong clock delays completeness or writes one mark too many,
it never declares an epoch complete early.

What this rests on: a partition's stamps do not go backwards. They can after a leader moves
to a broker whose clock is behind. A record read into an epoch already declared complete is
archived in that epoch, where the next batch counts it (each batch recomputes from the whole
master dataset); until that batch publishes, answers miss it. The job counts such records as
``past_complete`` (``lamina_speed_records{outcome="past_complete"}``) and logs a warning.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from lamina.buckets import ingest_epoch
from lamina.settings import Settings
from lamina.streams import EPOCH_MARK_KEY, EPOCH_MARK_VALUE
from lamina.views import Source

log = logging.getLogger(__name__)


def newest_stamps(partitions: np.ndarray, stamps_ms: np.ndarray) -> dict[int, int]:
    """The newest broker timestamp (ms) per partition among records ``partitions[i]``,
    ``stamps_ms[i]``."""
    found: dict[int, int] = {}
    for p in np.unique(partitions):
        found[int(p)] = int(stamps_ms[partitions == p].max())
    return found


def advance(highs: Mapping[int, int], newer: Mapping[int, int]) -> dict[int, int]:
    """``highs`` moved on by ``newer`` (per partition, the larger stamp)."""
    out = dict(highs)
    for p, t in newer.items():
        out[p] = max(t, out.get(p, t))
    return out


def complete_before(
    highs: Mapping[int, int], partitions: Iterable[int], epoch_seconds: int
) -> int | None:
    """The first epoch not known complete for every one of ``partitions`` (all of the
    topic's): every earlier epoch is archived whole. ``None`` while a partition has no
    archived record (nor mark) at all."""
    epochs = []
    for p in partitions:
        if p not in highs:
            return None
        epochs.append(ingest_epoch(highs[p], epoch_seconds))
    return min(epochs) if epochs else None


def behind(
    highs: Mapping[int, int], partitions: Iterable[int], now_ms: int, epoch_seconds: int
) -> list[int]:
    """The ``partitions`` without an archived record of the epoch holding ``now_ms``."""
    now = ingest_epoch(now_ms, epoch_seconds)
    return sorted(
        p for p in partitions if p not in highs or ingest_epoch(highs[p], epoch_seconds) < now
    )


def unread_marks(
    marks: Mapping[str, Mapping[int, int]], read_until: Mapping[str, Mapping[str, int]]
) -> dict[str, list[int]]:
    """The partitions whose last mark (``marks``: topic -> partition -> offset) a query has
    not read: ``read_until`` is its progress's ``endOffset`` (topic -> partition, as a
    string -> the next offset to read)."""
    out: dict[str, list[int]] = {}
    for topic, offsets in marks.items():
        until = read_until.get(topic, {})
        behind = sorted(p for p, off in offsets.items() if int(until.get(str(p), -1)) <= off)
        if behind:
            out[topic] = behind
    return out


class EpochMarker:
    """Appends epoch marks to the idle partitions of source topics (see the module doc);
    one Kafka producer per job, made on first use."""

    def __init__(self, settings: Settings, timeout_ms: int = 10_000) -> None:
        self.settings = settings
        self.timeout_ms = timeout_ms
        """How long a Kafka step (connecting, sending) may take before the marks fail."""
        self.producer: Any = None
        self.marked: dict[tuple[str, int], int] = {}
        """The epoch (driver's clock) each partition was last marked in."""
        self.written: dict[str, dict[int, int]] = {}
        """The offset of the last mark written, per topic and partition."""
        self.stopped = False
        self.failures = 0
        """Marks this job could not write (Kafka down, no write permission on the topic):
        reported in the query's status and ``lamina_stream_epoch_mark_failures``; while
        they fail, idle partitions hold the batch cutoff back."""
        self._busy = threading.Lock()

    def mark_idle_soon(self, source: Source, highs: Mapping[int, int]) -> None:
        """:meth:`mark_idle` in a thread of its own, unless one is still at work: Spark's
        listeners share one thread, which a Kafka call must not hold up."""
        if self.stopped or not self._busy.acquire(blocking=False):
            return

        def work() -> None:
            try:
                if not self.stopped:  # checked again under the lock (:meth:`stop`)
                    self.mark_idle(source, highs)
            finally:
                self._busy.release()

        threading.Thread(target=work, name=f"epoch-marks-{source.name}", daemon=True).start()

    def mark_idle(self, source: Source, highs: Mapping[int, int]) -> list[int]:
        """Mark each partition of ``source``'s topic that has no archived record of the
        current epoch and was not marked in it yet; returns the partitions marked. Call it
        only when the job has read everything the topic held (a partition with unread
        records moves on by itself)."""
        es = self.settings.pipeline.epoch_seconds
        now_ms = int(time.time() * 1000)
        epoch = ingest_epoch(now_ms, es)
        try:
            producer = self._producer()
            partitions = sorted(producer.partitions_for(source.topic) or ())
            due = [
                p
                for p in behind(highs, partitions, now_ms, es)
                if self.marked.get((source.topic, p), -1) < epoch
            ]
            sent = [
                producer.send(source.topic, key=EPOCH_MARK_KEY, value=EPOCH_MARK_VALUE, partition=p)
                for p in due
            ]
            if due:
                producer.flush(timeout=30)
            offsets = [f.get(timeout=30).offset for f in sent]
        except Exception as exc:  # Kafka down: the next idle moment tries again
            self.failures += 1
            log.warning(
                "source %s: could not write epoch marks (%d failures so far; idle partitions "
                "hold the batch cutoff back until one is written): %s",
                source.name,
                self.failures,
                exc,
            )
            self.close()
            return []
        for p, offset in zip(due, offsets, strict=True):
            self.marked[(source.topic, p)] = epoch
            self.written.setdefault(source.topic, {})[p] = offset
        return due

    def stop(self, timeout_s: float = 30.0) -> dict[str, dict[int, int]]:
        """Write no more marks (waiting up to ``timeout_s`` for one being written); returns
        the offsets of the last marks written (:attr:`written`). A graceful stop lets the
        queries read these before it stops them, so a job stopped when caught up leaves no
        lag of its own marks behind (:func:`unread_marks`)."""
        self.stopped = True
        if self._busy.acquire(timeout=timeout_s):
            self._busy.release()
        self.close()
        return {t: dict(offs) for t, offs in self.written.items()}

    def _producer(self) -> Any:
        if self.producer is None:
            from kafka import KafkaProducer

            self.producer = KafkaProducer(
                **self.settings.kafka.client_config(),
                max_block_ms=self.timeout_ms,
                bootstrap_timeout_ms=self.timeout_ms,
            )
        return self.producer

    def close(self) -> None:
        if self.producer is not None:
            with contextlib.suppress(Exception):  # closing a client of a broker gone
                self.producer.close(timeout=5)
            self.producer = None
