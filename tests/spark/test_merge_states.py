"""``merge_states`` (the Spark ``plus`` incremental builds use) agrees with one aggregation
of all the events, and with the monoids' ``plus`` the speed layer and serving use."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.spark.test_parity import CATALOG, GENERATORS, cells, write_events


@pytest.mark.parametrize("name", list(GENERATORS))
def test_merged_halves_equal_one_aggregation(spark: Any, tmp_path: Path, name: str) -> None:
    from engine.schema import event_schema
    from engine.translate import aggregate, merge_states, mergeable
    from serving.merge import plus, zero

    view = CATALOG.view(name)
    assert mergeable(view) == []
    events = GENERATORS[name](1500, seed=23).good
    schema = event_schema(view.source)
    parts = []
    for i, part in enumerate((events[::2], events[1::2])):  # most cells are in both halves
        write_events(view, part, tmp_path / f"half{i}")
        parts.append(aggregate(spark.read.schema(schema).parquet(str(tmp_path / f"half{i}")), view))
    write_events(view, events, tmp_path / "all")
    whole = cells(
        view, aggregate(spark.read.schema(schema).parquet(str(tmp_path / "all")), view).collect()
    )
    merged_df = merge_states(parts[0].unionByName(parts[1]), view)
    assert merged_df.columns == parts[0].columns
    merged = cells(view, merged_df.collect())
    halves = [cells(view, p.collect()) for p in parts]
    both = set(halves[0]) & set(halves[1])
    assert len(both) >= 10, "the halves should share cells"
    assert set(merged) == set(whole)
    for cell, states in whole.items():
        for agg, m in view.monoids.items():
            assert m.agrees(merged[cell][agg], states[agg]), (cell, agg)
        # The monoids' plus (speed layer, serving) of the two halves' states.
        python = plus(view, *(h.get(cell) or zero(view) for h in halves))
        for agg, m in view.monoids.items():
            assert m.agrees(merged[cell][agg], python[agg]), (cell, agg)
            if m.exact and not isinstance(python[agg], float | tuple):
                assert merged[cell][agg] == python[agg], (cell, agg)


def test_every_monoid_has_a_spark_merge() -> None:
    """A monoid without a merge would silently make every view using it build in full."""
    from engine.translate import AGGREGATIONS, MERGES

    assert set(MERGES) == set(AGGREGATIONS)


def _exchanges(df: Any) -> list[int]:
    """The partition counts of ``df``'s shuffles (its plan's hash-partitioned exchanges)."""
    plan = str(df._jdf.queryExecution().executedPlan().toString())
    return [int(n) for n in re.findall(r"Exchange hashpartitioning\(.*?, (\d+)\)", plan)]


def test_an_incremental_builds_shuffles_are_sized_from_its_rows(spark: Any, tmp_path: Path) -> None:
    """The merge is cut into the tasks the build sized from its rows
    (:func:`batch.recompute.write_tasks`), not ``spark.sql.shuffle.partitions``, and the
    new events' states are combined before their exchange; ``write_tasks`` stays within its
    floor and ceiling."""
    from batch.incremental import merge_input
    from batch.recompute import MAX_SHUFFLE_TASKS, write_tasks
    from engine.schema import event_schema
    from engine.translate import aggregate

    assert write_tasks(0, 2) == 2 and write_tasks(2_500_000, 2) == 3
    assert write_tasks(10**13, 2) == MAX_SHUFFLE_TASKS and write_tasks(10**13, 9000) == 9000
    view = CATALOG.view("web_pageviews")
    schema = event_schema(view.source)
    events = GENERATORS["web_pageviews"](300, seed=29).good
    write_events(view, events[:200], tmp_path / "old")
    write_events(view, events[200:], tmp_path / "new")
    prev = aggregate(spark.read.schema(schema).parquet(str(tmp_path / "old")), view)
    new = spark.read.schema(schema).parquet(str(tmp_path / "new"))
    assert spark.conf.get("spark.sql.shuffle.partitions") == "2"
    merged = merge_input(prev.localCheckpoint(), new, view, 7)
    assert sorted(_exchanges(merged)) == [2, 7]
    plan = str(merged._jdf.queryExecution().executedPlan().toString())
    assert "partial_count" in plan  # the map-side combine of the new events
    assert merged.rdd.getNumPartitions() == 7
    assert (
        merged.count()
        == prev.unionByName(aggregate(new, view)).select("url", "bucket").distinct().count()
    )
