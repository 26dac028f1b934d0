"""Batch layer end to end on real Spark and Cassandra, checked against an independent truth."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from batch.master import complete_cutoff
from batch.run import run_batch
from lamina.errors import NotFoundError, PublishError
from lamina.settings import Settings
from lamina.views import ViewCatalog, load_views
from serving.cassandra import session
from serving.query import QueryService
from serving.store import Store, batch_table
from tests import truth
from tests.conftest import ROOT, isolated
from tests.integration.conftest import GENERATORS


def answers(settings: Settings, catalog: ViewCatalog, view: str, keys: list[str]) -> dict:
    with session(settings.cassandra) as s:
        svc = QueryService(Store(s, settings.cassandra), catalog, settings)
        out = svc.query(view, keys, truth.BASE - 4 * 86400, truth.BASE + 3600, q=0.95)
    return {(r["key"], b["bucket_start"]): b for r in out["results"] for b in r["buckets"]}


@pytest.mark.parametrize("view", list(GENERATORS))
def test_batch_equals_truth(world: dict[str, Any], view: str) -> None:
    want = truth.truth(view, world["data"][view].good)
    keys = sorted({k for k, _ in want})
    got = answers(world["settings"], world["catalog"], view, keys)
    assert set(got) == set(want)
    problems = {k: p for k in want if (p := truth.check(view, got[k]["values"], want[k]))}
    assert problems == {}
    assert all(b["from_batch"] and not b["realtime_epochs"] for b in got.values())


def test_versions_rollback_and_gc(world: dict[str, Any], spark: Any) -> None:
    settings, catalog = world["settings"], world["catalog"]
    view = catalog.view("cloud_metering")
    with session(settings.cassandra) as s:
        store = Store(s, settings.cassandra)
        first = store.published(view)
        assert first is not None and first.rows > 0
        n = first.version
        for _ in range(3):
            run_batch(spark, settings, catalog, ["cloud_metering"])
        versions = store.versions(view)
        assert [v.version for v in versions][:4] == [n + 3, n + 2, n + 1, n]
        assert store.published(view).version == n + 3
        # retain_versions = 3: the oldest was garbage-collected, its table dropped.
        assert all(v.state == "collected" for v in versions if v.version <= n)
        tables = {
            r.table_name
            for r in s.execute(
                "SELECT table_name FROM system_schema.tables WHERE keyspace_name = %s",
                (settings.cassandra.keyspace,),
            )
        }
        assert batch_table(view, n) not in tables and batch_table(view, n + 3) in tables
        store.rollback(view, n + 1)
        assert store.published(view).version == n + 1
        with pytest.raises(PublishError, match="collected, not publishable"):
            store.rollback(view, n)
        with pytest.raises(NotFoundError, match="no version 99"):
            store.rollback(view, 99)
    # The rolled-back version answers exactly like the newest (same data, same cutoff).
    want = truth.truth("cloud_metering", world["data"]["cloud_metering"].good)
    got = answers(settings, catalog, "cloud_metering", sorted({k for k, _ in want}))
    assert {k: b["values"] for k, b in got.items()} == want
    with session(settings.cassandra) as s:
        Store(s, settings.cassandra).rollback(view, n + 3)


def test_cutoff_excludes_later_epochs(world: dict[str, Any], spark: Any) -> None:
    settings, catalog = world["settings"], world["catalog"]
    view = catalog.view("iot_temperature")
    cut = complete_cutoff(settings, view.source)
    assert cut is not None
    [early] = run_batch(spark, settings, catalog, ["iot_temperature"], cutoff=cut - 10**6)
    assert early.events == 0 and early.rows == 0
    run_batch(spark, settings, catalog, ["iot_temperature"])  # leave the world as found


def test_no_complete_epoch_is_a_clear_error(stack: Settings, tmp_path: Path, spark: Any) -> None:
    settings = isolated(stack, tmp_path)
    catalog = load_views(ROOT / "conf" / "views.toml")
    with pytest.raises(PublishError, match="no complete epoch of source 'metering'"):
        run_batch(spark, settings, catalog, ["cloud_metering"])


def test_crash_mid_batch_leaves_published_version(
    world: dict[str, Any], spark: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import batch.run

    settings, catalog = world["settings"], world["catalog"]
    view = catalog.view("web_pageviews")
    with session(settings.cassandra) as s:
        before = Store(s, settings.cassandra).published(view)

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("executor lost")

    monkeypatch.setattr(batch.run, "aggregate", boom)
    with pytest.raises(RuntimeError, match="executor lost"):
        run_batch(spark, settings, catalog, ["web_pageviews"])
    with session(settings.cassandra) as s:
        store = Store(s, settings.cassandra)
        assert store.published(view) == before
        newest = store.versions(view)[0]
        assert newest.state == "failed" and newest.version > before.version
        # Failed builds are garbage, collected like superseded versions.
        assert newest.version in store.collect_garbage(view, view.retain_versions)
