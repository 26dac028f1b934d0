"""A view's definition changes after its real-time table and batch versions exist (issue #12,
hole 6): queries answer an explicit 503 until the source job has rebuilt the real-time table
under the new definition and a batch of it reaches the rebuilt epochs, then exact answers;
never a number computed under the old definition."""

from __future__ import annotations

import copy
import logging
import time
import tomllib
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from batch.recompute import run_batch
from lamina.buckets import ingest_epoch
from lamina.errors import LaminaError
from lamina.master import record_progress
from lamina.settings import Settings
from lamina.streams import ARCHIVER, deadletter_topic, duplicates_topic, ensure_topics
from lamina.views import ViewCatalog, load_views, parse_views
from serving.api import create_app
from serving.cassandra import ensure_keyspace
from serving.schema import realtime_table
from serving.store import open_store
from speed.queries import start_source
from tests import truth
from tests.conftest import ROOT, isolated, run_lamina
from tests.integration.answers import answers, assert_exact
from tests.integration.conftest import drop_keyspace
from tests.integration.streams import drop_private_world, private_env, produce, settings_under

DOC = tomllib.loads((ROOT / "conf" / "views.toml").read_text())
VIEW = "cloud_metering"
EPOCH_S = 3


def _columns(store: Any, table: str) -> dict[str, str]:
    rows = store.session.execute(
        "SELECT column_name, type FROM system_schema.columns "
        "WHERE keyspace_name = %s AND table_name = %s",
        (store.ks, table),
    )
    return {r.column_name: r.type for r in rows}


@pytest.fixture
def change_settings(stack: Settings, tmp_path: Path) -> Iterator[Settings]:
    """Private keyspace, topics, master dataset and checkpoints; dropped at the end."""
    with settings_under(private_env(tmp_path, "vch", EPOCH_S)) as settings:
        pass
    yield settings
    drop_private_world(settings)


def changed(catalog_file: Path, change: str) -> ViewCatalog:
    """The views of ``catalog_file`` with cloud_metering changed: its ``bucket`` from an hour
    to two, or an ``aggregation`` added (the longest usage)."""
    doc = copy.deepcopy(tomllib.loads(catalog_file.read_text()))
    if change == "bucket":
        doc["views"][VIEW]["bucket"] = "2h"
    else:
        doc["views"][VIEW]["aggregations"]["longest"] = {"fn": "max", "field": "instance_seconds"}
    return parse_views(doc)


