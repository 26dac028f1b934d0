"""Incremental batch builds on real Spark and Cassandra: a version built as the published
version ⊕ the new epochs equals a full recompute of the same master dataset, cell for cell
and against the truth (late events, re-sends across the boundary, duplicates among the new
epochs), and every case that is not provably equal builds in full."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from batch.incremental import STATE_RECORD, prune_states, state_dir
from batch.recompute import build_view, run_batch
from lamina.master import record_progress, write_epoch
from lamina.settings import Settings
from lamina.views import View, ViewCatalog, load_views
from serving.cassandra import session
from serving.merge import decode
from serving.schema import batch_table
from serving.store import PUBLISHABLE, open_store
from tests import truth
from tests.conftest import ROOT, isolated
from tests.integration.answers import answers, assert_exact
from tests.integration.conftest import GENERATORS, archive, drop_keyspace

RESENT = {
    # A re-send of an older event with other values: only its first copy may count.
    "web_pageviews": {"load_ms": 1.0, "status": 200, "visitor": "resent"},
    "iot_temperature": {"temperature": 99.5},
    "cloud_metering": {"instance_seconds": 7},
}


def incremental(stack: Settings, tmp: Path, **batch: Any) -> Settings:
    settings = isolated(stack, tmp)
    options = settings.batch.model_copy(update={"incremental": True, **batch})
    return settings.model_copy(update={"batch": options})


def first_epoch(settings: Settings) -> int:
    es = settings.pipeline.epoch_seconds
    return int(truth.BASE) // es * es


def complete(settings: Settings, view: View, before: int) -> None:
    record_progress(settings, view.source, "archiver", before, active=False)


def table_cells(settings: Settings, view: View, version: int) -> dict[Any, dict[str, Any]]:
    """``{(key, bucket): states}`` of a version's table, read back from Cassandra."""
    cols = [*view.keys, "bucket", *(c for c, _ in view.value_columns)]
    n = len(view.keys)
    with session(settings.cassandra) as s:
        rows = s.execute(
            f"SELECT {', '.join(cols)} FROM {settings.cassandra.keyspace}."
            f"{batch_table(view, version)}"
        )
        return {(tuple(r[:n]), r[n]): decode(view, tuple(r[n + 1 :])) for r in rows}


def assert_same_cells(view: View, got: dict[Any, Any], want: dict[Any, Any]) -> None:
    """Cell for cell: the same cells; exact states equal (integers, min, max), doubles and
    sketches within :meth:`Monoid.agrees` (order of addition, sketch estimators)."""
    assert set(got) == set(want), sorted(set(got) ^ set(want), key=repr)[:10]
    differ = {}
    for cell, states in want.items():
        for agg, m in view.monoids.items():
            a, b = got[cell][agg], states[agg]
            same = a == b if m.exact and isinstance(a, int) else m.agrees(a, b)
            if not same:
                differ[(cell, agg)] = (a, b)
    assert differ == {}


def report(settings: Settings, catalog: ViewCatalog, view: View, version: int) -> dict[str, Any]:
    with open_store(settings.cassandra, catalog) as store:
        found = store.reconciliation(view, version)
    assert found is not None
    return found


