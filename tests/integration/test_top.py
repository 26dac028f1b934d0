"""Top-N and key listings end to end: the speed layer and two publishes keep the key indexes,
and ``/top`` and ``/keys`` (and the CLI) answer exactly what the truth of the events sent says,
under the same cutoff rule as point queries."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from batch.recompute import run_batch
from lamina.master import record_progress
from lamina.settings import Settings
from lamina.streams import (
    ARCHIVER,
    checkpoint_path,
    deadletter_topic,
    duplicates_topic,
    ensure_topics,
    source_query,
)
from lamina.views import ViewCatalog, load_views
from serving.api import create_app
from serving.cassandra import session
from serving.schema import batch_index_table
from serving.store import open_store
from speed.queries import start_source
from speed.realtime import RealtimeCells
from tests import truth
from tests.conftest import isolated, run_lamina
from tests.integration.conftest import drop_keyspace
from tests.integration.streams import drop_private_world, private_env, produce, settings_under
from tests.integration.test_streaming import crash_after_sink
from tests.integration.test_view_changes import epoch_boundary

EPOCH_S = 3
ALL = 3600 * 1_000_000
"""A bucket width wider than every event time: the truth of a whole range in one bucket."""

RANGES = {
    "all": (truth.BASE - 4 * 86400, truth.BASE + 3600),
    "six_hours": (truth.BASE // 3600 * 3600 - 6 * 3600, truth.BASE // 3600 * 3600),
}


@pytest.fixture
def env(stack: Settings, tmp_path: Path) -> dict[str, str]:
    return private_env(tmp_path, "top", EPOCH_S)


@pytest.fixture
def top_settings(env: dict[str, str]) -> Iterator[Settings]:
    """Private keyspace, topics and checkpoints; dropped at the end."""
    with settings_under(env) as settings:
        pass
    yield settings
    drop_private_world(settings)


def range_truth(view: str, events: list[dict[str, Any]], lo: int, hi: int) -> dict[str, Any]:
    """Per key, the view's values over the buckets ``lo <= bucket < hi``, computed from the
    events directly (tests/truth.py, one bucket over the whole range), not by Lamina."""
    width = truth.WIDTH[view]
    inside = [
        ev
        for ev in events
        if lo <= int(truth.event_seconds(ev) * 1000) // (width * 1000) * width < hi
    ]
    return {key: values for (key, _), values in truth.truth(view, inside, width=ALL).items()}


def ranked(want: dict[str, Any], by: str) -> list[tuple[str, Any]]:
    """Keys by value of ``by``, largest first, ties in key order, keys without a value last."""
    valued = sorted(
        ((k, v[by]) for k, v in want.items() if v[by] is not None), key=lambda kv: kv[0]
    )
    valued.sort(key=lambda kv: kv[1], reverse=True)
    return valued + sorted((k, None) for k, v in want.items() if v[by] is None)


def check_top_and_keys(
    client: TestClient, sent: dict[str, list[dict[str, Any]]], version: int | None
) -> None:
    for name, (lo, hi) in RANGES.items():
        params = {"from": str(lo), "to": str(hi)}
        for view, events in sent.items():
            want = range_truth(view, events, lo, hi)
            # keys: every key with data in the range, in order; a prefix; a limit
            r = client.get(f"/views/{view}/keys", params={**params, "limit": 10_000})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["provenance"]["version"] == version
            assert body["keys"] == sorted(want), (name, view)
            assert body["matched"] == len(want) and body["truncated"] is False
            prefix = sorted(want)[0][:4] if want else "x"
            r = client.get(f"/views/{view}/keys", params={**params, "prefix": prefix, "limit": 3})
            got = r.json()
            with_prefix = sorted(k for k in want if k.startswith(prefix))
            assert got["keys"] == with_prefix[:3] and got["matched"] == len(with_prefix)
            assert got["truncated"] == (len(with_prefix) > 3)
            # top: exact aggregations rank exactly like the truth, with every value right
            for by in {
                "web_pageviews": ["pageviews", "load_ms_mean"],
                "cloud_metering": ["instance_seconds", "records"],
            }[view]:
                r = client.get(f"/views/{view}/top", params={**params, "by": by, "limit": 7})
                assert r.status_code == 200, r.text
                top = r.json()
                assert top["keys_with_data"] == len(want), (name, view, by)
                got_ranked = [(res["key"], res["value"]) for res in top["results"]]
                want_ranked = ranked(want, by)[:7]
                assert [k for k, _ in got_ranked] == [k for k, _ in want_ranked], (name, view, by)
                for res in top["results"]:
                    assert truth.check(view, res["values"], want[res["key"]]) == [], res
                    assert res["value"] == res["values"][by]
            if view == "web_pageviews":  # a sketch ranks by its estimate, within its bounds
                r = client.get(f"/views/{view}/top", params={**params, "by": "visitors"})
                results = r.json()["results"]
                assert len(results) == min(10, len(want))
                values = [res["value"] for res in results]
                assert values == sorted(values, reverse=True)
                for res in results:
                    assert truth.check(view, res["values"], want[res["key"]]) == [], res


def test_top_and_keys_equal_the_truth_through_two_publishes(
    top_settings: Settings, env: dict[str, str], spark: Any
) -> None:
    with ExitStack() as stack_of_contexts:
        through_two_publishes(top_settings, env, spark, stack_of_contexts)


def through_two_publishes(
    top_settings: Settings, env: dict[str, str], spark: Any, stack_of_contexts: ExitStack
) -> None:
    settings = top_settings
    catalog = load_views(settings.pipeline.views_file)
    sources = {v: catalog.view(v).source for v in ("web_pageviews", "cloud_metering")}
    for source in sources.values():
        ensure_topics(settings, [source.topic, deadletter_topic(source), duplicates_topic(source)])
    with open_store(settings.cassandra, catalog):
        pass  # the keyspace and the real-time tables exist before the first upsert
    sent: dict[str, list[dict[str, Any]]] = {v: [] for v in sources}
    gens = {"web_pageviews": truth.pageviews, "cloud_metering": truth.metering}

    def send(n: int, seed: int) -> None:
        for view, source in sources.items():
            g = gens[view](n, seed=seed)
            produce(settings, source.topic, g.raw)
            sent[view].extend(g.good)

    def drain(cat: ViewCatalog) -> None:
        for source in sources.values():
            query = start_source(spark, settings, cat, source)
            try:
                query.processAllAvailable()
            finally:
                query.stop()

    def batch() -> int:
        boundary = epoch_boundary()
        for source in sources.values():  # the archive holds every record sent so far
            record_progress(settings, source, ARCHIVER, boundary, active=False)
        results = run_batch(spark, settings, catalog, list(sources))
        return results[0].version

    # One API for the whole test, so its cache of folded batch index ranges (BatchFolds) is
    # reused across new real-time events and replaced across publishes: each check after
    # the first of a version reads the batch part from the cache, the real-time part anew.
    app = create_app(settings, catalog)
    client = stack_of_contexts.enter_context(TestClient(app, base_url="http://127.0.0.1"))

    def check(version: int | None) -> None:
        check_top_and_keys(client, sent, version)

    # Real-time only (nothing published: every epoch counts).
    send(300, seed=81)
    drain(catalog)
    check(None)
    # First publish: every event in the batch.
    first = batch()
    check(first)
    # More events: batch below the cutoff, real-time from it on.
    send(300, seed=82)
    drain(catalog)
    check(first)
    # A replayed micro-batch counts once in the index too.
    send(100, seed=83)
    drain(catalog)
    source = sources["web_pageviews"]
    cp = checkpoint_path(settings, source_query(source))
    last = max(int(p.name) for p in (cp / "commits").iterdir() if p.name.isdigit())
    crash_after_sink(cp, last)
    drain(catalog)
    check(first)
    # Second publish, then more events.
    second = batch()
    assert second > first
    check(second)
    send(200, seed=84)
    drain(catalog)
    check(second)
    folds = app.state.store.service().batch_folds
    assert folds.hits > 0 and folds.misses > 0, (folds.hits, folds.misses)

    # The CLI says the same (the same code).
    lo, hi = RANGES["all"]
    rng = ["--from", str(lo), "--to", str(hi)]
    want = range_truth("cloud_metering", sent["cloud_metering"], lo, hi)
    done = run_lamina(env, "keys", "cloud_metering", *rng, "--limit", "10000")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == sorted(want)
    done = run_lamina(
        env, "query", "cloud_metering", "--top", "records", "--limit", "3", *rng, "--format", "json"
    )
    assert done.returncode == 0, done.stderr
    got = [r["key"] for r in json.loads(done.stdout)["results"]]
    assert got == [k for k, _ in ranked(want, "records")[:3]]

    # The first version's index went with its table (garbage collection) or stays with it.
    with session(settings.cassandra) as s:
        tables = {
            r.table_name
            for r in s.execute(
                "SELECT table_name FROM system_schema.tables WHERE keyspace_name = %s",
                (settings.cassandra.keyspace,),
            )
        }
    view = catalog.view("cloud_metering")
    for v in (first, second):
        assert (batch_index_table(view, v) in tables) == (f"b_cloud_metering_v{v}" in tables)


def test_a_micro_batch_cut_between_its_index_rows_and_its_cells_counts_once(
    stack: Settings, tmp_path: Path
) -> None:
    """The speed layer writes a cell's key index row (its whole state, with the micro-batch
    id) before the cell. A micro-batch cut off between the two leaves index rows ahead of
    their cells; its replay must write both with the state the cell's guard computes (the
    stored state plus the same partial), once, and a second replay must change nothing."""
    settings = isolated(stack, tmp_path)
    catalog = load_views(settings.pipeline.views_file)
    view = catalog.view("cloud_metering")
    ks = settings.cassandra.keyspace
    try:
        with open_store(settings.cassandra, catalog) as store:
            s = store.session

            def cells(written_before: int | None) -> RealtimeCells:
                return RealtimeCells(
                    s, ks, view, written_before=written_before, cache_seconds=60, concurrency=8
                )

            def table(name: str) -> dict[tuple[Any, ...], tuple[Any, ...]]:
                cols = "customer, bucket, ingest_epoch, instance_seconds, records, applied_batch"
                rows = s.execute(f"SELECT {cols} FROM {ks}.{name}")
                return {(r[0], r[1], r[2]): tuple(r[3:]) for r in rows}

            # (customer, bucket, ingest_epoch, instance_seconds, records)
            first = [("c1", 3600, 60, 10, 1), ("c2", 3600, 60, 5, 2), ("c1", 7200, 60, 1, 1)]
            second = [("c1", 3600, 60, 7, 1), ("c3", 7200, 120, 4, 1)]
            cells(None).apply(first, 1)
            # Micro-batch 2 cut off after its index rows: written as _write writes them.
            job = cells(120)
            merged = {("c1", 3600, 60): (17, 2), ("c3", 7200, 120): (4, 1)}
            job._send(
                job.index_stmt,
                [[(b, e, c, *merged[(c, b, e)], 2)] for c, b, e, _, _ in second],
            )
            assert table("rt_cloud_metering")[("c1", 3600, 60)] == (10, 1, 1)
            # The restarted job replays micro-batch 2 (twice: a second crash after it).
            for _ in range(2):
                cells(120).apply(second, 2)
                rt, rx = table("rt_cloud_metering"), table("rx_cloud_metering")
                assert rt == rx
                assert rt == {
                    ("c1", 3600, 60): (17, 2, 2),
                    ("c2", 3600, 60): (5, 2, 1),
                    ("c1", 7200, 60): (1, 1, 1),
                    ("c3", 7200, 120): (4, 1, 2),
                }
    finally:
        drop_keyspace(settings)
