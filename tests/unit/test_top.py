"""Top-N and key listings without I/O: the index merge equals the events' truth under the
cutoff rule, the ranking's order, key texts that read back as the same key, and every bad
parameter a 400 with a hint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lamina.errors import QueryError
from lamina.settings import Settings
from lamina.views import load_views
from serving.merge import (
    add_totals,
    encode,
    fold_aggregation,
    keys_with_data,
    merge,
    plus,
    rank,
    zero,
)
from serving.query import BatchFold, BatchFolds, QueryChecks, key_text, parse_key
from serving.store import Published
from tests.unit.test_query_keys import CATALOG as KEYED

ROOT = Path(__file__).resolve().parents[2]
CATALOG = load_views(ROOT / "conf" / "views.toml")
VIEW = CATALOG.view("cloud_metering")  # sum(long) + count: exact
PAGES = CATALOG.view("web_pageviews")  # count, distinct (HLL), mean

rows_st = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c", "d"]),  # key
        st.sampled_from([0, 3600, 7200]),  # bucket
        st.one_of(st.none(), st.integers(0, 9).map(lambda e: e * 60)),  # None: batch row
        st.integers(0, 10_000),  # instance seconds
    ),
    max_size=40,
)


def values(secs: int) -> tuple[Any, ...]:
    """The stored columns of one event's states."""
    states = zero(VIEW)
    states["instance_seconds"] = VIEW.monoids["instance_seconds"].lift(secs)
    states["records"] = 1
    return encode(VIEW, states)


@given(rows_st, st.one_of(st.none(), st.integers(0, 10).map(lambda e: e * 60)))
def test_the_index_fold_takes_what_a_point_merge_takes(
    rows: list[tuple[str, int, int | None, int]], cutoff: int | None
) -> None:
    # batch rows (epoch None) stand for events of epochs < cutoff; real-time rows count only
    # at or after it (when nothing is published, all of them).
    batch = [(b, key, *values(s)) for key, b, e, s in rows if e is None]
    realtime = [(b, e, key, *values(s)) for key, b, e, s in rows if e is not None]
    want: dict[str, dict[str, Any]] = {}
    for key, _, e, s in rows:
        if e is None or cutoff is None or e >= cutoff:
            cur = want.setdefault(key, {"instance_seconds": 0, "records": 0})
            cur["instance_seconds"] += s
            cur["records"] += 1
    # The point query's merge of each key, its buckets folded: the truth above.
    got: dict[tuple[Any, ...], dict[str, Any]] = {}
    for key in {(r[1],) for r in batch} | {(r[2],) for r in realtime}:
        merged = merge(
            VIEW,
            [(r[0], r[2:]) for r in batch if (r[1],) == key],
            [(r[0], r[1], r[3:]) for r in realtime if (r[2],) == key],
            cutoff,
        )
        if merged:
            got[key] = zero(VIEW)
            for m in merged.values():
                got[key] = plus(VIEW, got[key], m.states)
    assert {k[0]: v for k, v in got.items()} == want
    assert keys_with_data(VIEW, batch, realtime, cutoff) == set(got)
    # One aggregation's columns alone (what top-N reads to rank) fold to the same states.
    n = len(VIEW.keys)
    for name, _, i, j in VIEW.value_layout:
        alone = fold_aggregation(
            VIEW,
            name,
            [(*r[: 1 + n], *r[1 + n + i : 1 + n + j]) for r in batch],
            [(*r[: 2 + n], *r[2 + n + i : 2 + n + j]) for r in realtime],
            cutoff,
        )
        assert alone == {k: {name: v[name]} for k, v in got.items()}
        # The batch part folded alone (what the API caches per version and range), the
        # real-time part added on top: the same states, the cached fold left unchanged.
        batch_part = fold_aggregation(
            VIEW, name, [(*r[: 1 + n], *r[1 + n + i : 1 + n + j]) for r in batch], [], None
        )
        kept = {k: dict(v) for k, v in batch_part.items()}
        rt_part = fold_aggregation(
            VIEW, name, [], [(*r[: 2 + n], *r[2 + n + i : 2 + n + j]) for r in realtime], cutoff
        )
        assert add_totals(VIEW, name, batch_part, rt_part) == alone
        assert batch_part == kept
        assert keys_with_data(VIEW, batch, [], None) | keys_with_data(
            VIEW, [], realtime, cutoff
        ) == set(got)


def test_rank_largest_first_ties_in_key_order_empty_last() -> None:
    totals = {
        ("b",): {"load_ms_mean": (30.0, 2), "pageviews": 5},
        ("a",): {"load_ms_mean": (10.0, 1), "pageviews": 5},
        ("c",): {"load_ms_mean": (0.0, 0), "pageviews": 9},  # a mean of nothing: no value
        ("d",): {"load_ms_mean": (99.0, 1), "pageviews": 1},
    }
    assert rank(PAGES, totals, "pageviews", 10) == [
        (("c",), 9),
        (("a",), 5),
        (("b",), 5),
        (("d",), 1),
    ]
    assert rank(PAGES, totals, "load_ms_mean", 10) == [
        (("d",), 99.0),
        (("b",), 15.0),
        (("a",), 10.0),
        (("c",), None),
    ]
    assert rank(PAGES, totals, "pageviews", 2) == [(("c",), 9), (("a",), 5)]


