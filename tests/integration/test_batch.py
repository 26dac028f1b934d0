"""Batch layer end to end on real Spark and Cassandra, checked against an independent truth."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from batch.recompute import run_batch
from lamina.errors import NotFoundError, PublishError
from lamina.master import complete_cutoff
from lamina.settings import Settings
from lamina.views import load_views
from serving.cassandra import session
from serving.query import QueryService
from serving.schema import batch_table
from serving.store import Published, RealtimeTable, Store
from tests import truth
from tests.conftest import ROOT, isolated
from tests.integration.answers import answers, assert_exact
from tests.integration.conftest import GENERATORS, drop_keyspace, import_events


@pytest.mark.parametrize("view", list(GENERATORS))
def test_batch_equals_truth(world: dict[str, Any], view: str) -> None:
    want = truth.truth(view, world["data"][view].good)
    got = answers(world["settings"], world["catalog"], view, sorted({k for k, _ in want}))
    assert_exact(view, got, want)
    assert all(b["from_batch"] and not b["realtime_epochs"] for b in got.values())


@pytest.mark.parametrize("granularity", ["hour", "day"])
def test_quantiles_of_dense_rollups(world: dict[str, Any], granularity: str) -> None:
    """Minute KLL sketches folded into hours and days: every asked ``q`` lands within the
    sketch's rank error (exactly, where a cell holds no more than k values)."""
    width = {"hour": 3600, "day": 86400}[granularity]
    events = world["data"]["iot_temperature"].good
    want = truth.truth("iot_temperature", events, width=width)
    keys = sorted({k for k, _ in want})
    sizes = [len(v["temp_q"]) for v in want.values()]
    # Both regimes are exercised: cells the sketch holds exactly and compacted ones.
    assert sum(n > truth.KLL_K for n in sizes) >= 5, sizes
    if granularity == "hour":
        assert sum(20 < n <= truth.KLL_K for n in sizes) >= 3, sizes
    for q in (0.0, 0.05, 0.25, 0.5, 0.9, 0.99, 1.0):
        got = answers(
            world["settings"],
            world["catalog"],
            "iot_temperature",
            keys,
            q=q,
            granularity=granularity,
        )
        assert_exact("iot_temperature", got, want, q)
    assert all(b["from_batch"] and not b["realtime_epochs"] for b in got.values())


@pytest.mark.parametrize(
    ("view", "granularity", "width"),
    [
        ("web_pageviews", "day", 86400),
        ("web_pageviews", "6h", 6 * 3600),
        ("cloud_metering", "2h", 7200),
        ("iot_temperature", "15m", 900),
    ],
)
def test_rollups_across_several_coarse_buckets(
    world: dict[str, Any], view: str, granularity: str, width: int
) -> None:
    """A rollup equals the truth bucketed directly at the coarse width, over a range that
    spans several coarse buckets, each from the batch."""
    want = truth.truth(view, world["data"][view].good, width=width)
    got = answers(
        world["settings"],
        world["catalog"],
        view,
        sorted({k for k, _ in want}),
        granularity=granularity,
    )
    assert len({b for _, b in want}) >= 3
    assert_exact(view, got, want)
    assert all(b["from_batch"] and not b["realtime_epochs"] for b in got.values())


@pytest.mark.parametrize("granularity", [None, "day"])
def test_query_range_edges(world: dict[str, Any], granularity: str | None) -> None:
    """``[from, to)`` is widened to whole buckets: the bucket holding ``from`` is in, a ``to``
    on a boundary excludes the bucket starting there, one second past it includes it."""
    view = "web_pageviews"
    width = 86400 if granularity else 3600
    want = truth.truth(view, world["data"][view].good, width=width)
    key = "/p/2"
    starts = sorted(b for k, b in want if k == key)
    assert len(starts) >= 3
    settings, catalog = world["settings"], world["catalog"]

    def buckets(start: float, end: float) -> list[int]:
        got = answers(settings, catalog, view, [key], granularity=granularity, start=start, end=end)
        for (_, b), cell in got.items():
            assert truth.check(view, cell["values"], want[(key, b)]) == []
        return sorted(b for _, b in got)

    first, second, last = starts[0], starts[1], starts[-1]
    assert buckets(first, last) == [b for b in starts if b < last]
    assert buckets(first, last + 1) == starts
    assert buckets(second - 1, last + width) == [b for b in starts if b >= second - width]
    assert buckets(second, second + 1) == [second]
    assert buckets(second + width - 1, second + width) == [second]


