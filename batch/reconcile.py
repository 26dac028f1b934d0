"""Reconciliation: a new batch version against the master dataset it was built from (the
self-check) and against the real-time view, on the epochs both cover; and the verdict.

Self-check (:class:`SelfCheck`): per ingest epoch below the cutoff, the rows Spark read for
the build (before the dedup) against the rows the Parquet footers of the master dataset's
files declare, listed again when the build ends; rows without an event id; the events left
after the dedup against the rows read. It fails when the batch does not stand for its master
dataset: files changed under the build, or Spark skipped some (``ignoreCorruptFiles``,
``ignoreMissingFiles``), or the input breaks the dedup.

Verdict (:func:`judge`): a batch that fails its self-check is broken and is not published.
One that passes it is published, whatever its divergence from the real-time view: that
divergence is then the speed layer's (late re-sends counted twice, lag, a restarted job),
which the batch corrects; beyond ``max_divergence`` it is reported and alerted on.

The real-time table keeps states per (key, bucket, ingest epoch) for every epoch at or after
the oldest retained cutoff, so when a batch with cutoff ``E`` is built, the epochs
``[first real-time epoch still present, E)`` are aggregated by both layers. For each
(key, bucket) cell of that overlap this module compares the batch's aggregation of the
master dataset's events in those epochs with the fold (:func:`serving.merge.merge`, the
monoids' ``plus``) of the real-time rows, aggregation by aggregation, with
:meth:`lamina.monoids.Monoid.agrees` (exact for numbers, the sketches' stated error for
distinct counts and quantiles).

Pure functions, no I/O: :func:`batch.recompute.build_view` feeds them the real-time rows (read from
Cassandra) and the batch cells (aggregated in Spark by :func:`engine.translate.aggregate`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from lamina.master import EpochFiles
from lamina.views import View
from serving.merge import decode, merge, present

Key = tuple[Any, ...]
Cell = tuple[Key, int]
"""A (key values, bucket start) pair."""

SAMPLES = 5
"""Diverging cells kept in a report, with both sides' values."""


@dataclass(frozen=True)
class RealtimeOverlap:
    """The real-time side of a reconciliation: merged states per cell of epochs ``< cutoff``."""

    states: dict[Cell, dict[str, Any]]
    first_epoch: int | None
    """Smallest ingest epoch among the rows (``None``: no real-time row before the cutoff)."""
    rows: int


