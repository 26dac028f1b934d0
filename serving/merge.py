"""The merge: batch view + real-time view -> the exact answer. Pure functions, no I/O.

For one view and key, with the published batch version ``v`` and its cutoff ``E``:

1. Start from the batch states of version ``v``. They aggregate every valid event with
   ingest epoch ``< E`` (deduplicated by event id), per event-time bucket.
2. Take the real-time states whose ingest epoch is ``>= E``. Those of earlier epochs are
   already inside the batch: adding them would count events twice, so they are skipped
   (they linger only until the purge after a publish).
3. For each bucket, fold them all with the aggregation's monoid ``plus``. Because every
   valid event has exactly one ingest epoch, each event is counted exactly once: in the
   batch if its epoch is ``< E``, in exactly one real-time row otherwise — whatever its
   event time, so late events land in their own bucket.
4. Rollups (an hourly view asked per day) fold the finer buckets with the same ``plus``.
5. ``present`` turns states into user values (mean = sum / count; quantile ``q`` from the
   KLL sketch; distinct estimate from the HLL sketch).

A bucket carries its provenance: whether batch data and which real-time epochs went into it.

Top-N and key listings (:func:`fold_aggregation`, :func:`rank`, :func:`keys_with_data`) read
the key indexes (rows of many keys per bucket) and take the same rows with the same monoids.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lamina.buckets import Bucket
from lamina.monoids import Monoid
from lamina.views import View


@dataclass
class Merged:
    """Monoid states of one bucket plus where they came from."""

    states: dict[str, Any]
    from_batch: bool = False
    realtime_epochs: set[int] = field(default_factory=set)


def decode(view: View, values: Sequence[Any]) -> dict[str, Any]:
    """Stored column values (in ``view.value_columns`` order) -> state per aggregation."""
    return {name: m.from_row(tuple(values[i:j])) for name, m, i, j in view.value_layout}


def encode(view: View, states: Mapping[str, Any]) -> tuple[Any, ...]:
    """State per aggregation -> stored column values (inverse of :func:`decode`)."""
    return tuple(v for name, m in view.monoids.items() for v in m.to_row(states[name]))


def plus(view: View, a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    return {name: m.plus(a[name], b[name]) for name, m in view.monoids.items()}


def zero(view: View) -> dict[str, Any]:
    return {name: m.zero() for name, m in view.monoids.items()}


def counts(epoch: int, cutoff: int | None) -> bool:
    """Whether a real-time row of ingest epoch ``epoch`` is merged under ``cutoff`` (the
    published cutoff; ``None``: nothing published, every row counts)."""
    return cutoff is None or epoch >= cutoff


def merge(
    view: View,
    batch: Iterable[tuple[int, Sequence[Any]]],
    realtime: Iterable[tuple[int, int, Sequence[Any]]],
    cutoff: int | None,
) -> dict[int, Merged]:
    """Merge one key's rows into ``{bucket: Merged}`` (see the module docstring).

    ``batch`` yields ``(bucket, values)``, ``realtime`` yields ``(bucket, ingest_epoch,
    values)``, with values in ``view.value_columns`` order. ``cutoff`` is the published
    version's cutoff, or ``None`` when no batch is published (then all real-time rows count).
    """
    out: dict[int, Merged] = {}
    for bucket, values in batch:
        cur = out.get(bucket)
        if cur is None:
            cur = out[bucket] = Merged(zero(view))
        cur.states = plus(view, cur.states, decode(view, values))
        cur.from_batch = True
    for bucket, epoch, values in realtime:
        if not counts(epoch, cutoff):
            continue
        cur = out.get(bucket)
        if cur is None:
            cur = out[bucket] = Merged(zero(view))
        cur.states = plus(view, cur.states, decode(view, values))
        cur.realtime_epochs.add(epoch)
    return out


def rollup(view: View, merged: Mapping[int, Merged], granularity: Bucket) -> dict[int, Merged]:
    """Fold buckets into coarser ``granularity`` buckets with the same monoid ``plus``."""
    out: dict[int, Merged] = {}
    for bucket in sorted(merged):
        m = merged[bucket]
        coarse = granularity.bucket_of(bucket)
        cur = out.setdefault(coarse, Merged(zero(view)))
        cur.states = plus(view, cur.states, m.states)
        cur.from_batch |= m.from_batch
        cur.realtime_epochs |= m.realtime_epochs
    return out


def present(view: View, states: Mapping[str, Any], **query: Any) -> dict[str, Any]:
    """User-facing values of one bucket's states."""
    return {name: m.present(states[name], **query) for name, m in view.monoids.items()}


