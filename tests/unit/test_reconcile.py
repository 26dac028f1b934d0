"""Reconciliation, sketch agreement, the divergence threshold and staleness arithmetic."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from batch.freshness import freshness
from batch.reconcile import Reconciliation, realtime_overlap, reconcile
from batch.steps import divergence_problems
from lamina.monoids import Distinct, Mean, Quantiles, Sum
from lamina.views import View, load_views
from serving.merge import encode, plus, zero
from serving.store import Published

ROOT = Path(__file__).resolve().parents[2]
CATALOG = load_views(ROOT / "conf" / "views.toml")
METERING = CATALOG.view("cloud_metering")  # sum(long) + count: exact
SENSORS = CATALOG.view("iot_temperature")  # min, max, mean, KLL quantiles
PAGEVIEWS = CATALOG.view("web_pageviews")  # count, HLL distinct, mean


def fold(view: View, events: list[dict[str, Any]]) -> dict[str, Any]:
    """States of ``events`` (field values by aggregation field) folded with ``lift``/``plus``."""
    s = zero(view)
    for ev in events:
        lifted = {
            n: m.lift(ev.get(view.aggregations[n].field or "")) for n, m in view.monoids.items()
        }
        s = plus(view, s, lifted)
    return s


Event = tuple[str, int, int, int | None]  # customer, bucket, epoch, instance_seconds

events_st = st.lists(
    st.tuples(
        st.sampled_from(["c0", "c1", "c2"]),
        st.sampled_from([0, 3600, 7200]),
        st.sampled_from([100, 110, 120]),
        st.one_of(st.none(), st.integers(0, 10_000)),
    ),
    max_size=60,
)


def sides(
    view: View, events: list[Event]
) -> tuple[list[tuple[tuple[str], int, tuple[Any, ...]]], list[Any]]:
    """Batch cells (one pass per cell) and real-time rows (one per cell and epoch)."""
    cells: dict[tuple[str, int], list[dict[str, Any]]] = {}
    epochs: dict[tuple[str, int, int], list[dict[str, Any]]] = {}
    for key, bucket, epoch, secs in events:
        ev = {"instance_seconds": secs}
        cells.setdefault((key, bucket), []).append(ev)
        epochs.setdefault((key, bucket, epoch), []).append(ev)
    batch = [((k,), b, encode(view, fold(view, evs))) for (k, b), evs in cells.items()]
    rt = [((k,), b, e, encode(view, fold(view, evs))) for (k, b, e), evs in epochs.items()]
    return batch, rt


@given(events_st)
def test_agreeing_layers_reconcile_equal(events: list[Event]) -> None:
    batch, rt = sides(METERING, events)
    overlap = realtime_overlap(METERING, rt)
    report = reconcile(METERING, 7, 130, overlap, batch)
    assert (report.cells, report.equal, report.diverging) == (len(batch), len(batch), 0)
    assert report.realtime_rows == len(rt)
    assert report.epoch_from == (min(e for _, _, e, _ in events) if events else None)
    assert report.samples == []


def test_each_kind_of_divergence_is_counted_and_sampled() -> None:
    events: list[Event] = [
        ("c0", 0, 100, 60),
        ("c0", 0, 110, 300),
        ("c1", 0, 100, 60),
        ("c1", 3600, 100, None),
        ("c2", 0, 120, 3600),
    ]
    batch, rt = sides(METERING, events)
    rt = [r for r in rt if r[0] != ("c2",)]  # c2: only the batch has it
    rt = [(k, b, e, (v[0] + 1, v[1]) if k == ("c0",) and e == 110 else v) for k, b, e, v in rt]
    rt.append((("c9",), 0, 100, (5, 1)))  # only real time has it
    report = reconcile(METERING, 7, 130, realtime_overlap(METERING, rt), batch)
    assert (report.cells, report.equal, report.differing) == (5, 2, 1)
    assert (report.missing_realtime, report.missing_batch, report.diverging) == (1, 1, 3)
    assert report.divergence == pytest.approx(3 / 5)
    assert report.samples == [
        {
            "kind": "differing",
            "key": ["c0"],
            "bucket": 0,
            "aggregations": ["instance_seconds"],
            "batch": {"instance_seconds": 360, "records": 2},
            "realtime": {"instance_seconds": 361, "records": 2},
        },
        {
            "kind": "missing_realtime",
            "key": ["c2"],
            "bucket": 0,
            "aggregations": ["instance_seconds", "records"],
            "batch": {"instance_seconds": 3600, "records": 1},
            "realtime": None,
        },
        {
            "kind": "missing_batch",
            "key": ["c9"],
            "bucket": 0,
            "aggregations": ["instance_seconds", "records"],
            "batch": None,
            "realtime": {"instance_seconds": 5, "records": 1},
        },
    ]
    again = Reconciliation.from_dict(report.to_dict())
    assert again == report
    assert (
        reconcile(METERING, 7, 130, realtime_overlap(METERING, rt), batch, 1).samples
        == (report.samples[:1])
    )


def test_nothing_to_compare_is_an_empty_report() -> None:
    report = reconcile(METERING, 1, 50, realtime_overlap(METERING, []), [])
    assert (report.epoch_from, report.cells, report.divergence) == (None, 0, 0.0)


def test_float_sums_agree_within_rounding_not_beyond() -> None:
    m = Sum("double")
    forward, backward = (0.1 + 0.2) + 0.3, 0.1 + (0.2 + 0.3)  # another order of addition
    assert forward != backward and m.agrees(forward, backward)
    assert not m.agrees(4e8, 4e8 + 10.0)  # 2.5e-8 relative: a real difference, not rounding
    assert Mean("double").agrees((forward, 3), (backward, 3))
    assert not Mean("double").agrees((forward, 3), (forward, 2))
    assert m.agrees(None, None) and not m.agrees(None, 0.0)


def test_sketches_of_the_same_values_agree_whichever_way_built() -> None:
    rng = random.Random(11)
    for view, name, values in (
        (PAGEVIEWS, "visitors", [f"v{rng.randrange(5000)}" for _ in range(4000)]),
        (SENSORS, "temp_q", [rng.gauss(20, 6) for _ in range(4000)]),
    ):
        m = view.monoids[name]
        whole = m.total(m.lift(v) for v in values)
        halves = m.plus(
            m.total(m.lift(v) for v in values[::2]), m.total(m.lift(v) for v in values[1::2])
        )
        assert m.agrees(whole, halves), name
        fewer = m.total(m.lift(v) for v in values[: len(values) * 9 // 10])
        assert not m.agrees(whole, fewer), name
        assert m.agrees(None, None) and not m.agrees(whole, None)


def test_small_distinct_sets_must_match_exactly() -> None:
    m = Distinct("string")
    three = m.total(m.lift(v) for v in ("a", "b", "c"))
    assert m.agrees(three, m.plus(m.lift("a"), m.total(m.lift(v) for v in ("b", "c"))))
    assert not m.agrees(three, m.total(m.lift(v) for v in ("a", "b")))


def test_quantile_sketches_with_other_extremes_disagree() -> None:
    m = Quantiles("double")
    base = [float(i) for i in range(100)]
    assert not m.agrees(
        m.total(m.lift(v) for v in base), m.total(m.lift(v) for v in [*base[1:], 0.5])
    )


def report_with(diverging: int, cells: int) -> Reconciliation:
    return Reconciliation(
        "v", 3, 100, 50, cells=cells, equal=cells - diverging, differing=diverging
    )


def test_divergence_threshold() -> None:
    assert divergence_problems(report_with(1, 10), 0.1) == []
    (problem,) = divergence_problems(report_with(2, 10), 0.1)
    assert problem.startswith("2 of 10 (key, bucket) cells diverge from the real-time view")
    assert "20.0% > max_divergence 10.0%" in problem
    assert "lamina batch report v --version 3" in problem
    assert divergence_problems(report_with(10, 10), 1.0) == []
    assert divergence_problems(report_with(0, 0), 0.0) == []


def published(cutoff: int) -> Published:
    return Published("cloud_metering", 4, cutoff, 10, 0.0, "h")


def test_staleness_arithmetic() -> None:
    view = METERING  # max_staleness_s: the default 3 h
    now = 1_800_000_000.0
    fresh = freshness(view, published(int(now) - 3 * 3600), now)
    assert (fresh.age_s, fresh.limit_s, fresh.stale) == (3 * 3600, 3 * 3600, False)
    stale = freshness(view, published(int(now) - 3 * 3600 - 1), now)
    assert stale.stale
    assert stale.describe() == (
        "view 'cloud_metering' version 4: published cutoff 1799989199 is 10801s old (limit 10800s)"
    )
    ahead = freshness(view, published(int(now) + 10), now)  # an import's cutoff runs ahead
    assert not ahead.stale and ahead.age_s == -10
    never = freshness(view, None, now)
    assert never.stale and never.age_s is None and never.version is None
    assert never.describe() == "view 'cloud_metering' has no published batch version"
    strict = view.model_copy(update={"max_staleness_s": 60})
    assert freshness(strict, published(int(now) - 61), now).stale
