"""Monoid laws for every aggregation (hypothesis), SQL null semantics, sketch accuracy."""

from __future__ import annotations

import math
from functools import reduce
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lamina.errors import QueryError
from lamina.monoids import MONOIDS, Count, Distinct, Mean, Monoid, Quantiles

ints = st.lists(st.one_of(st.none(), st.integers(-(10**9), 10**9)), max_size=30)
EXACT = ["count", "sum", "min", "max", "mean"]


def state_of(m: Monoid, values: list[Any]) -> Any:
    return m.total(m.lift(v) for v in values)


def close(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    return bool(a == b)


@pytest.mark.parametrize("name", EXACT)
@given(a=ints, b=ints, c=ints)
def test_exact_monoid_laws(name: str, a: list[Any], b: list[Any], c: list[Any]) -> None:
    m = MONOIDS[name]("long", field="x")
    x, y, z = state_of(m, a), state_of(m, b), state_of(m, c)
    assert m.plus(m.plus(x, y), z) == m.plus(x, m.plus(y, z))
    assert m.plus(m.zero(), x) == x == m.plus(x, m.zero())
    # Splitting the input anywhere and combining gives the single-pass answer.
    assert m.plus(x, y) == state_of(m, a + b)


@given(ints)
def test_exact_aggregates_follow_sql(values: list[Any]) -> None:
    present = [v for v in values if v is not None]
    expect = {
        "sum": sum(present) if present else None,
        "min": min(present) if present else None,
        "max": max(present) if present else None,
        "mean": sum(present) / len(present) if present else None,
    }
    for name, want in expect.items():
        m = MONOIDS[name]("long", field="x")
        assert close(m.present(state_of(m, values)), want) or (
            want is None and m.present(state_of(m, values)) is None
        )
    assert Count(None).present(state_of(Count(None), values)) == len(values)
    assert Count("long", field="x").present(state_of(Count("long", field="x"), values)) == len(
        present
    )


def test_count_of_nothing_is_zero_not_null() -> None:
    assert Count(None).present(Count(None).zero()) == 0
    assert Mean("double").present(Mean("double").zero()) is None


def test_mean_round_trips_through_storage_columns() -> None:
    m = Mean("double", field="x")
    s = state_of(m, [1.0, 2.0, None, 6.0])
    assert m.from_row(m.to_row(s)) == s
    assert m.from_row(m.to_row(None)) is None
    assert m.columns("t") == [("t_sum", "double"), ("t_count", "bigint")]


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, 5000), max_size=400), st.lists(st.integers(0, 5000), max_size=400))
def test_distinct_union_is_order_free_and_accurate(a: list[int], b: list[int]) -> None:
    m = Distinct("long", field="x")
    x, y = state_of(m, a), state_of(m, b)
    assert m.present(m.plus(x, y)) == m.present(m.plus(y, x))
    assert m.present(m.plus(m.plus(x, y), m.zero())) == m.present(m.plus(x, y))
    truth = len(set(a) | set(b))
    assert abs(m.present(m.plus(x, y)) - truth) <= max(1, truth * m.relative_error())


def test_distinct_at_scale_within_stated_error() -> None:
    m = Distinct("string", field="x")
    parts = [m.total(m.lift(f"v{i}") for i in range(j, 200_000, 4)) for j in range(4)]
    est = m.present(m.total(parts))
    assert abs(est - 200_000) <= 200_000 * m.relative_error()


def test_quantiles_merge_within_rank_error() -> None:
    m = Quantiles("double", field="x")
    parts = [m.total(m.lift(float(v)) for v in range(j, 100_000, 3)) for j in range(3)]
    merged = m.total(parts)
    eps = m.rank_error()
    for q in (0.05, 0.5, 0.95, 0.99):
        got = m.present(merged, q=q)
        assert abs(got / 100_000 - q) <= eps + 1e-6
    assert m.present(None, q=0.5) is None
    with pytest.raises(QueryError, match="0 <= q <= 1"):
        m.present(merged, q=1.5)


def test_every_monoid_has_an_identity() -> None:
    for name, cls in MONOIDS.items():
        m = cls("double", field="x")
        one = m.lift(3.0)
        assert reduce(m.plus, [m.zero(), one, m.zero()]) is not None, name
