"""Bucket laws (after Summingbird's BatcherLaws) and the ingest epoch."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lamina.buckets import Bucket, ingest_epoch
from lamina.errors import ConfigError

buckets = st.builds(
    lambda unit, n: Bucket.parse(f"{n}{unit}"), st.sampled_from("mhd"), st.integers(1, 90)
)
instants = st.integers(-(4 * 10**12), 4 * 10**12).map(lambda ms: ms / 1000)  # ms precision


@given(buckets, instants)
def test_instant_lies_in_its_bucket(b: Bucket, t: float) -> None:
    start = b.bucket_of(t)
    assert start <= t < b.end(start)


@given(buckets, instants)
def test_bucket_of_its_start_is_itself(b: Bucket, t: float) -> None:
    start = b.bucket_of(t)
    assert b.bucket_of(start) == start
    assert b.bucket_of(b.end(start)) == b.end(start)


@given(buckets, st.integers(1, 30), instants)
def test_coarser_multiple_contains_finer_buckets_whole(b: Bucket, k: int, t: float) -> None:
    coarse = Bucket(b.seconds * k, "x")
    assert b.divides(coarse)
    fine = b.bucket_of(t)
    assert coarse.bucket_of(fine) == coarse.bucket_of(b.end(fine) - 1)


@given(buckets, instants, st.integers(0, 10**9).map(lambda ms: ms / 1000))
def test_starts_cover_range(b: Bucket, t: float, width: float) -> None:
    starts = b.starts(t, t + width)
    if not width:
        assert starts == []
        return
    assert starts[0] == b.bucket_of(t)
    assert all(y - x == b.seconds for x, y in itertools.pairwise(starts))
    assert b.end(starts[-1]) >= t + width  # the last bucket reaches the end...
    assert starts[-1] < t + width  # ... and overlaps the range: no bucket past it


@pytest.mark.parametrize(
    ("fine", "coarse", "divides"),
    [
        ("minute", "90m", True),
        ("15m", "hour", True),
        ("hour", "day", True),
        ("hour", "90m", False),
        ("day", "hour", False),
        ("2h", "3h", False),
        ("6h", "6h", True),
    ],
)
def test_divides_only_whole_multiples(fine: str, coarse: str, divides: bool) -> None:
    assert Bucket.parse(fine).divides(Bucket.parse(coarse)) is divides


@pytest.mark.parametrize(
    ("text", "seconds", "label"),
    [
        ("minute", 60, "minute"),
        ("hour", 3600, "hour"),
        ("1d", 86400, "day"),
        ("15m", 900, "15m"),
        ("15 minutes", 900, "15m"),
        ("2H", 7200, "2h"),
    ],
)
def test_parse(text: str, seconds: int, label: str) -> None:
    b = Bucket.parse(text)
    assert (b.seconds, b.label) == (seconds, label)


@pytest.mark.parametrize("text", ["", "week", "0h", "-1h", "h1", "1.5h"])
def test_bad_bucket_says_how_to_fix(text: str) -> None:
    with pytest.raises(ConfigError, match="use minute, hour or day"):
        Bucket.parse(text)


@given(st.integers(0, 2**45), st.sampled_from([10, 60, 300, 3600]))
def test_ingest_epoch(ts_ms: int, epoch_s: int) -> None:
    e = ingest_epoch(ts_ms, epoch_s)
    assert type(e) is int  # stored as a bigint and compared with cutoffs: never a float
    assert e % epoch_s == 0
    assert e * 1000 <= ts_ms < (e + epoch_s) * 1000
