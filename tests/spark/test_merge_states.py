"""``merge_states`` (the Spark ``plus`` incremental builds use) agrees with one aggregation
of all the events, and with the monoids' ``plus`` the speed layer and serving use."""

from __future__ import annotations

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
