"""A view is defined once and runs in batch and in stream: ``aggregate`` of the same events on
a static and on a streaming DataFrame gives the same states (and both equal the truth)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lamina.events import parse_event
from lamina.settings import Settings
from lamina.views import View, load_views
from tests import truth
from tests.conftest import ROOT

CATALOG = load_views(ROOT / "conf" / "views.toml")
GENERATORS = {
    "web_pageviews": truth.pageviews,
    "iot_temperature": truth.sensors,
    "cloud_metering": truth.metering,
}
FILES = 4


def write_events(view: View, events: list[dict[str, Any]], directory: Path) -> None:
    """The parsed events as ``FILES`` master-dataset files (their schema, no Kafka origin),
    one micro-batch each when streamed."""
    from lamina.master import arrow_schema

    rows = [parse_event(ev, view.source) for ev in events]
    assert all(isinstance(r, dict) for r in rows)
    schema = arrow_schema(view.source)
    directory.mkdir(parents=True)
    for i in range(FILES):
        part = rows[i::FILES]
        table = pa.table({f: [r.get(f) for r in part] for f in schema.names}, schema=schema)
        pq.write_table(table, directory / f"events-{i}.parquet")


def cells(view: View, rows: list[Any]) -> dict[tuple[Any, int], dict[str, Any]]:
    """``{(key, bucket): {aggregation: state}}`` of aggregated Spark rows."""
    from serving.merge import decode
    from serving.writer import state_row

    return {
        (tuple(r[k] for k in view.keys), r["bucket"]): decode(view, state_row(view, r))
        for r in rows
    }


@pytest.mark.parametrize("name", list(GENERATORS))
def test_batch_and_stream_aggregate_alike(
    spark: Any, settings: Settings, tmp_path: Path, name: str
) -> None:
    from engine.schema import event_schema
    from engine.translate import aggregate
    from serving.merge import present

    view = CATALOG.view(name)
    events = GENERATORS[name](1500, seed=21).good
    source_dir = tmp_path / "events"
    write_events(view, events, source_dir)
    schema = event_schema(view.source)

    static = cells(
        view, aggregate(spark.read.schema(schema).parquet(str(source_dir)), view).collect()
    )

    stream = (
        spark.readStream.schema(schema).option("maxFilesPerTrigger", 1).parquet(str(source_dir))
    )
    table = f"parity_{name}"
    query = (
        aggregate(stream, view)
        .writeStream.outputMode("complete")
        .format("memory")
        .queryName(table)
        .option("checkpointLocation", str(tmp_path / "checkpoint"))
        .trigger(availableNow=True)
        .start()
    )
    try:
        query.awaitTermination(300)
        assert query.exception() is None
        # Several micro-batches: the streaming states were merged across them.
        assert len(query.recentProgress) >= FILES
    finally:
        query.stop()
    streamed = cells(view, spark.table(table).collect())

    assert set(streamed) == set(static)
    differing = {
        cell: agg
        for cell, states in static.items()
        for agg, m in view.monoids.items()
        if not m.agrees(states[agg], streamed[cell][agg])
    }
    assert differing == {}
    # And both are the answer: the truth, per (key, bucket), within the sketches' bounds.
    want = truth.truth(name, events)
    for cell_states in (static, streamed):
        got = {(k[0], b): present(view, s, q=0.5) for (k, b), s in cell_states.items()}
        assert set(got) == set(want)
        problems = {c: p for c in want if (p := truth.check(name, got[c], want[c], q=0.5))}
        assert problems == {}


def test_every_monoid_has_a_spark_translation_with_its_state_columns(spark: Any) -> None:
    """A monoid without an engine translation, or one whose columns differ from the state
    columns it declares, would only fail in a running job."""
    from engine.translate import AGGREGATIONS, _agg_exprs
    from lamina.monoids import MONOIDS

    assert set(AGGREGATIONS) == set(MONOIDS)
    used = set()
    for view in CATALOG.views.values():
        names = [str(e).rsplit(" AS ", 1)[1].strip("`'>") for e in _agg_exprs(view)]
        assert names == [c for c, _ in view.value_columns], view.name
        used |= {a.fn for a in view.aggregations.values()}
    assert used == set(MONOIDS), "conf/views.toml should exercise every aggregation"