@dataclass
class Reconciliation:
    """How a batch version and the real-time view compare on the epochs both cover.

    ``cells`` counts the (key, bucket) cells present on either side; each is ``equal``,
    ``differing`` (on some aggregation), missing in real time (only the batch has events
    there) or missing in the batch (only real time has a row). ``epoch_from`` is ``None``
    when there was no real-time row to compare with (then every count is 0).
    """

    view: str
    version: int
    cutoff: int
    epoch_from: int | None
    realtime_rows: int = 0
    cells: int = 0
    equal: int = 0
    differing: int = 0
    missing_realtime: int = 0
    missing_batch: int = 0
    samples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def diverging(self) -> int:
        """Cells that differ or are missing on one side."""
        return self.differing + self.missing_realtime + self.missing_batch

    @property
    def divergence(self) -> float:
        """``diverging / cells`` (0.0 when nothing was compared)."""
        return self.diverging / self.cells if self.cells else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-serializable form (as stored per version), with the derived figures."""
        return {**asdict(self), "diverging": self.diverging, "divergence": self.divergence}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Reconciliation:
        """From :meth:`to_dict` (keys of the stored report that are not fields are ignored:
        the derived figures, the self-check, the verdict)."""
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in names})


def realtime_overlap(
    view: View, rows: Iterable[tuple[Key, int, int, Sequence[Any]]]
) -> RealtimeOverlap:
    """Fold real-time rows ``(key, bucket, ingest_epoch, values)`` into states per cell.

    The caller passes the rows of epochs before the new cutoff; values are in
    ``view.value_columns`` order. Uses the serving merge (no batch part, every epoch counts).
    """
    by_key: dict[Key, list[tuple[int, int, Sequence[Any]]]] = defaultdict(list)
    first: int | None = None
    n = 0
    for key, bucket, epoch, values in rows:
        by_key[key].append((bucket, epoch, values))
        first = epoch if first is None else min(first, epoch)
        n += 1
    states = {
        (key, bucket): m.states
        for key, part in by_key.items()
        for bucket, m in merge(view, [], part, None).items()
    }
    return RealtimeOverlap(states, first, n)


def reconcile(
    view: View,
    version: int,
    cutoff: int,
    realtime: RealtimeOverlap,
    batch_cells: Iterable[tuple[Key, int, Sequence[Any]]],
    samples: int = SAMPLES,
) -> Reconciliation:
    """Compare batch cells ``(key, bucket, values)`` of the overlap with ``realtime``.

    ``batch_cells`` must aggregate exactly the events the speed layer saw in epochs
    ``[realtime.first_epoch, cutoff)``; it is consumed once, so it may stream from Spark
    (only the real-time side is held in memory). The first ``samples`` diverging cells are
    kept with both sides' presented values and the names of the aggregations that differ.
    """
    report = Reconciliation(view.name, version, cutoff, realtime.first_epoch, realtime.rows)
    pending = dict(realtime.states)

    def sample(kind: str, cell: Cell, b: dict[str, Any] | None, r: dict[str, Any] | None) -> None:
        if len(report.samples) >= samples:
            return
        names = [
            n for n, m in view.monoids.items() if b is None or r is None or not m.agrees(b[n], r[n])
        ]
        report.samples.append(
            {
                "kind": kind,
                "key": list(cell[0]),
                "bucket": cell[1],
                "aggregations": names,
                "batch": None if b is None else present(view, b),
                "realtime": None if r is None else present(view, r),
            }
        )

    for key, bucket, values in batch_cells:
        cell = (tuple(key), bucket)
        b = decode(view, values)
        r = pending.pop(cell, None)
        report.cells += 1
        if r is None:
            report.missing_realtime += 1
            sample("missing_realtime", cell, b, None)
        elif all(m.agrees(b[n], r[n]) for n, m in view.monoids.items()):
            report.equal += 1
        else:
            report.differing += 1
            sample("differing", cell, b, r)
    for cell, r in sorted(pending.items(), key=lambda kv: repr(kv[0])):
        report.cells += 1
        report.missing_batch += 1
        sample("missing_batch", cell, None, r)
    return report


@dataclass(frozen=True)
class SelfCheck:
    """A build's read of the master dataset against the master dataset's own files.

    ``epochs`` has one entry per ingest epoch below the cutoff that either side has:
    ``files`` and ``footer_rows`` (from the footers, listed when the build ended),
    ``read_rows`` (rows Spark read for the build, before the dedup), ``without_id`` (of
    those, rows with a null event id) and ``unreadable`` (files whose footer could not be
    read). ``legacy_rows``: rows read from the legacy file-sink archive, which has no
    footer side. ``events``: events after the dedup. ``problems`` says what is wrong, one
    sentence each (empty: the batch stands for its master dataset).
    """

    epochs: list[dict[str, Any]]
    footer_rows: int
    read_rows: int
    legacy_rows: int
    deduped_rows: int
    events: int
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def duplicates(self) -> int:
        """Rows the dedup dropped (redeliveries, replays)."""
        return self.deduped_rows - self.events

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "duplicates": self.duplicates, "ok": self.ok}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SelfCheck:
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in names})


def self_check(
    footers: Mapping[int, EpochFiles],
    read: Mapping[int, tuple[int, int]],
    events: int,
    *,
    event_id: str,
    legacy_rows: int = 0,
    deduped_rows: int | None = None,
) -> SelfCheck:
    """Compare the footers (:func:`lamina.master.footer_rows`) with what the build read:
    ``read`` maps each epoch to (rows read, rows with a non-null ``event_id``), over the
    archive and the imports; ``legacy_rows`` were read from the legacy archive; ``events``
    were left after the dedup, out of ``deduped_rows`` rows it consumed (``None``: same as
    read; a build's dedup consumes its one cached read whole, the read ``read`` counts:
    :func:`batch.recompute.deduplicate`).

    Problems: an epoch whose footers and read rows differ (or with an unreadable file);
    rows without an event id (the dedup would merge them into one event); a dedup that
    consumed another number of rows than were read; more events than rows read, or none from
    a non-empty read.
    """
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    for epoch in sorted({*footers, *read}):
        f = footers.get(epoch, EpochFiles(0, 0))
        n, with_id = read.get(epoch, (0, 0))
        rows.append(
            {
                "epoch": epoch,
                "files": f.files,
                "footer_rows": f.rows,
                "read_rows": n,
                "without_id": n - with_id,
                "unreadable": list(f.unreadable),
            }
        )
        if f.unreadable:
            problems.append(
                f"epoch {epoch}: {len(f.unreadable)} file(s) whose footer cannot be read: "
                + "; ".join(f.unreadable[:3])
            )
        elif f.rows != n:
            problems.append(
                f"epoch {epoch}: the master dataset's {f.files} file(s) hold {f.rows} rows by "
                f"their footers, the build read {n} (files changed under the build, or Spark "
                "skipped some: spark.sql.files.ignoreCorruptFiles / ignoreMissingFiles)"
            )
        if n > with_id:
            problems.append(
                f"epoch {epoch}: {n - with_id} row(s) without an event id ({event_id!r}): the "
                "dedup would merge them into one event"
            )
    total = sum(r["read_rows"] for r in rows)
    deduped = total + legacy_rows if deduped_rows is None else deduped_rows
    if deduped != total + legacy_rows:
        problems.append(
            f"the dedup consumed {deduped} rows, {total + legacy_rows} were read (Spark "
            "skipped part of a file while reading columns other than the event id)"
        )
    if events > total + legacy_rows:
        problems.append(f"{events} events after the dedup from {total + legacy_rows} rows read")
    elif events == 0 and total + legacy_rows:
        problems.append(f"no event left after the dedup of {total + legacy_rows} rows read")
    return SelfCheck(
        rows, sum(r["footer_rows"] for r in rows), total, legacy_rows, deduped, events, problems
    )


Side = Literal["none", "batch", "speed_layer"]


@dataclass(frozen=True)
class Verdict:
    """Which side of a reconciliation diverged, and whether the version may be published.

    ``diverged``: ``"batch"`` (its self-check failed: refused, ``problems`` says why),
    ``"speed_layer"`` (the batch passed its self-check and the real-time view diverges on
    more than ``max_divergence`` of the cells: published, ``warnings`` says so) or
    ``"none"``.
    """

    diverged: Side
    problems: list[str]
    warnings: list[str]

    @property
    def publishable(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "publishable": self.publishable}


def judge(rec: Reconciliation, check: SelfCheck | None, max_divergence: float) -> Verdict:
    """The verdict on a version from its self-check and its reconciliation (pure).

    A missing self-check (a version built by an older Lamina) counts as failed: nothing
    vouches for the batch. ``max_divergence`` (a fraction of the compared cells) only
    decides whether the speed layer's divergence is alerted on; it never blocks.
    """
    where = f"see `lamina batch report {rec.view} --version {rec.version}`"
    spread = (
        f"{rec.diverging} of {rec.cells} (key, bucket) cells diverge from the real-time view "
        f"on epochs {rec.epoch_from}..{rec.cutoff} ({rec.differing} differ, "
        f"{rec.missing_realtime} missing in real time, {rec.missing_batch} missing in the "
        f"batch, {rec.divergence:.1%})"
    )
    if check is None or not check.ok:
        why = (
            ["it has no self-check against the master dataset (built by an older Lamina?)"]
            if check is None
            else check.problems
        )
        problems = [f"the batch disagrees with its master dataset: {'; '.join(why)}"]
        if rec.diverging:
            problems.append(f"{spread}; not held against the speed layer")
        return Verdict("batch", [f"{p}; {where}" for p in problems], [])
    if rec.divergence > max_divergence:
        return Verdict(
            "speed_layer",
            [],
            [
                f"the speed layer diverged: {spread} > max_divergence {max_divergence:.1%}; "
                f"the batch agrees with its master dataset and corrects it; {where}"
            ],
        )
    return Verdict("none", [], [])


def stored_verdict(report: dict[str, Any] | None, max_divergence: float) -> Verdict:
    """:func:`judge` on a stored report (as :func:`batch.recompute.build_view` stores it,
    with its ``self_check``), with today's ``max_divergence``. No report, or one without a
    self-check (a version built by an older Lamina): refused."""
    if report is None:
        return Verdict("batch", ["it has no reconciliation report (built by an older Lamina?)"], [])
    check = report.get("self_check")
    return judge(
        Reconciliation.from_dict(report),
        None if check is None else SelfCheck.from_dict(check),
        max_divergence,
    )