def test_versions_rollback_and_gc(private_world: dict[str, Any], spark: Any) -> None:
    settings, catalog = private_world["settings"], private_world["catalog"]
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
        states = {v.version: v.state for v in store.versions(view)}
        assert (states[n + 1], states[n + 2], states[n + 3]) == (
            "published",
            "superseded",
            "superseded",
        )
        with pytest.raises(PublishError, match="collected, not publishable"):
            store.rollback(view, n)
        with pytest.raises(NotFoundError, match="no version 99"):
            store.rollback(view, 99)
    # The rolled-back version answers exactly like the newest (same data, same cutoff).
    want = truth.truth("cloud_metering", private_world["data"]["cloud_metering"].good)
    got = answers(settings, catalog, "cloud_metering", sorted({k for k, _ in want}))
    assert_exact("cloud_metering", got, want)
    with session(settings.cassandra) as s:
        store = Store(s, settings.cassandra)
        store.rollback(view, n + 3)
        assert store.version(view, n + 1).state == "superseded"


def test_cutoff_between_two_imports(stack: Settings, tmp_path: Path, spark: Any) -> None:
    """Two imports land in two ingest epochs; a batch at a cutoff between them covers the
    first import only, and exactly; one at the complete cutoff covers both."""
    settings = isolated(stack, tmp_path)
    catalog = load_views(ROOT / "conf" / "views.toml")
    view = catalog.view("cloud_metering")
    g = truth.metering(1000, seed=31)
    early, late = g.good[:600], g.good[600:]
    epochs = []
    try:
        for i, part in enumerate((early, late)):
            epochs.append(
                import_events(settings, view.source, part, tmp_path / f"p{i}.jsonl").epoch
            )
        assert epochs[0] < epochs[1] and complete_cutoff(settings, view.source) > epochs[1]
        keys = sorted({ev["customer"] for ev in g.good})
        [between] = run_batch(spark, settings, catalog, ["cloud_metering"], cutoff=epochs[1])
        assert (between.cutoff, between.events) == (epochs[1], len(early))
        got = answers(settings, catalog, "cloud_metering", keys)
        assert_exact("cloud_metering", got, truth.truth("cloud_metering", early))
        [both] = run_batch(spark, settings, catalog, ["cloud_metering"])
        assert both.cutoff > epochs[1] and both.events == len(g.good)
        got = answers(settings, catalog, "cloud_metering", keys)
        assert_exact("cloud_metering", got, truth.truth("cloud_metering", g.good))
    finally:
        drop_keyspace(settings)


def test_no_complete_epoch_is_a_clear_error(stack: Settings, tmp_path: Path, spark: Any) -> None:
    settings = isolated(stack, tmp_path)
    catalog = load_views(ROOT / "conf" / "views.toml")
    try:
        with pytest.raises(PublishError, match="no complete epoch of source 'metering'"):
            run_batch(spark, settings, catalog, ["cloud_metering"])
    finally:
        drop_keyspace(settings)


