"""The merge law: wherever the cutoff falls, batch ⊕ real-time == one pass over all events."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from lamina.buckets import Bucket
from lamina.views import load_views
from serving.merge import encode, merge, present, rollup, zero

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
