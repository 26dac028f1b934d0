"""The batch gate (issue #12, hole 8): a batch that corrects a wrong speed layer is published,
one that disagrees with the master dataset it was built from is not.

Each test has its own keyspace and master dataset: events archived "from Kafka" in two
ingest epochs ``e1``, ``e2`` below the cutoff, and the real-time rows the speed layer wrote
for them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

import batch.recompute
from batch.recompute import run_batch
from lamina.errors import PublishError
from lamina.settings import Settings
from lamina.views import load_views
from serving.schema import insert_cql, realtime_table
from serving.store import open_store
from tests import truth
from tests.conftest import ROOT, isolated, run_lamina
from tests.integration.answers import answers, assert_exact
from tests.integration.conftest import archive, archive_two_epochs, drop_keyspace

VIEW = "cloud_metering"


@pytest.fixture
def world(stack: Settings, tmp_path: Path) -> Iterator[dict[str, Any]]:
    settings = isolated(stack, tmp_path)
    catalog = load_views(ROOT / "conf" / "views.toml")
    view = catalog.view(VIEW)
    es = settings.pipeline.epoch_seconds
    e1 = (int(time.time()) // es - 10) * es
    g = truth.metering(400, seed=83)
    files, rt = archive_two_epochs(settings, view.source, g.good, e1)
    try:
        yield {
            "settings": settings,
            "catalog": catalog,
            "view": view,
            "e1": e1,
            "cutoff": e1 + 2 * es,
            "events": g.good,
            "realtime": rt,
            "files": files,
            "keys": sorted({ev["customer"] for ev in g.good}),
        }
    finally:
        drop_keyspace(settings)


def write_realtime(w: dict[str, Any], rows: dict[tuple[str, int, int], tuple]) -> None:
    settings, view = w["settings"], w["view"]
    with open_store(settings.cassandra, w["catalog"]) as store:
        stmt = store.session.prepare(
            insert_cql(view, f"{settings.cassandra.keyspace}.{realtime_table(view)}", realtime=True)
        )
        for (c, b, e), (secs, n) in rows.items():
            store.session.execute(stmt, (c, b, e, secs, n))


def cli_env(settings: Settings) -> dict[str, str]:
    return {
        "LAMINA_CASSANDRA__KEYSPACE": settings.cassandra.keyspace,
        "LAMINA_PIPELINE__MASTER_DIR": str(settings.master_dir),
    }


def test_a_batch_correcting_a_speed_layer_that_counted_resends_twice_is_published(
    world: dict[str, Any], spark: Any
) -> None:
    """The issue's case: the speed layer counted late re-sends twice in a third of the cells;
    the batch agrees with its master dataset, so it is published (it used to be refused
    beyond max_divergence), the report says the speed layer diverged, the answers are exact."""
    w = world
    settings, catalog, view = w["settings"], w["catalog"], w["view"]
    rt = dict(w["realtime"])
    doubled = sorted(rt)[::3]
    for k in doubled:
        rt[k] = (rt[k][0] * 2, rt[k][1] * 2)
    write_realtime(w, rt)
    said: list[str] = []
    [result] = run_batch(spark, settings, catalog, [VIEW], progress=said.append)
    with open_store(settings.cassandra, catalog) as store:
        assert store.published(view).version == result.version
        report = store.reconciliation(view, result.version)
    assert report is not None
    check = report["self_check"]
    assert (check["ok"], check["problems"], check["events"]) == (True, [], 400)
    assert (check["footer_rows"], check["read_rows"], check["duplicates"]) == (400, 400, 0)
    assert [(e["epoch"], e["files"], e["read_rows"]) for e in check["epochs"]] == [
        (w["e1"], 1, 200),
        (w["cutoff"] - settings.pipeline.epoch_seconds, 1, 200),
    ]
    cells = len({(c, b) for c, b, _ in rt})
    assert report["diverging"] > 0.1 * cells
    assert report["verdict"]["diverged"] == "speed_layer" and report["verdict"]["publishable"]
    warnings = [s for s in said if "warning: the speed layer diverged" in s]
    assert len(warnings) == 1 and "> max_divergence 10.0%" in warnings[0]
    shown = run_lamina(cli_env(settings), "batch", "report", VIEW)
    assert shown.returncode == 0, shown.stderr
    assert "self-check against the master dataset: passed (400 rows read in 2 epochs" in (
        shown.stdout
    )
    assert "diverged: the speed layer (the batch corrects it; published)" in shown.stdout
    assert_exact(VIEW, answers(settings, catalog, VIEW, w["keys"]), truth.truth(VIEW, w["events"]))


def test_a_batch_built_while_its_master_dataset_changed_is_not_published(
    world: dict[str, Any], spark: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file lands in epoch ``e1`` (below the cutoff) after the build read the master
    dataset: the batch lacks its events, its self-check says so, nothing is published. The
    next run reads the file and publishes."""
    w = world
    settings, catalog, view = w["settings"], w["catalog"], w["view"]
    write_realtime(w, w["realtime"])
    late = truth.metering(50, seed=84).good
    for ev in late:
        ev["usage_id"] = "late-" + ev["usage_id"]
    reconcile = batch.recompute.reconcile_version

    def file_lands_meanwhile(*args: Any, **kwargs: Any) -> Any:
        archive(settings, view.source, late, w["e1"])
        return reconcile(*args, **kwargs)

    monkeypatch.setattr(batch.recompute, "reconcile_version", file_lands_meanwhile)
    with pytest.raises(PublishError) as refused:
        run_batch(spark, settings, catalog, [VIEW])
    monkeypatch.undo()
    assert (
        f"epoch {w['e1']}: the master dataset's 2 file(s) hold 250 rows by their footers, "
        "the build read 200 (files changed under the build" in str(refused.value)
    )
    with open_store(settings.cassandra, catalog) as store:
        assert store.published(view) is None
        [built] = store.versions(view)
        report = store.reconciliation(view, built.version)
        # Not publishable by any route, a rollback included; the next GC collects it.
        with pytest.raises(PublishError):
            store.rollback(view, built.version)
    assert built.state == "failed" and report is not None
    assert report["verdict"]["diverged"] == "batch" and not report["verdict"]["publishable"]
    assert report["diverging"] == 0  # the real-time view agrees: only the self-check sees it
    shown = run_lamina(cli_env(settings), "batch", "report", VIEW, "--format", "json")
    assert json.loads(shown.stdout) == report
    shown = run_lamina(cli_env(settings), "batch", "report", VIEW)
    assert "self-check against the master dataset: FAILED" in shown.stdout
    assert f"  epoch {w['e1']}: 2 files, footers 250 rows, read 200," in shown.stdout
    assert "diverged: the batch: not publishable" in shown.stdout
    [result] = run_batch(spark, settings, catalog, [VIEW])
    assert result.events == 450
    want = truth.truth(VIEW, w["events"] + late)
    assert_exact(VIEW, answers(settings, catalog, VIEW, w["keys"]), want)