def test_crash_mid_batch_leaves_published_version(
    private_world: dict[str, Any], spark: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import batch.recompute

    settings, catalog = private_world["settings"], private_world["catalog"]
    view = catalog.view("web_pageviews")
    with session(settings.cassandra) as s:
        before = Store(s, settings.cassandra).published(view)

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("executor lost")

    monkeypatch.setattr(batch.recompute, "aggregate", boom)
    with pytest.raises(RuntimeError, match="executor lost"):
        run_batch(spark, settings, catalog, ["web_pageviews"])
    with session(settings.cassandra) as s:
        store = Store(s, settings.cassandra)
        assert store.published(view) == before
        newest = store.versions(view)[0]
        assert newest.state == "failed" and newest.version > before.version
        # Failed builds are garbage, collected like superseded versions.
        assert newest.version in store.collect_garbage(view, view.retain_versions)


def test_gc_while_a_reader_is_in_flight(private_world: dict[str, Any], spark: Any) -> None:
    """A query that read the catalog just before a publish and its garbage collection still
    reads the version it resolved (retained), and answers exactly from it."""
    settings, catalog = private_world["settings"], private_world["catalog"]
    view = "iot_temperature"
    want = truth.truth(view, private_world["data"][view].good)
    keys = sorted({k for k, _ in want})

    class PublishAfterCatalogRead(Store):
        """The interleaving under test: publish + GC between a reader's two reads."""

        raced: Published | None = None

        async def snapshot(self, v: Any) -> tuple[Published | None, RealtimeTable | None]:
            pub, rec = await super().snapshot(v)  # the catalog snapshot the query takes
            if self.raced is None:
                self.raced = pub
                run_batch(spark, settings, catalog, [view])  # publish, then maintain (GC)
            return pub, rec

    with session(settings.cassandra) as s:
        store = PublishAfterCatalogRead(s, settings.cassandra)
        out = QueryService(store, catalog, settings).query(
            view, keys, truth.BASE - 4 * 86400, truth.BASE + 3600, q=0.95
        )
        assert store.raced is not None
        assert out["provenance"]["version"] == store.raced.version
        newest = Store(s, settings.cassandra).published(catalog.view(view))
        assert newest is not None and newest.version > store.raced.version
    got = {(r["key"], b["bucket_start"]): b for r in out["results"] for b in r["buckets"]}
    assert_exact(view, got, want)


def test_one_batch_run_uses_one_cutoff_per_source(
    stack: Settings, tmp_path: Path, spark: Any
) -> None:
    """An import that completes while `batch run` builds the first view of a source does
    not reach the second: the views of a source answer for the same events."""
    settings = isolated(stack, tmp_path)
    text = (ROOT / "conf" / "views.toml").read_text() + (
        '\n[views.metering_by_type]\nsource = "metering"\nkeys = ["instance_type"]\n'
        'bucket = "day"\n[views.metering_by_type.aggregations]\nrecords = { fn = "count" }\n'
    )
    views_file = tmp_path / "views.toml"
    views_file.write_text(text)
    catalog = load_views(views_file)
    source = catalog.sources["metering"]
    g = truth.metering(800, seed=41)
    first, later = g.good[:500], g.good[500:]
    imported: list[int] = []

    def import_part(part: list[dict[str, Any]], name: str) -> None:
        imported.append(import_events(settings, source, part, tmp_path / name).epoch)

    import_part(first, "first.jsonl")
    time.sleep(settings.pipeline.epoch_seconds)  # the next import lands in a later epoch

    def progress(message: str) -> None:
        if not imported[1:] and "aggregating" in message:  # mid-build of the first view
            import_part(later, "later.jsonl")

    try:
        results = run_batch(
            spark, settings, catalog, ["cloud_metering", "metering_by_type"], progress=progress
        )
        assert imported[1] < complete_cutoff(settings, source)  # the import is complete
        assert [(r.cutoff, r.events) for r in results] == [(results[0].cutoff, len(first))] * 2
    finally:
        drop_keyspace(settings)


def test_a_batch_says_which_imports_it_cannot_cover_and_why(
    stack: Settings, tmp_path: Path, spark: Any
) -> None:
    """The issue's scenario: a source job stopped (its progress still holds the cutoff),
    history imported after it, `batch run`: it publishes what is complete and says the
    import is left out and which writer holds the cutoff."""
    from lamina.master import record_progress
    from lamina.streams import ARCHIVER

    settings = isolated(stack, tmp_path)
    catalog = load_views(ROOT / "conf" / "views.toml")
    source = catalog.sources["metering"]
    g = truth.metering(400, seed=61)
    e0 = import_events(settings, source, g.good[:200], tmp_path / "first.jsonl").epoch
    record_progress(settings, source, ARCHIVER, e0 + settings.pipeline.epoch_seconds, active=True)
    time.sleep(settings.pipeline.epoch_seconds)  # the history lands in a later epoch
    e1 = import_events(settings, source, g.good[200:], tmp_path / "later.jsonl").epoch
    said: list[str] = []
    try:
        [done] = run_batch(spark, settings, catalog, ["cloud_metering"], progress=said.append)
        assert done.cutoff == e0 + settings.pipeline.epoch_seconds <= e1
        assert done.events == 200
        [warning] = [m for m in said if "warning" in m]
        assert f"epochs {e1}..{e1}" in warning and "not in this batch" in warning
        assert f"held by {ARCHIVER} (active" in warning
    finally:
        drop_keyspace(settings)


def _history(path: Path, n: int, prefix: str) -> Path:
    """``n`` metering events as JSON lines (ids ``<prefix>-<i>``), written fast."""
    with path.open("w") as f:
        for i in range(n):
            ts = truth.BASE - i % 18_000
            f.write(
                f'{{"usage_id": "{prefix}-{i}", "ts": {ts}, "customer": "c{i % 6}", '
                f'"instance_type": "m5", "instance_seconds": 60}}\n'
            )
    return path


def _start_import(settings: Settings, path: Path) -> subprocess.Popen[str]:
    """A real ``lamina master import`` of ``path`` into source metering, in its own process,
    writing a file every 2000 events."""
    env = {
        **os.environ,
        "LAMINA_CASSANDRA__KEYSPACE": settings.cassandra.keyspace,
        "LAMINA_PIPELINE__MASTER_DIR": str(settings.master_dir),
    }
    args = ["master", "import", "metering", str(path), "--chunk-rows", "2000"]
    return subprocess.Popen(
        [sys.executable, "-m", "lamina.cli", *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for_files(root: Path, n: int, proc: subprocess.Popen[str]) -> None:
    """Until the import ``proc`` has written ``n`` more Parquet files under ``root``
    (wherever it puts them before it completes)."""
    before = set(root.rglob("*.parquet"))
    deadline = time.monotonic() + 120
    while len(set(root.rglob("*.parquet")) - before) < n:
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline, "the import wrote no files"
        time.sleep(0.005)


def test_a_killed_import_leaves_nothing_a_batch_reads(
    stack: Settings, tmp_path: Path, spark: Any
) -> None:
    """kill -9 of `lamina master import` after some of its files are written: a batch whose
    cutoff passes that import's epoch reads none of it, and the import run again is counted
    whole, once."""
    settings = isolated(stack, tmp_path)
    catalog = load_views(ROOT / "conf" / "views.toml")
    source = catalog.sources["metering"]
    killed = _start_import(settings, _history(tmp_path / "killed.jsonl", 60_000, "k"))
    try:
        _wait_for_files(settings.master_dir, 2, killed)
    finally:
        killed.kill()
        killed.wait()
    g = truth.metering(300, seed=71)
    import_events(settings, source, g.good, tmp_path / "later.jsonl")  # past the killed one
    try:
        [first] = run_batch(spark, settings, catalog, ["cloud_metering"])
        assert first.events == len(g.good)
        again = _start_import(settings, tmp_path / "killed.jsonl")
        assert again.wait(timeout=300) == 0, again.communicate()[0]
        [second] = run_batch(spark, settings, catalog, ["cloud_metering"])
        assert second.events == len(g.good) + 60_000
        assert not any((settings.master_dir / "metering" / "imports" / "_staging").iterdir())
    finally:
        drop_keyspace(settings)


def test_an_import_racing_the_cutoff_is_covered_whole_by_the_next_batch(
    stack: Settings, tmp_path: Path, spark: Any
) -> None:
    """The issue's race: the archiver's cutoff passes the current epoch while an import is
    still writing (stopped here after two files). A batch then reads none of the import, and
    the import lands in an epoch at or after that batch's cutoff, which the next batch
    covers whole."""
    from lamina.buckets import ingest_epoch
    from lamina.master import record_progress
    from lamina.streams import ARCHIVER

    settings = isolated(stack, tmp_path)
    es = settings.pipeline.epoch_seconds
    catalog = load_views(ROOT / "conf" / "views.toml")
    source = catalog.sources["metering"]
    g = truth.metering(300, seed=73)
    e0 = import_events(settings, source, g.good, tmp_path / "first.jsonl").epoch
    record_progress(settings, source, ARCHIVER, e0 + es, active=True)  # caught up
    racing = _start_import(settings, _history(tmp_path / "history.jsonl", 60_000, "h"))
    try:
        _wait_for_files(settings.master_dir, 2, racing)
        racing.send_signal(signal.SIGSTOP)
        # The archiver completes the epoch the import started in, and the next.
        cut = max(ingest_epoch(int(time.time() * 1000), es), e0 + es) + es
        time.sleep(max(0.0, cut - time.time()))
        record_progress(settings, source, ARCHIVER, cut, active=True)
        said: list[str] = []
        [during] = run_batch(spark, settings, catalog, ["cloud_metering"], progress=said.append)
        assert (during.cutoff, during.events) == (cut, len(g.good))
        [warning] = [m for m in said if "warning" in m]
        assert "1 import(s) of source 'metering' still being written" in warning
    finally:
        racing.send_signal(signal.SIGCONT)
    try:
        out = racing.communicate(timeout=300)[0]
        assert racing.returncode == 0, out
        epoch = int(re.findall(r"ingest epoch (\d+)", out)[0])
        assert epoch >= cut
        record_progress(settings, source, ARCHIVER, epoch + es, active=True)
        [after] = run_batch(spark, settings, catalog, ["cloud_metering"])
        assert after.events == len(g.good) + 60_000
    finally:
        drop_keyspace(settings)
