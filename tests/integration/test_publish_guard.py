"""A publish never goes backwards and never hides data (issue #12).

Each test has a private keyspace and master dataset of its own: events ``A`` imported in
ingest epoch ``e1`` and events ``B`` in ``e2``, with ``B`` also in the real-time view (rows of
epoch ``e2``), so a version at cutoff ``e2`` (``A``) and one at the complete cutoff (``A+B``)
both answer ``A+B`` merged, as long as the real-time rows of ``e2`` are there.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import batch.recompute
from batch.recompute import build_view, collect_and_purge, run_batch
from lamina.errors import ConflictError, PublishError
from lamina.master import complete_cutoff
from lamina.settings import Settings
from lamina.views import load_views
from serving.cassandra import session
from serving.query import QueryService
from serving.schema import batch_table, insert_cql, realtime_table
from serving.store import Published, RealtimeTable, Store, open_store
from tests import truth
from tests.conftest import ROOT, isolated, run_lamina
from tests.integration.answers import answers, assert_exact
from tests.integration.conftest import drop_keyspace, import_events

VIEW = "cloud_metering"


def realtime_rows(events: list[dict[str, Any]], epoch: int) -> dict[tuple[str, int, int], tuple]:
    """The speed layer's rows of cloud_metering for ``events`` of one ingest epoch."""
    return {
        (c, b, epoch): (v["instance_seconds"], v["records"])
        for (c, b), v in truth.truth(VIEW, events).items()
    }


@pytest.fixture
def two_epochs(stack: Settings, tmp_path: Path) -> Iterator[dict[str, Any]]:
    settings = isolated(stack, tmp_path)
    catalog = load_views(ROOT / "conf" / "views.toml")
    view = catalog.view(VIEW)
    g = truth.metering(600, seed=41)
    a, b = g.good[:300], g.good[300:]
    epochs = []
    try:
        for i, part in enumerate((a, b)):
            epochs.append(
                import_events(settings, view.source, part, tmp_path / f"p{i}.jsonl").epoch
            )
        e1, e2 = epochs
        with open_store(settings.cassandra, catalog) as store:
            stmt = store.session.prepare(
                insert_cql(
                    view, f"{settings.cassandra.keyspace}.{realtime_table(view)}", realtime=True
                )
            )
            for (c, bucket, e), (secs, n) in realtime_rows(b, e2).items():
                store.session.execute(stmt, (c, bucket, e, secs, n))
        complete = complete_cutoff(settings, view.source)
        assert complete is not None and e1 < e2 < complete
        yield {
            "settings": settings,
            "catalog": catalog,
            "view": view,
            "e2": e2,
            "complete": complete,
            "events": a + b,
            "realtime_events": b,
            "keys": sorted({ev["customer"] for ev in g.good}),
        }
    finally:
        drop_keyspace(settings)


def exact(w: dict[str, Any]) -> None:
    """The merged answers count ``A+B`` exactly once."""
    got = answers(w["settings"], w["catalog"], VIEW, w["keys"])
    assert_exact(VIEW, got, truth.truth(VIEW, w["events"]))


def cli_env(settings: Settings) -> dict[str, str]:
    """``lamina`` in another process, on this test's keyspace and master dataset."""
    return {
        "LAMINA_CASSANDRA__KEYSPACE": settings.cassandra.keyspace,
        "LAMINA_PIPELINE__MASTER_DIR": str(settings.master_dir),
    }


def published(w: dict[str, Any]) -> Published:
    with open_store(w["settings"].cassandra) as store:
        pub = store.published(w["view"])
    assert pub is not None
    return pub


def test_a_batch_run_at_an_older_cutoff_than_the_published_is_refused(
    two_epochs: dict[str, Any], spark: Any
) -> None:
    w = two_epochs
    settings, catalog = w["settings"], w["catalog"]
    [new] = run_batch(spark, settings, catalog, [VIEW])
    assert new.cutoff == w["complete"]
    with pytest.raises(PublishError, match="older than the published"):
        run_batch(spark, settings, catalog, [VIEW], cutoff=w["e2"])
    done = run_lamina(cli_env(settings), "batch", "run", "--view", VIEW, "--cutoff", str(w["e2"]))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "older than the published" in done.stderr and "lamina batch rollback" in done.stderr
    pub = published(w)
    assert (pub.version, pub.cutoff) == (new.version, w["complete"])
    exact(w)


