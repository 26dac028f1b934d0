"""The merge law: wherever the cutoff falls, batch ⊕ real-time == one pass over all events."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from lamina.buckets import Bucket
from lamina.views import load_views
from serving.merge import decode, encode, merge, present, rollup, zero

ROOT = Path(__file__).resolve().parents[2]
CATALOG = load_views(ROOT / "conf" / "views.toml")
VIEW = CATALOG.view("cloud_metering")  # sum(long) + count: exact


def states(events: list[tuple[int, int, int | None]]) -> dict[str, Any]:
    """Monoid states of ``(bucket, epoch, instance_seconds)`` events."""
    s = zero(VIEW)
    for _, _, secs in events:
        for name, m in VIEW.monoids.items():
            value = secs if name == "instance_seconds" else 1
            s[name] = m.plus(s[name], m.lift(value))
    return s


def truth(events: list[tuple[int, int, int | None]]) -> dict[str, Any]:
    """The view's answer over ``events`` computed directly (SQL semantics), not by Lamina."""
    secs = [e[2] for e in events if e[2] is not None]
    return {"instance_seconds": sum(secs) if secs else None, "records": len(events)}


events_st = st.lists(
    st.tuples(
        st.sampled_from([0, 3600, 7200]),
        st.integers(0, 9).map(lambda e: e * 60),
        st.one_of(st.none(), st.integers(0, 10_000)),
    ),
    max_size=60,
)


@given(events_st, st.integers(0, 11).map(lambda e: e * 60))
def test_any_cutoff_gives_the_single_pass_answer(
    events: list[tuple[int, int, int | None]], cutoff: int
) -> None:
    buckets = {b for b, _, _ in events}
    batch = [
        (b, encode(VIEW, states([e for e in events if e[0] == b and e[1] < cutoff])))
        for b in buckets
    ]
    # Real-time rows exist for every epoch, also those the batch already covers (not purged).
    realtime = [
        (b, epoch, encode(VIEW, states([e for e in events if e[0] == b and e[1] == epoch])))
        for b, epoch in {(b, ep) for b, ep, _ in events}
    ]
    merged = merge(VIEW, batch, realtime, cutoff)
    assert set(merged) == buckets
    for b in buckets:
        want = truth([e for e in events if e[0] == b])
        assert present(VIEW, merged[b].states) == want
        assert merged[b].from_batch
        assert merged[b].realtime_epochs == {ep for bb, ep, _ in events if bb == b and ep >= cutoff}
    # Rolled up to a day (all three hours): the same answer, with the provenance of its hours.
    daily = rollup(VIEW, merged, Bucket.parse("day"))
    if events:
        assert present(VIEW, daily[0].states) == truth(events)
        assert daily[0].from_batch
        assert daily[0].realtime_epochs == {ep for _, ep, _ in events if ep >= cutoff}
    else:
        assert daily == {}


@given(events_st)
def test_no_published_batch_counts_all_realtime(events: list[tuple[int, int, int | None]]) -> None:
    realtime = [(e[0], e[1], encode(VIEW, states([e]))) for e in events]
    merged = merge(VIEW, [], realtime, None)
    assert {b: present(VIEW, m.states) for b, m in merged.items()} == {
        b: truth([e for e in events if e[0] == b]) for b in {e[0] for e in events}
    }
    assert all(not m.from_batch for m in merged.values())


@given(events_st)
def test_rollup_equals_coarse_single_pass(events: list[tuple[int, int, int | None]]) -> None:
    realtime = [(e[0], e[1], encode(VIEW, states([e]))) for e in events]
    daily = rollup(VIEW, merge(VIEW, [], realtime, None), Bucket.parse("day"))
    if events:
        assert set(daily) == {0}
        assert present(VIEW, daily[0].states) == truth(events)
        assert daily[0].realtime_epochs == {e[1] for e in events}
    else:
        assert daily == {}


def example_states(view_name: str) -> dict[str, Any]:
    """States of a few events for every aggregation of an example view (all widths)."""
    view = CATALOG.view(view_name)
    values = {"count": 1, "sum": 7, "min": 3.5, "max": 9.25, "mean": 4.0}
    s = zero(view)
    for i in range(5):
        for name, m in view.monoids.items():
            agg = view.aggregations[name].fn
            v = f"visitor{i}" if agg == "distinct" else float(i) if agg == "quantiles" else None
            s[name] = m.plus(s[name], m.lift(v if v is not None else values[agg] + i))
    return s


def test_encode_decode_round_trip_every_example_view() -> None:
    """Stored columns map back to the same states, with aggregations of 1 and 2 columns in
    any order (the column offset of each aggregation is right)."""
    for name in ("web_pageviews", "iot_temperature", "cloud_metering"):
        view = CATALOG.view(name)
        s = example_states(name)
        row = encode(view, s)
        assert len(row) == len(view.value_columns)
        assert present(view, decode(view, row), q=0.5) == present(view, s, q=0.5)


def test_present_passes_the_quantile_through() -> None:
    view = CATALOG.view("iot_temperature")
    s = example_states("iot_temperature")  # temperatures 0.0 .. 4.0
    assert present(view, s, q=0.0)["temp_q"] == 0.0
    assert present(view, s, q=1.0)["temp_q"] == 4.0
    assert present(view, s, q=0.5)["temp_q"] == 2.0


def test_rollup_keeps_batch_provenance_of_any_fine_bucket() -> None:
    """A coarse bucket holds batch data when any of its fine buckets does, in whatever
    order they come (batch first, then a real-time-only bucket)."""
    one = encode(VIEW, states([(0, 0, 5)]))
    merged = merge(VIEW, [(0, one)], [(3600, 600, one), (7200, 600, one)], cutoff=600)
    daily = rollup(VIEW, merged, Bucket.parse("day"))
    assert list(daily) == [0]
    assert daily[0].from_batch is True and daily[0].realtime_epochs == {600}
    assert present(VIEW, daily[0].states) == {"instance_seconds": 15, "records": 3}