def corrupt(path: Path, column: str) -> None:
    """Overwrite the header of the first page of ``column`` in a Parquet file: the footer
    still reads, that column's data does not."""
    meta = pq.read_metadata(path).row_group(0)
    chunk = next(
        meta.column(i) for i in range(meta.num_columns) if meta.column(i).path_in_schema == column
    )
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    data = bytearray(path.read_bytes())
    data[start : start + 24] = b"\xff" * 24
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "column",
    # The event id, or another column the view reads: the build's one read of the files
    # (which the dedup consumes and the per-epoch counts count) misses the whole file.
    ["usage_id", "instance_seconds"],
)
def test_a_batch_missing_a_file_spark_skipped_is_not_published(
    world: dict[str, Any], spark: Any, column: str
) -> None:
    """With ``spark.sql.files.ignoreCorruptFiles`` (an operator's choice to ride over bad
    files), Spark skips a damaged file without a word: the batch would lack its 200 events."""
    w = world
    settings, catalog, view = w["settings"], w["catalog"], w["view"]
    write_realtime(w, w["realtime"])
    corrupt(w["files"][0], column)
    spark.conf.set("spark.sql.files.ignoreCorruptFiles", "true")
    try:
        with pytest.raises(PublishError) as refused:
            run_batch(spark, settings, catalog, [VIEW])
    finally:
        spark.conf.unset("spark.sql.files.ignoreCorruptFiles")
    assert (
        f"epoch {w['e1']}: the master dataset's 1 file(s) hold 200 rows by their footers, the "
        "build read 0" in str(refused.value)
    )
    with open_store(settings.cassandra, catalog) as store:
        assert store.published(view) is None


def test_a_damaged_column_the_view_does_not_read_does_not_hold_it_back(
    world: dict[str, Any], spark: Any
) -> None:
    """cloud_metering reads no ``instance_type`` (nor the raw ``ts``): a build reads only the
    view's columns, so a damaged page of that column is never read and the batch is whole
    (it used to be refused: the dedup read every column and skipped the file)."""
    w = world
    settings, catalog, view = w["settings"], w["catalog"], w["view"]
    write_realtime(w, w["realtime"])
    corrupt(w["files"][0], "instance_type")
    spark.conf.set("spark.sql.files.ignoreCorruptFiles", "true")
    try:
        [result] = run_batch(spark, settings, catalog, [VIEW])
    finally:
        spark.conf.unset("spark.sql.files.ignoreCorruptFiles")
    assert result.events == 400
    with open_store(settings.cassandra, catalog) as store:
        assert store.published(view).version == result.version
    assert_exact(VIEW, answers(settings, catalog, VIEW, w["keys"]), truth.truth(VIEW, w["events"]))
