"""Epoch completeness from broker timestamps per partition (speed.completeness), no JVM."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from lamina.settings import load_settings
from lamina.views import load_views
from speed.completeness import (
    EpochMarker,
    advance,
    behind,
    complete_before,
    newest_stamps,
    unread_marks,
)
from tests.conftest import ROOT

ES = 10


def test_newest_stamps_per_partition() -> None:
    parts = np.array([0, 1, 0, 2, 1])
    stamps = np.array([5_000, 7_000, 9_000, 1_000, 3_000])
    assert newest_stamps(parts, stamps) == {0: 9_000, 1: 7_000, 2: 1_000}
    assert newest_stamps(np.array([], dtype=int), np.array([], dtype=int)) == {}


def test_advance_never_goes_back() -> None:
    assert advance({0: 10, 1: 50}, {0: 5, 1: 60, 2: 1}) == {0: 10, 1: 60, 2: 1}


def test_complete_before_is_the_oldest_partition_epoch() -> None:
    highs = {0: 35_000, 1: 21_000}  # epochs 30 and 20
    assert complete_before(highs, [0, 1], ES) == 20
    # A partition of the topic without any archived record holds everything open.
    assert complete_before(highs, [0, 1, 2], ES) is None
    assert complete_before({}, [], ES) is None


def test_behind_lists_partitions_without_a_record_of_the_current_epoch() -> None:
    highs = {0: 35_000, 1: 21_000}
    assert behind(highs, [0, 1, 2], now_ms=39_999, epoch_seconds=ES) == [1, 2]
    assert behind(highs, [0, 1, 2], now_ms=40_000, epoch_seconds=ES) == [0, 1, 2]


@given(
    st.lists(st.tuples(st.integers(0, 3), st.integers(0, 10**6)), min_size=1, max_size=200),
    st.integers(1, 120),
)
def test_every_record_of_an_epoch_before_complete_is_already_read(
    records: list[tuple[int, int]], es: int
) -> None:
    """Whatever prefix of each partition was read (stamps non-decreasing per partition, as
    LogAppendTime makes them), no unread record falls in an epoch declared complete."""
    by_part: dict[int, list[int]] = {}
    for p, t in records:
        by_part.setdefault(p, []).append(t)
    logs = {p: sorted(ts) for p, ts in by_part.items()}
    read = {p: ts[: (len(ts) + 1) // 2] for p, ts in logs.items()}
    highs = {p: max(ts) for p, ts in read.items() if ts}
    done = complete_before(highs, list(logs), es)
    if done is None:
        return
    for p, ts in logs.items():
        for t in ts[len(read[p]) :]:
            assert t // 1000 // es * es >= done


def test_unread_marks_are_those_at_or_past_the_next_offset_to_read() -> None:
    marks = {"t": {0: 10, 1: 4, 2: 7}, "u": {0: 3}}
    # endOffset is the next offset to read: a mark at 10 is read once it is past 10.
    read = {"t": {"0": 11, "1": 4, "2": 9}, "u": {"0": 3}}
    assert unread_marks(marks, read) == {"t": [1], "u": [0]}
    assert unread_marks(marks, {}) == {"t": [0, 1, 2], "u": [0]}
    assert unread_marks(marks, {"t": {"0": 11, "1": 5, "2": 8}, "u": {"0": 4}}) == {}
    assert unread_marks({}, read) == {}


def test_a_mark_that_cannot_be_written_is_counted(tmp_path: Path) -> None:
    """Kafka unreachable (a port nobody listens on): no mark, no exception, one failure
    counted per attempt, and a stopped marker writes nothing."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: connections are refused
    base = load_settings(ROOT / "conf" / "lamina.toml")
    settings = base.model_copy(update={"kafka": base.kafka.model_copy(update={"port": port})})
    source = load_views(ROOT / "conf" / "views.toml").view("web_pageviews").source
    marker = EpochMarker(settings, timeout_ms=1000)
    assert marker.mark_idle(source, {}) == []
    assert marker.failures == 1 and marker.written == {}
    assert marker.stop(timeout_s=1) == {}
    marker.mark_idle_soon(source, {})
    assert marker.failures == 1  # stopped: not even tried
