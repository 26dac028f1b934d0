"""The bulk writer's cut of rows into single-partition batches
(:func:`serving.writer.partition_runs`)."""

from __future__ import annotations

import random

from serving.writer import BATCH_BYTES, BATCH_ROWS, partition_runs, row_bytes


def test_row_bytes_counts_blobs_text_and_numbers() -> None:
    assert row_bytes((b"x" * 1000,)) == 1004
    assert row_bytes(("é",)) == 2 + 4  # UTF-8 bytes, not characters
    assert row_bytes((1, 2.5, None, True)) == 4 * 8 + 4 * 4
    assert row_bytes((2**70,)) == 16 + 4  # a varint beyond 64 bits


def test_runs_are_single_partition_bounded_and_keep_every_row_in_order() -> None:
    rng = random.Random(3)
    rows: list[tuple[str, int, bytes]] = []
    for key in ("a", "big", "fat", "huge", "b"):
        n = {"big": 2 * BATCH_ROWS + 50, "fat": 10, "huge": 3}.get(key, 5)
        size = {"fat": BATCH_BYTES // 3, "huge": BATCH_BYTES + 1}.get(key, 0)
        rows += [(key, i, rng.randbytes(size or rng.randrange(50))) for i in range(n)]
    runs = list(partition_runs(rows, 1))
    assert [r for run in runs for r in run] == rows
    for run in runs:
        assert len({r[0] for r in run}) == 1
        assert len(run) <= BATCH_ROWS
        assert len(run) == 1 or sum(row_bytes(r) for r in run) <= BATCH_BYTES
    per_key = {k: [len(run) for run in runs if run[0][0] == k] for k in ("big", "fat", "huge")}
    assert per_key == {"big": [100, 100, 50], "fat": [2, 2, 2, 2, 2], "huge": [1, 1, 1]}


def test_interleaved_keys_still_land_in_smaller_runs() -> None:
    rows = [("a", 1), ("b", 1), ("a", 2), ("a", 3)]
    assert list(partition_runs(rows, 1)) == [[("a", 1)], [("b", 1)], [("a", 2), ("a", 3)]]
    assert list(partition_runs(rows, 1, max_rows=1)) == [[r] for r in rows]
    assert list(partition_runs([], 1)) == []