def test_a_build_that_ends_after_a_newer_publish_and_purge_is_refused(
    two_epochs: dict[str, Any], spark: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The issue's race: a build at the old cutoff ``e2`` is in flight while a newer version is
    published and the real-time rows it covers (epoch ``e2``) are purged. Publishing the old
    build afterwards would answer ``A`` alone: refused, and so is a rollback to it."""
    w = two_epochs
    settings, catalog, view = w["settings"], w["catalog"], w["view"]
    reconcile = batch.recompute.reconcile_version
    with open_store(settings.cassandra, catalog) as store:
        newer = build_view(spark, settings, store, view)
        assert newer.cutoff == w["complete"]

        def publish_newer_meanwhile(*args: Any, **kwargs: Any) -> Any:
            store.publish(view, newer)
            collect_and_purge(store, view)
            return reconcile(*args, **kwargs)

        monkeypatch.setattr(batch.recompute, "reconcile_version", publish_newer_meanwhile)
        older = build_view(spark, settings, store, view, cutoff=w["e2"])
        monkeypatch.undo()
        assert older.cutoff == w["e2"] and older.state == "ready"
        assert list(store.realtime_before(view, w["complete"])) == []  # epoch e2 is purged
        with pytest.raises(PublishError, match="older than the published"):
            store.publish(view, older)
        with pytest.raises(PublishError, match="purged"):
            store.rollback(view, older.version)
    pub = published(w)
    assert (pub.version, pub.cutoff) == (newer.version, w["complete"])
    exact(w)


def test_a_second_build_of_a_view_in_flight_is_refused(
    two_epochs: dict[str, Any], spark: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = two_epochs
    settings, catalog, view = w["settings"], w["catalog"], w["view"]
    reconcile = batch.recompute.reconcile_version
    second: list[BaseException | None] = []

    def second_run_meanwhile(*args: Any, **kwargs: Any) -> Any:
        if not second:  # once: the second run's own build does not start a third
            second.append(ConflictError("not started"))
            try:
                run_batch(spark, settings, catalog, [VIEW])
                second[0] = None
            except ConflictError as exc:
                second[0] = exc
        return reconcile(*args, **kwargs)

    monkeypatch.setattr(batch.recompute, "reconcile_version", second_run_meanwhile)
    [first] = run_batch(spark, settings, catalog, [VIEW])
    monkeypatch.undo()
    [refused] = second
    assert refused is not None and f"view {VIEW!r} is being built" in str(refused)
    with open_store(settings.cassandra) as store:
        assert [v.version for v in store.versions(view)] == [first.version]
    assert published(w).version == first.version
    # The lease went with the first run: the next run builds.
    [after] = run_batch(spark, settings, catalog, [VIEW])
    assert after.version == first.version + 1
    exact(w)


def test_the_stale_one_of_two_racing_publishes_is_refused(
    two_epochs: dict[str, Any], spark: Any
) -> None:
    """Two publishes of one view at once: the one that read the catalog before the other's
    write (an older cutoff) is refused; the catalog keeps the newer version."""
    w = two_epochs
    settings, catalog, view = w["settings"], w["catalog"], w["view"]
    with open_store(settings.cassandra, catalog) as store:
        older = build_view(spark, settings, store, view, cutoff=w["e2"])
        newer = build_view(spark, settings, store, view)

    class NewerPublishAfterCatalogRead(Store):
        raced = False

        def published(self, v: Any) -> Published | None:
            pub = super().published(v)
            if not self.raced:
                self.raced = True
                with open_store(settings.cassandra) as other:
                    other.publish(view, newer)
            return pub

    with session(settings.cassandra) as s:
        store = NewerPublishAfterCatalogRead(s, settings.cassandra)
        with pytest.raises(PublishError, match="older than the published"):
            store.publish(view, older)
        assert store.raced
    pub = published(w)
    assert (pub.version, pub.cutoff) == (newer.version, w["complete"])
    exact(w)


def test_a_cutoff_beyond_the_complete_one_is_refused(
    two_epochs: dict[str, Any], spark: Any
) -> None:
    """A ``--cutoff`` past the epochs the master dataset fully holds would hide the real-time
    rows of the epochs in between behind a batch that lacks their events."""
    w = two_epochs
    settings, catalog, view = w["settings"], w["catalog"], w["view"]
    future = w["complete"] + 10 * settings.pipeline.epoch_seconds
    with pytest.raises(PublishError, match="beyond the complete cutoff"):
        run_batch(spark, settings, catalog, [VIEW], cutoff=future)
    done = run_lamina(
        cli_env(settings), "batch", "run", "--view", VIEW, "--cutoff", str(future), timeout=300
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "beyond the complete cutoff" in done.stderr
    with open_store(settings.cassandra) as store:
        assert store.published(view) is None and store.versions(view) == []
    got = answers(settings, catalog, VIEW, w["keys"])  # the real-time rows alone: B
    assert_exact(VIEW, got, truth.truth(VIEW, w["realtime_events"]))


def test_retain_one_keeps_the_previous_version_for_readers_in_flight(
    two_epochs: dict[str, Any], spark: Any
) -> None:
    """With ``retain_versions = 1``, a query that resolved the published version just before
    the next publish and its garbage collection still reads that version's table, and the
    real-time rows it merges: the previous version is dropped only at the publish after."""
    w = two_epochs
    settings = w["settings"]
    view = w["view"].model_copy(update={"retain_versions": 1})
    catalog = w["catalog"].model_copy(update={"views": {**w["catalog"].views, VIEW: view}})
    [first] = run_batch(spark, settings, catalog, [VIEW], cutoff=w["e2"])

    class PublishAfterCatalogRead(Store):
        """The catalog snapshot a query takes, then a publish before its data reads."""

        raced: Published | None = None

        async def snapshot(self, v: Any) -> tuple[Published | None, RealtimeTable | None]:
            pub, rec = await super().snapshot(v)
            if self.raced is None:
                self.raced = pub
                run_batch(spark, settings, catalog, [VIEW])  # publish, then GC and purge
            return pub, rec

    with session(settings.cassandra) as s:
        store = PublishAfterCatalogRead(s, settings.cassandra)
        out = QueryService(store, catalog, settings).query(
            VIEW, w["keys"], truth.BASE - 4 * 86400, truth.BASE + 3600
        )
        assert store.raced is not None and store.raced.version == first.version
    assert out["provenance"]["version"] == first.version
    got = {(r["key"], b["bucket_start"]): b for r in out["results"] for b in r["buckets"]}
    assert_exact(VIEW, got, truth.truth(VIEW, w["events"]))

    [third] = run_batch(spark, settings, catalog, [VIEW])

    def tables() -> set[str]:
        with session(settings.cassandra) as s:
            rows = s.execute(
                "SELECT table_name FROM system_schema.tables WHERE keyspace_name = %s",
                (settings.cassandra.keyspace,),
            )
            return {r.table_name for r in rows}

    got_tables = tables()
    assert batch_table(view, first.version) not in got_tables
    assert {batch_table(view, third.version), batch_table(view, third.version - 1)} <= got_tables
    exact(w)


def test_concurrent_batch_runs_publish_one_at_a_time(
    two_epochs: dict[str, Any], spark: Any
) -> None:
    """Two ``run_batch`` of one view started together: one builds and publishes, the other is
    refused with a clear message (never two builds at once)."""
    w = two_epochs
    settings, catalog = w["settings"], w["catalog"]
    outcomes: list[Any] = []
    start = threading.Barrier(2)

    def run() -> None:
        start.wait()
        try:
            outcomes.append(run_batch(spark, settings, catalog, [VIEW]))
        except ConflictError as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    refused = [o for o in outcomes if isinstance(o, ConflictError)]
    assert len(refused) == 1, outcomes
    exact(w)


def test_the_lease_of_a_build_that_died_expires(two_epochs: dict[str, Any]) -> None:
    """A build's process that dies keeps its view locked only until the lease's TTL; a lease
    renewed by another holder meanwhile is reported lost (that build must not publish)."""
    w = two_epochs
    settings, view = w["settings"], w["view"]
    with open_store(settings.cassandra, w["catalog"]) as store:
        ks = settings.cassandra.keyspace
        store.session.execute(
            f"INSERT INTO {ks}.leases (view_name, holder, acquired_at) VALUES (%s, %s, %s) "
            "USING TTL 2",
            (view.name, "a dead build", time.time()),
        )
        with (
            pytest.raises(ConflictError, match="being built by a dead build"),
            store.build_lease(view),
        ):
            pass
        time.sleep(2.5)
        with store.build_lease(view, ttl_s=3) as lease:
            lease.check()
            store.session.execute(
                f"UPDATE {ks}.leases SET holder = 'a usurper' WHERE view_name = %s", (view.name,)
            )
            time.sleep(1.5)  # past one renewal (every ttl_s / 3)
            with pytest.raises(ConflictError, match="lost its lease"):
                lease.check()
        # Ours ended without deleting the usurper's row.
        with (
            pytest.raises(ConflictError, match="being built by a usurper"),
            store.build_lease(view),
        ):
            pass


def test_a_version_left_building_by_a_killed_build_is_failed_and_collected(
    two_epochs: dict[str, Any], spark: Any
) -> None:
    """A `batch run` killed mid-build leaves its version `building`: the next build (which
    holds the view's lease, so no other build is alive) marks it failed, and its GC drops
    its table."""
    w = two_epochs
    settings, view = w["settings"], w["view"]
    with open_store(settings.cassandra, w["catalog"]) as store:
        dead = store.begin_version(view, w["e2"])  # begun (its table made), then a kill -9
    [new] = run_batch(spark, settings, w["catalog"], [VIEW])
    with open_store(settings.cassandra, w["catalog"]) as store:
        left = store.version(view, dead)
        assert left is not None and left.state == "collected"
        assert store.published(view).version == new.version  # type: ignore[union-attr]
        tables = {
            r.table_name
            for r in store.session.execute(
                "SELECT table_name FROM system_schema.tables WHERE keyspace_name = %s",
                (settings.cassandra.keyspace,),
            )
        }
    assert batch_table(view, dead) not in tables
    exact(w)