def test_a_sketch_ranks_by_its_estimate() -> None:
    hll = PAGES.monoids["visitors"]
    small = hll.plus(hll.zero(), hll.lift("v1"))
    big = hll.zero()
    for i in range(50):
        big = hll.plus(big, hll.lift(f"v{i}"))
    totals = {("x",): {"visitors": small}, ("y",): {"visitors": big}}
    [(first, estimate), (second, one)] = rank(PAGES, totals, "visitors", 5)
    assert (first, second, one) == (("y",), ("x",), 1) and abs(estimate - 50) <= 2


names = st.text(alphabet='ab,\\[]" ', max_size=6)


@given(names, st.integers(-(2**63), 2**63 - 1), st.booleans())
def test_a_key_text_reads_back_as_the_same_key(name: str, n: int, flag: bool) -> None:
    for view, key in (
        (KEYED.view("by_three"), (name, n, flag)),
        (KEYED.view("by_string"), (name,)),
        (KEYED.view("by_long"), (n,)),
        (KEYED.view("by_bool"), (flag,)),
    ):
        assert parse_key(view, key_text(view, key)) == key


@given(st.floats(allow_nan=False, allow_infinity=False), st.integers(-5, 5))
def test_a_double_key_text_reads_back_exactly(x: float, n: int) -> None:
    view = KEYED.view("by_two_numbers")
    assert parse_key(view, key_text(view, (x, n))) == (x, n)


SERVICE = QueryChecks(CATALOG, Settings())  # the checks alone: no I/O
RANGE = ("1795000000", "1795086400")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"by": None}, "no aggregation to rank by"),
        ({"by": "nope"}, "has no aggregation 'nope'"),
        ({"by": "records", "limit": 0}, "limit=0 is out of range"),
        ({"by": "records", "limit": -3}, "limit=-3 is out of range"),
        ({"by": "records", "limit": 10**9}, "limit=1000000000 is out of range"),
        ({"by": "records", "q": 1.5}, "q=1.5 is out of range"),
        ({"by": "records", "start": "nan"}, "from='nan' is outside"),
        ({"by": "records", "end": "inf"}, "to='inf' is outside"),
        ({"by": "records", "start": "1e20", "end": "0"}, "outside"),
        ({"by": "records", "start": "1795086400", "end": "1795000000"}, "empty time range"),
        ({"by": "records", "start": "0", "end": "1795000000"}, "more than the limit"),
        ({"top": False, "prefix": "x" * 1001}, "prefix of 1001 characters is too long"),
        ({"top": False, "prefix": "a\x00"}, "control characters"),
        ({"top": False, "limit": 0}, "limit=0 is out of range"),
    ],
)
def test_bad_parameters_are_400_with_a_hint(kwargs: dict[str, Any], message: str) -> None:
    args = {"start": RANGE[0], "end": RANGE[1], "limit": None, "top": True} | kwargs
    start, end, limit = args.pop("start"), args.pop("end"), args.pop("limit")
    with pytest.raises(QueryError, match=message) as err:
        SERVICE.plan_index("cloud_metering", start, end, limit, **args)
    assert err.value.http_status == 400 and err.value.hint


def test_defaults() -> None:
    top = SERVICE.plan_index("cloud_metering", *RANGE, None, by="records", top=True)
    keys = SERVICE.plan_index("cloud_metering", *RANGE, None, top=False)
    assert (top.limit, keys.limit, keys.prefix) == (10, 100, "")
    assert (top.range.start, top.range.end) == (1794999600, 1795089600)  # whole buckets


def test_batch_folds_are_keyed_by_the_whole_published_version_and_bounded_by_keys() -> None:
    folds = BatchFolds(max_keys=10, keyspace="ks")
    plan = SERVICE.plan_index("cloud_metering", *RANGE, None, by="records", top=True)
    v1 = Published("cloud_metering", 1, cutoff=600, rows=5, published_at=0.0, definition_hash="h")
    k1 = folds.key(v1, plan)
    assert folds.get(k1) is None and folds.misses == 1
    folds.put(k1, BatchFold({("a",): {"records": 1}}, rows=1, keys=1))
    assert folds.get(k1) is not None and folds.hits == 1
    # Anything that names another version's rows is another entry: its number, its cutoff
    # (a recreated keyspace's version 1), its definition, the keyspace; and another range or
    # aggregation.
    other_plan = SERVICE.plan_index(
        "cloud_metering", RANGE[0], "1795090000", None, by="records", top=True
    )
    keys_plan = SERVICE.plan_index("cloud_metering", *RANGE, None, top=False)
    for other in (
        folds.key(Published("cloud_metering", 2, 600, 5, 0.0, "h"), plan),
        folds.key(Published("cloud_metering", 1, 1200, 5, 0.0, "h"), plan),
        folds.key(Published("cloud_metering", 1, 600, 5, 0.0, "h2"), plan),
        BatchFolds(10, "other").key(v1, plan),
        folds.key(v1, other_plan),
        folds.key(v1, keys_plan),
    ):
        assert other != k1 and folds.get(other) is None
    # At most max_keys keys in all, least recently used out; a fold larger than that is
    # not kept; 0 keeps nothing.
    folds.put("b", BatchFold(None, rows=0, keys=6))
    folds.get(k1)
    folds.put("c", BatchFold(None, rows=0, keys=4))  # 1 + 6 + 4 > 10: "b" goes
    assert folds.get("b") is None and folds.get(k1) is not None and folds.get("c") is not None
    folds.put("d", BatchFold(None, rows=0, keys=11))
    assert folds.get("d") is None and len(folds) == 2
    off = BatchFolds(max_keys=0, keyspace="ks")
    off.put(k1, BatchFold({}, rows=0, keys=0))
    assert off.get(k1) is None