Key = tuple[Any, ...]


def keys_with_data(
    view: View,
    batch: Iterable[Sequence[Any]],
    realtime: Iterable[Sequence[Any]],
    cutoff: int | None,
) -> set[Key]:
    """The keys that have at least one bucket in :func:`merge` of these rows, from their key
    columns alone: ``batch`` rows ``(bucket, *keys, ...)``, ``realtime`` rows ``(bucket,
    ingest_epoch, *keys, ...)`` (a real-time row counts when :func:`counts`)."""
    n = len(view.keys)
    found = {tuple(r[1 : 1 + n]) for r in batch}
    found |= {tuple(r[2 : 2 + n]) for r in realtime if counts(r[1], cutoff)}
    return found


def rank(
    view: View,
    totals: Mapping[Key, Mapping[str, Any]],
    by: str,
    limit: int,
    **query: Any,
) -> list[tuple[Key, Any]]:
    """The ``limit`` keys of ``totals`` with the largest presented value of aggregation
    ``by`` (:func:`present`: a count, a sum, a mean, a distinct or quantile estimate), as
    ``(key, value)``, largest first; ties in key order; keys without a value (``None`` or
    NaN, e.g. the mean of nothing) last, in key order."""
    monoid = view.monoids[by]
    valued: list[tuple[Key, Any]] = []
    empty: list[tuple[Key, Any]] = []
    for key, states in totals.items():
        value = monoid.present(states[by], **query)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            empty.append((key, None))
        else:
            valued.append((key, value))
    valued.sort(key=lambda kv: kv[0])
    valued.sort(key=lambda kv: kv[1], reverse=True)  # stable: ties stay in key order
    empty.sort(key=lambda kv: kv[0])
    return (valued + empty)[:limit]


def fold_aggregation(
    view: View,
    name: str,
    batch: Iterable[Sequence[Any]],
    realtime: Iterable[Sequence[Any]],
    cutoff: int | None,
) -> dict[Key, dict[str, Any]]:
    """Each key's state of aggregation ``name`` over key index rows of a range: the rows of
    :func:`merge` (batch rows, real-time rows that :func:`counts`) folded with the same
    monoid (its ``total``: ``plus`` from ``zero``), all of a key's rows at once (which
    equals folding its buckets' merges: the monoid is associative and commutative). Rows
    carry only that aggregation's value columns: ``(bucket, *keys, *its columns)``,
    ``(bucket, ingest_epoch, *keys, *its columns)``. Returns ``{key: {name: state}}``; a
    key is present when a row of it counts."""
    m = view.monoids[name]
    n = len(view.keys)
    rows: dict[Key, list[Any]] = {}
    if type(m).from_row is Monoid.from_row:  # one column, stored as the state itself
        for r in batch:
            rows.setdefault(tuple(r[1 : 1 + n]), []).append(r[1 + n])
        for r in realtime:
            if counts(r[1], cutoff):
                rows.setdefault(tuple(r[2 : 2 + n]), []).append(r[2 + n])
    else:
        for r in batch:
            rows.setdefault(tuple(r[1 : 1 + n]), []).append(m.from_row(tuple(r[1 + n :])))
        for r in realtime:
            if counts(r[1], cutoff):
                rows.setdefault(tuple(r[2 : 2 + n]), []).append(m.from_row(tuple(r[2 + n :])))
    return {key: {name: m.total(states)} for key, states in rows.items()}


def add_totals(
    view: View,
    name: str,
    base: Mapping[Key, Mapping[str, Any]],
    more: Mapping[Key, Mapping[str, Any]],
) -> dict[Key, dict[str, Any]]:
    """``base`` and ``more`` (two :func:`fold_aggregation` results of aggregation ``name``
    over disjoint sets of rows) as one: a key's states added with the monoid's ``plus``.
    This equals one fold of both sets of rows (the monoid is associative and commutative),
    so the batch part of a range may be folded once and reused. A new dict; neither
    argument changes (``base`` may be shared)."""
    m = view.monoids[name]
    out: dict[Key, dict[str, Any]] = dict(base)
    for key, states in more.items():
        cur = out.get(key)
        out[key] = dict(states) if cur is None else {name: m.plus(cur[name], states[name])}
    return out
