"""The speed layer's duplicate index: the rule of ``speed/dedup.py``, checked against a
plain-Python reference, whatever the micro-batch boundaries, and across a rebuild."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from speed.dedup import KEPT, DedupIndex, Verdict

EPOCH = 10


def reference(copies: list[tuple[int, int]], horizon: int, retain: int) -> list[Verdict]:
    """The README's rule on copies ``(id, epoch)`` in Kafka order, by hand: a copy is
    dropped iff a copy of its id was seen at most ``horizon`` seconds earlier; one seen
    longer ago but at most ``retain`` is listed; a copy whose id was last seen in a later
    epoch is REORDERED."""
    last: dict[int, int] = {}
    out = []
    for ident, epoch in copies:
        seen = last.get(ident)
        if seen is None:
            out.append(Verdict.NEW)
        elif epoch < seen:
            out.append(Verdict.REORDERED)
        elif epoch - seen <= horizon:
            out.append(Verdict.DUPLICATE)
        elif epoch - seen <= retain:
            out.append(Verdict.BEYOND_HORIZON)
        else:
            out.append(Verdict.NEW)
        last[ident] = max(epoch, seen if seen is not None else epoch)
    return out


def judge_in_batches(
    index: DedupIndex, copies: list[tuple[int, int]], cuts: list[int]
) -> list[Verdict]:
    out: list[Verdict] = []
    bounds = [0, *sorted(set(cuts)), len(copies)]
    for lo, hi in itertools.pairwise(bounds):
        part = copies[lo:hi]
        ids = np.array([c[0] for c in part], dtype=np.int64)
        epochs = np.array([c[1] for c in part], dtype=np.int64)
        out += [Verdict(int(v)) for v in index.judge(ids, ids * 31 + 7, epochs)]
        if len(epochs):
            index.advance(int(epochs.max()))
        index.evict()
    return out


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[tuple[int, int]], list[int]]:
    """Copies in Kafka order (epochs never go back) with ids from a small pool, so
    duplicates near and far abound, and arbitrary micro-batch cuts."""
    n = draw(st.integers(0, 120))
    steps = draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))
    ids = draw(st.lists(st.integers(-5, 25), min_size=n, max_size=n))
    epochs = list(np.cumsum(steps) * EPOCH)
    cuts = draw(st.lists(st.integers(0, n), max_size=12))
    return list(zip(ids, (int(e) for e in epochs), strict=True)), cuts


@settings(max_examples=300, deadline=None, derandomize=True)
@given(streams(), st.integers(0, 6), st.integers(0, 6), st.integers(0, 2))
def test_verdicts_follow_the_rule_whatever_the_micro_batches(
    stream: tuple[list[tuple[int, int]], list[int]], horizon_e: int, more_e: int, slack_e: int
) -> None:
    copies, cuts = stream
    horizon, retain = horizon_e * EPOCH, (horizon_e + more_e) * EPOCH
    want = reference(copies, horizon, retain)
    index = DedupIndex(horizon=horizon, retain=retain, slack=slack_e * EPOCH)
    assert judge_in_batches(index, copies, cuts) == want
    assert judge_in_batches(DedupIndex(horizon, retain, slack_e * EPOCH), copies, []) == want


def test_a_copy_within_the_horizon_is_dropped_and_past_it_counted_and_listed() -> None:
    index = DedupIndex(horizon=60, retain=120)
    one = np.array([42])
    assert index.judge(one, one, np.array([0]))[0] == Verdict.NEW
    assert index.judge(one, one, np.array([60]))[0] == Verdict.DUPLICATE  # 60 s: within
    assert index.judge(one, one, np.array([121]))[0] == Verdict.BEYOND_HORIZON  # 61 s after
    assert Verdict.BEYOND_HORIZON in KEPT and Verdict.DUPLICATE not in KEPT


def test_a_copy_read_after_a_later_one_is_reordered() -> None:
    index = DedupIndex(horizon=60, retain=120)
    ids = np.array([7, 8])
    assert list(index.judge(ids, ids, np.array([20, 20]))) == [Verdict.NEW] * 2
    # Partition 1 was read up to epoch 20 first; partition 0's copy of epoch 10 comes later,
    # and a second copy of it in the same micro-batch too (judged against epoch 20 as well).
    got = index.judge(np.array([7, 7]), np.array([7, 7]), np.array([10, 10]))
    assert list(got) == [Verdict.REORDERED, Verdict.REORDERED]


def test_an_entry_older_than_the_floor_no_longer_counts_evicted_or_not() -> None:
    """Eviction is lazy (runs shrink when merged); the verdict must not depend on it."""
    index = DedupIndex(horizon=10, retain=20, slack=0)
    index.judge(np.array([1, 2]), np.array([1, 2]), np.array([0, 100]))
    index.advance(100)  # floor 80: id 1 (epoch 0) no longer counts, evicted or not
    assert index.judge(np.array([1]), np.array([1]), np.array([100]))[0] == Verdict.NEW


def test_the_second_hash_tells_ids_with_the_same_first_hash_apart() -> None:
    index = DedupIndex(horizon=60, retain=120)
    index.judge(np.array([5]), np.array([1]), np.array([0]))
    assert index.judge(np.array([5]), np.array([2]), np.array([10]))[0] == Verdict.NEW


def test_a_rebuilt_index_judges_like_the_live_one() -> None:
    """A restarted job seeds its index from the master dataset (one row per id: its latest
    epoch); the verdicts of the micro-batches after that are the live index's."""
    rng = np.random.default_rng(3)
    history = rng.integers(0, 500, 2000)
    epochs = np.sort(rng.integers(0, 30, 2000)) * EPOCH
    live = DedupIndex(horizon=100, retain=200, slack=30)
    live.judge(history, history, epochs)
    live.advance(int(epochs.max()))
    live.evict()
    latest: dict[int, int] = {}
    for i, e in zip(history.tolist(), epochs.tolist(), strict=True):
        latest[i] = max(latest.get(i, e), e)
    floor = int(epochs.max()) - 200 - 30
    kept = {i: e for i, e in latest.items() if e >= floor}
    rebuilt = DedupIndex(horizon=100, retain=200, slack=30)
    rebuilt.advance(int(epochs.max()))
    ids = np.array(list(kept), dtype=np.int64)
    rebuilt.load(ids, ids, np.array(list(kept.values()), dtype=np.int64))
    nxt = rng.integers(0, 700, 500)
    at = np.full(500, int(epochs.max()) + EPOCH)
    assert list(rebuilt.judge(nxt, nxt, at)) == list(live.judge(nxt, nxt, at))


def test_eviction_bounds_memory_by_the_retained_epochs() -> None:
    index = DedupIndex(horizon=50, retain=100, slack=0)
    for b in range(60):
        ids = np.arange(b * 1000, (b + 1) * 1000, dtype=np.int64)
        index.judge(ids, ids, np.full(1000, b * EPOCH))
        index.advance(b * EPOCH)
        index.evict()
    # Epochs 490..590 (11 epochs of 1000 ids) are retained; merges may keep a few older.
    assert 11_000 <= len(index) <= 16_000
    assert index.nbytes == 24 * len(index)


def test_horizon_must_fit_in_retention() -> None:
    with pytest.raises(ValueError, match="horizon"):
        DedupIndex(horizon=10, retain=5)
