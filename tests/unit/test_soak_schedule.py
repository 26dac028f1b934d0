"""The soak harness's fault schedule: every kind at least ``min_each`` times, none twice in
one cycle (a cycle runs each kind once: a repeat would be counted but not injected)."""

from __future__ import annotations

from collections import Counter

import pytest

from bench.soak import FAULTS, Config


@pytest.mark.parametrize(("cycles", "min_each"), [(10, 3), (2, 1), (3, 3), (7, 2), (20, 3)])
def test_every_fault_kind_comes_often_enough_and_never_twice_in_a_cycle(
    cycles: int, min_each: int
) -> None:
    plan = Config(cycles=cycles, min_each=min_each).schedule()
    assert len(plan) == cycles
    counts = Counter(k for cycle in plan for k in cycle)
    assert set(counts) == set(FAULTS) and min(counts.values()) >= min_each, counts
    assert all(len(set(cycle)) == len(cycle) for cycle in plan), plan
    assert all(plan), plan  # no cycle without a fault
