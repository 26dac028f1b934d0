"""Reconciliation: a new batch version against the real-time view, on the epochs both cover.

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
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

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
        derived = {"diverging", "divergence"}
        return cls(**{k: v for k, v in data.items() if k not in derived})


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