@pytest.mark.parametrize("name", list(GENERATORS))
def test_incremental_build_equals_a_full_recompute(
    stack: Settings, tmp_path: Path, spark: Any, name: str
) -> None:
    settings = incremental(stack, tmp_path)
    catalog = load_views(ROOT / "conf" / "views.toml")
    view = catalog.view(name)
    source = view.source
    es = settings.pipeline.epoch_seconds
    e0 = first_epoch(settings)
    events = GENERATORS[name][1](1200, seed=53).good
    base, new = events[:800], events[800:]
    resent = [{**ev, **RESENT[name]} for ev in base[:40:2]] + base[1:40:2]  # changed, same
    again = [{**ev, **RESENT[name]} for ev in new[:20]]  # duplicates among the new epochs
    try:
        archive(settings, source, base[:400], e0)
        archive(settings, source, base[400:], e0 + es)
        complete(settings, view, e0 + 2 * es)
        [first] = run_batch(spark, settings, catalog, [name])
        assert first.timings["incremental"] == 0.0
        assert report(settings, catalog, view, first.version)["build"]["kind"] == "full"
        assert (state_dir(settings, view, first.version) / STATE_RECORD).is_file()

        archive(settings, source, new[:200] + resent[:10], e0 + 2 * es)
        archive(settings, source, new[200:] + resent[10:] + again, e0 + 3 * es)
        complete(settings, view, e0 + 4 * es)
        said: list[str] = []
        [inc] = run_batch(spark, settings, catalog, [name], progress=said.append)
        assert inc.timings["incremental"] == 1.0, said
        assert inc.timings["base_version"] == first.version
        assert inc.timings["resent_dropped"] == len(resent)
        assert inc.events == len(events)
        built = report(settings, catalog, view, inc.version)
        assert built["build"]["kind"] == "incremental" and built["self_check"]["ok"]
        assert [e["epoch"] for e in built["self_check"]["epochs"]] == [e0 + 2 * es, e0 + 3 * es]

        want = truth.truth(name, events)
        got = answers(settings, catalog, name, sorted({k for k, _ in want}))
        assert_exact(name, got, want)
        # Late events merged into cells the base already had.
        late = {truth.event_seconds(ev) // view.bucket.seconds for ev in new}
        assert len(late & {truth.event_seconds(ev) // view.bucket.seconds for ev in base}) >= 3

        with open_store(settings.cassandra, catalog) as store:
            full = build_view(spark, settings, store, view, incremental=False)
        assert full.cutoff == inc.cutoff and full.timings["incremental"] == 0.0
        assert full.rows == inc.rows and full.timings["events"] == inc.events
        assert_same_cells(
            view,
            table_cells(settings, view, inc.version),
            table_cells(settings, view, full.version),
        )
    finally:
        drop_keyspace(settings)


def test_what_is_not_provably_equal_builds_in_full(
    stack: Settings, tmp_path: Path, spark: Any
) -> None:
    """Periodic full builds, a file below the published cutoff (an import or a late archive
    there), a changed definition: each builds in full and says why; the next can be
    incremental again."""
    settings = incremental(stack, tmp_path, full_every=1)
    catalog = load_views(ROOT / "conf" / "views.toml")
    name = "cloud_metering"
    view = catalog.view(name)
    es = settings.pipeline.epoch_seconds
    e0 = first_epoch(settings)
    events = truth.metering(1000, seed=57).good
    parts = [events[i * 200 : (i + 1) * 200] for i in range(5)]
    kinds: list[tuple[str, str]] = []

    def build(cat: ViewCatalog = catalog) -> Any:
        [done] = run_batch(spark, settings, cat, [name])
        built = report(settings, cat, cat.view(name), done.version)["build"]
        kinds.append((built["kind"], built["why"]))
        return done

    def check(upto: list[dict[str, Any]], cat: ViewCatalog = catalog, width: int = 3600) -> None:
        want = truth.truth(name, upto, width=width)
        assert_exact(name, answers(settings, cat, name, sorted({k for k, _ in want})), want)

    try:
        archive(settings, view.source, parts[0], e0)
        complete(settings, view, e0 + es)
        build()  # nothing published: full
        archive(settings, view.source, parts[1], e0 + es)
        complete(settings, view, e0 + 2 * es)
        build()  # incremental
        archive(settings, view.source, parts[2], e0 + 2 * es)
        complete(settings, view, e0 + 3 * es)
        build()  # full_every = 1: full
        check(events[:600])
        assert [k for k, _ in kinds] == ["full", "incremental", "full"]
        assert "no version is published" in kinds[0][1]
        assert "full_every = 1" in kinds[2][1]

        # An import committed below the published cutoff (write_epoch chooses its epoch, as
        # only tests and benchmarks may): the files of the old epochs changed.
        write_epoch(settings, view.source, e0, _table(view, parts[3]), "history")
        complete(settings, view, e0 + 4 * es)
        with open_store(settings.cassandra, catalog) as store:
            assert store.published(view) is not None
        settings = settings.model_copy(
            update={"batch": settings.batch.model_copy(update={"full_every": 0})}
        )
        build()
        assert kinds[-1][0] == "full" and "changed since it was built" in kinds[-1][1]
        check(events[:800])

        archive(settings, view.source, parts[4], e0 + 4 * es)
        complete(settings, view, e0 + 5 * es)
        text = (ROOT / "conf" / "views.toml").read_text()
        views = tmp_path / "views.toml"
        hourly = 'keys = ["customer"]\nbucket = "hour"'
        views.write_text(text.replace(hourly, hourly.replace("hour", "day")))
        changed = load_views(views)
        assert changed.view(name).definition_hash != view.definition_hash
        build(changed)
        assert kinds[-1][0] == "full" and "another definition" in kinds[-1][1]
        check(events, changed, 86400)
        archive(settings, view.source, parts[0][:50], e0 + 5 * es)  # re-sends only
        complete(settings, view, e0 + 6 * es)
        done = build(changed)
        assert kinds[-1][0] == "incremental" and done.timings["resent_dropped"] == 50
        check(events, changed, 86400)
    finally:
        drop_keyspace(settings)


def _table(view: View, events: list[dict[str, Any]]) -> Any:
    """``events`` as an imported file's table (no Kafka origin)."""
    import pyarrow as pa

    from lamina.events import parse_event
    from lamina.master import arrow_schema

    rows = [parse_event(json.dumps(ev).encode(), view.source) for ev in events]
    schema = arrow_schema(view.source)
    return pa.table({f: [r.get(f) for r in rows] for f in schema.names}, schema=schema)


def test_states_are_kept_for_publishable_versions_only(
    stack: Settings, tmp_path: Path, spark: Any
) -> None:
    """Each build of a view first removes the states of versions that can no longer be
    published (collected by the garbage collection): states do not pile up."""
    settings = incremental(stack, tmp_path)
    catalog = load_views(ROOT / "conf" / "views.toml")
    view = catalog.view("cloud_metering")
    es = settings.pipeline.epoch_seconds
    e0 = first_epoch(settings)
    events = truth.metering(300, seed=59).good
    root = state_dir(settings, view, 0).parent
    try:
        for i in range(5):
            archive(settings, view.source, events[i * 60 : (i + 1) * 60], e0 + i * es)
            complete(settings, view, e0 + (i + 1) * es)
            run_batch(spark, settings, catalog, ["cloud_metering"])
            with open_store(settings.cassandra, catalog) as store:
                publishable = {v.version for v in store.versions(view) if v.state in PUBLISHABLE}
            # Pruned at the start of the build: versions its GC collected are pruned next time.
            assert {int(d.name[1:]) for d in root.iterdir()} >= publishable
        with open_store(settings.cassandra, catalog) as store:
            assert len(list(root.iterdir())) > len(publishable)
            prune_states(settings, store, view)
        assert {int(d.name[1:]) for d in root.iterdir()} == publishable
        assert len(publishable) < 5
    finally:
        drop_keyspace(settings)