def want(change: str, events: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
    """The truth of the changed view, from the events sent (tests/truth.py, independently)."""
    if change == "bucket":
        return truth.truth(VIEW, events, width=7200)
    out = truth.truth(VIEW, events)
    longest: dict[tuple[str, int], list[int]] = defaultdict(list)
    for ev in events:
        b = int(truth.event_seconds(ev) * 1000) // 3_600_000 * 3600
        if ev["instance_seconds"] is not None:
            longest[(ev["customer"], b)].append(ev["instance_seconds"])
    for cell, values in out.items():
        values["longest"] = max(longest[cell]) if longest[cell] else None
    return out


def epoch_boundary() -> int:
    """Wait for the next ingest epoch; returns its start (every record sent before is in an
    earlier epoch)."""
    now = ingest_epoch(int(time.time() * 1000), EPOCH_S)
    while ingest_epoch(int(time.time() * 1000), EPOCH_S) == now:
        time.sleep(0.1)
    return now + EPOCH_S


def assert_not_ready(settings: Settings, catalog: ViewCatalog, keys: list[str], why: str) -> None:
    """The view answers an explicit error, through the query service and over HTTP (503 JSON
    with a hint), never numbers."""
    with pytest.raises(LaminaError, match=why) as err:
        answers(settings, catalog, VIEW, keys)
    assert err.value.http_status == 503 and err.value.hint
    with TestClient(create_app(settings, catalog), base_url="http://127.0.0.1") as client:
        r = client.get(f"/views/{VIEW}/query", params={"key": keys[0]})
        described = client.get(f"/views/{VIEW}").json()
    assert r.status_code == 503, r.text
    assert why.split(" ")[0] in r.json()["error"] and r.json()["hint"], r.json()
    assert described["not_ready"] == r.json(), described


@pytest.mark.parametrize("change", ["bucket", "aggregation"])
def test_a_changed_definition_answers_503_until_rebuilt_then_exact(
    change_settings: Settings, spark: Any, change: str
) -> None:
    settings = change_settings
    old = load_views(settings.pipeline.views_file)
    new = changed(settings.pipeline.views_file, change)
    source = old.view(VIEW).source
    ensure_topics(settings, [source.topic, deadletter_topic(source), duplicates_topic(source)])
    with open_store(settings.cassandra, old):
        pass
    sent: list[dict[str, Any]] = []

    def send(n: int, seed: int) -> None:
        g = truth.metering(n, seed=seed, redeliver=0.05)
        produce(settings, source.topic, g.raw)
        sent.extend(g.good)

    def drain(catalog: ViewCatalog) -> None:
        query = start_source(spark, settings, catalog, source)
        try:
            query.processAllAvailable()
        finally:
            query.stop()

    def batch(catalog: ViewCatalog, cutoff: int | None = None) -> int:
        if cutoff is None:  # the archive holds every record sent so far
            record_progress(settings, source, ARCHIVER, epoch_boundary(), active=False)
        [result] = run_batch(spark, settings, catalog, [VIEW], cutoff=cutoff)
        return result.cutoff

    # Under the old definition: a published batch, and real-time rows at/after its cutoff.
    send(300, seed=71)
    drain(old)
    first_cutoff = batch(old)
    send(300, seed=72)
    drain(old)
    keys = sorted({k for k, _ in truth.truth(VIEW, sent)})
    assert_exact(VIEW, answers(settings, old, VIEW, keys), truth.truth(VIEW, sent))

    # The definition changes: batch version and real-time table are of the old one.
    assert_not_ready(settings, new, keys, "another definition")
    send(200, seed=73)  # while the source job is down
    drain(new)  # restarted under the new definition: the real-time table is rebuilt
    assert_not_ready(settings, new, keys, "another definition")  # the batch still is old
    # A batch of the new definition that does not reach the rebuilt epochs is not enough.
    batch(new, cutoff=first_cutoff)
    assert_not_ready(settings, new, keys, "rebuilt")
    # The next batch reaches them: every key x bucket exact.
    assert batch(new) > first_cutoff
    assert_exact(VIEW, answers(settings, new, VIEW, keys), want(change, sent))
    # The job goes on under the new definition, exactly.
    send(200, seed=74)
    query = start_source(spark, settings, new, source)
    try:
        query.processAllAvailable()
        assert_exact(VIEW, answers(settings, new, VIEW, keys), want(change, sent))
    finally:
        query.stop()


def test_older_tables_are_adopted_or_rebuilt_never_misread(
    stack: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A real-time table left by a Lamina before ``realtime_tables`` is adopted when it fits
    (a sum of longs as bigint is a warning, the micro-batch column is added), refused at query
    time when it does not; a source job rebuilds it, also for a changed key."""
    settings = isolated(stack, tmp_path)
    catalog = parse_views(DOC)
    view = catalog.view(VIEW)
    table = realtime_table(view)
    try:
        with open_store(settings.cassandra) as store:
            ensure_keyspace(store.session, settings.cassandra)
            store.session.execute(
                f"CREATE TABLE {store.ks}.{table} (customer text, bucket bigint, "
                "ingest_epoch bigint, instance_seconds bigint, records bigint, "
                "PRIMARY KEY ((customer), bucket, ingest_epoch))"
            )
        with (
            caplog.at_level(logging.WARNING, logger="serving.store"),
            open_store(settings.cassandra, catalog) as store,
        ):
            assert _columns(store, table)["applied_batch"] == "bigint"
            rec = store.realtime_record(view)
            assert rec is not None and rec.state == "ready"
            assert rec.definition_hash == view.definition_hash and rec.covers_from is None
        assert any("instance_seconds is bigint" in r.getMessage() for r in caplog.records)

        # A changed key of a table its source job wrote: the table is left as it is,
        # queries answer 503, and the source job's next start rebuilds it by the new key.
        rekeyed_doc = copy.deepcopy(DOC)
        rekeyed_doc["views"]["web_pageviews"]["keys"] = ["visitor"]
        rekeyed = parse_views(rekeyed_doc)
        pv = rekeyed.view("web_pageviews")
        with open_store(settings.cassandra, catalog) as store:
            before = store.follow_definition(
                catalog.view("web_pageviews"), first_batch=0, covers_from=None
            )
            assert before.state == "ready"
        with open_store(settings.cassandra, rekeyed) as store:
            assert store.realtime_record(pv) == before  # left as the job recorded it
            with pytest.raises(LaminaError, match="another definition") as err:
                answers(settings, rekeyed, "web_pageviews", ["v1"])
            assert err.value.http_status == 503
            # The CLI: one clear line with the way out, exit status 1.
            views = tmp_path / "rekeyed.toml"
            text = (ROOT / "conf" / "views.toml").read_text()
            views.write_text(text.replace('keys = ["url"]', 'keys = ["visitor"]'))
            env = {
                "LAMINA_CONFIG": str(ROOT / "conf" / "lamina.toml"),
                "LAMINA_CASSANDRA__KEYSPACE": settings.cassandra.keyspace,
                "LAMINA_PIPELINE__VIEWS_FILE": str(views),
                "LAMINA_PIPELINE__MASTER_DIR": str(tmp_path / "master"),
            }
            cli = run_lamina(env, "query", "web_pageviews", "v1")
            assert cli.returncode == 1, cli
            assert "another definition" in cli.stderr and "restart the source job" in cli.stderr
            assert "Traceback" not in cli.stderr
            rec = store.follow_definition(pv, first_batch=7, covers_from=1200)
            assert (rec.state, rec.definition_hash) == ("ready", pv.definition_hash)
            assert (rec.covers_from, rec.job_batch) == (1200, 7)
            cols = store.session.execute(
                "SELECT column_name, kind FROM system_schema.columns "
                "WHERE keyspace_name = %s AND table_name = %s",
                (store.ks, realtime_table(pv)),
            )
            assert {r.column_name for r in cols if r.kind == "partition_key"} == {"visitor"}
            # Nothing published reaches epoch 1200: still an explicit error.
            with pytest.raises(LaminaError, match="rebuilt") as err:
                answers(settings, rekeyed, "web_pageviews", ["v1"])
            # The same definition again: the table is kept.
            assert store.follow_definition(pv, first_batch=9, covers_from=None) == rec
            # A table dropped by hand (as the hint of an older Lamina said) is rebuilt.
            store.session.execute(f"DROP TABLE {store.ks}.{realtime_table(pv)}", timeout=120)
            again = store.follow_definition(pv, first_batch=9, covers_from=1500)
            assert (again.state, again.covers_from, again.job_batch) == ("ready", 1500, 9)
            assert _columns(store, realtime_table(pv))
    finally:
        drop_keyspace(settings)
