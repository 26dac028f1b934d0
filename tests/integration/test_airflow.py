"""Airflow: every DAG in dags/ checked for structure and run with `airflow dags test`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lamina.master import progress
from lamina.settings import Settings
from lamina.views import load_views
from serving.cassandra import session
from serving.query import QueryService
from serving.schema import insert_cql, realtime_table
from serving.store import Store
from tests import truth
from tests.integration.airflow_harness import AirflowHarness, newest_run
from tests.integration.answers import answers
from tests.integration.conftest import archive_two_epochs
from tests.integration.test_batch_shared_read import VISITORS

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory: pytest.TempPathFactory, stack: Settings) -> dict[str, str]:
    home = tmp_path_factory.mktemp("airflow_home")
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        # Graphviz's import warning is printed on stdout and would corrupt `-o json`.
        "PYTHONWARNINGS": "ignore:Could not import graphviz,ignore::DeprecationWarning",
        "LAMINA_CONFIG": str(ROOT / "conf" / "lamina.toml"),
    }
    return env


@pytest.fixture(scope="module")
def harness(airflow_env: dict[str, str]) -> Iterator[AirflowHarness]:
    """One warm Airflow process for the module (see :mod:`tests.integration.airflow_harness`),
    its metadata DB migrated."""
    h = AirflowHarness(airflow_env, Path(airflow_env["AIRFLOW_HOME"]) / "harness.log")
    try:
        airflow(h, "db", "migrate", env=airflow_env)
        yield h
    finally:
        h.close()


def airflow(
    h: AirflowHarness,
    *args: str,
    env: dict[str, str],
    ok: bool = True,
    stderr: bool = False,
    cwd: Path | None = None,
) -> str:
    """Run the airflow CLI (in ``cwd``, default the repository); assert it succeeded (or
    failed, ``ok=False``); its stdout, or stdout+stderr when it failed or ``stderr``."""
    rc, stdout, err = h.run(*args, env=env, cwd=cwd)
    out = f"{stdout}\n{err}"
    assert (rc == 0) == ok, f"airflow {' '.join(args)} exited {rc}:{out}"
    return stdout if ok and not stderr else out


def run_dag(
    h: AirflowHarness,
    dag_id: str,
    env: dict[str, str],
    conf: dict[str, Any] | None = None,
    ok: bool = True,
    cwd: Path | None = None,
) -> tuple[dict[str, str], str]:
    """`airflow dags test` one run; the states of its tasks and the command's output (stdout
    and stderr). The
    run (read from the metadata DB) is new and succeeded, or failed when ``ok=False``."""
    db = Path(env["AIRFLOW_HOME"]) / "airflow.db"
    before = newest_run(db, dag_id)
    args = ["dags", "test", dag_id, *(["-c", json.dumps(conf)] if conf else [])]
    out = airflow(h, *args, env=env, ok=ok, stderr=True, cwd=cwd)
    run = newest_run(db, dag_id)
    assert run is not None and (before is None or run.id > before.id), f"no new run of {dag_id}"
    assert run.state == ("success" if ok else "failed")
    return run.tasks, out


def test_dags_import_cleanly(harness: AirflowHarness, airflow_env: dict[str, str]) -> None:
    out = airflow(harness, "dags", "list-import-errors", "-l", "-o", "json", env=airflow_env)
    assert json.loads(out) == []


def test_smoke_dag_runs_green(harness: AirflowHarness, airflow_env: dict[str, str]) -> None:
    states, _ = run_dag(harness, "lamina_smoke", airflow_env)
    assert states == {
        "probe_kafka": "success",
        "probe_cassandra": "success",
        "report": "success",
    }


def test_smoke_dag_finds_the_settings_from_any_directory(
    harness: AirflowHarness, airflow_env: dict[str, str], tmp_path: Path
) -> None:
    """A scheduler is started anywhere: without ``LAMINA_CONFIG`` the smoke DAG, like the
    others, reads the repository's ``conf/lamina.toml``, not the working directory's."""
    env = {k: v for k, v in airflow_env.items() if k != "LAMINA_CONFIG"}
    states, out = run_dag(harness, "lamina_smoke", env, cwd=tmp_path)
    assert set(states.values()) == {"success"}
    assert f"(settings: {ROOT / 'conf' / 'lamina.toml'})" in out


VIEWS = ("web_pageviews", "iot_temperature", "cloud_metering")
SOURCE = {"web_pageviews": "pageviews", "iot_temperature": "sensors", "cloud_metering": "metering"}
CHAIN = {"validate": ["publish"], "publish": ["purge_and_gc"], "purge_and_gc": []}
TASKFLOW_CHAIN = {"recompute": ["validate"], **CHAIN}
SPARK_CHAIN = {"submission": ["recompute"], "recompute": ["validate"], **CHAIN}


def chain(first: str, runner: str, prefix: str = "") -> dict[str, list[str]]:
    """Expected downstream ids of ``first`` (the cutoff's producer) and the build chain."""
    steps = TASKFLOW_CHAIN if runner == "taskflow" else SPARK_CHAIN
    head = "recompute" if runner == "taskflow" else "submission"
    out = {prefix + first: sorted([prefix + head, prefix + "validate"])}
    return out | {prefix + t: [prefix + d for d in down] for t, down in steps.items()}


def source_chain(source: str, views: list[str], runner: str) -> dict[str, list[str]]:
    """Expected downstream ids of ``lamina_recompute``'s task group of ``source``: ``plan``
    -> one recompute of ``views`` -> a task group per view (validate -> publish -> GC)."""
    head = "recompute" if runner == "taskflow" else "submission"
    validates = [f"{source}.{v}.validate" for v in views]
    out = {f"{source}.plan": sorted([f"{source}.{head}", *validates])}
    if runner == "spark_submit":
        out[f"{source}.submission"] = [f"{source}.recompute"]
    out[f"{source}.recompute"] = sorted(validates)
    for v in views:
        out |= {
            f"{source}.{v}.{t}": [f"{source}.{v}.{d}" for d in down] for t, down in CHAIN.items()
        }
    return out


DUMP_DAGS = """
import json, os
from airflow.dag_processing.dagbag import DagBag

def callbacks(t):
    cb = t.on_failure_callback or []
    return [c.__name__ for c in (cb if isinstance(cb, list) else [cb])]

def task(t):
    out = {"type": type(t).__name__, "down": sorted(t.downstream_task_ids),
           "retries": t.retries, "on_failure": callbacks(t),
           "timeout": t.execution_timeout and t.execution_timeout.total_seconds()}
    if out["type"] == "SparkSubmitOperator":
        out |= {"application": t.application, "conn_id": t._conn_id}
    return out

bag = DagBag(os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
print(json.dumps({"errors": list(bag.import_errors), "dags": {
    d: {"schedule": str(dag.schedule), "params": {k: dag.params[k] for k in dag.params},
        "max_active_runs": dag.max_active_runs, "tasks": {t.task_id: task(t) for t in dag.tasks}}
    for d, dag in bag.dags.items()}}))
"""


def dump_dags(h: AirflowHarness, env: dict[str, str]) -> dict[str, Any]:
    rc, stdout, stderr = h.python(DUMP_DAGS, env=env)
    assert rc == 0, stderr
    out: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    assert out["errors"] == []
    return out["dags"]


@pytest.mark.parametrize("runner", ["taskflow", "spark_submit"])
def test_every_dag_structure(
    harness: AirflowHarness, airflow_env: dict[str, str], runner: str
) -> None:
    dags = dump_dags(harness, {**airflow_env, "LAMINA_AIRFLOW__RUNNER": runner})
    assert set(dags) == {
        "lamina_smoke",
        "lamina_recompute",
        "lamina_freshness",
        *(f"lamina_batch_{v}" for v in VIEWS),
    }
    down = {d: {t: x["down"] for t, x in dag["tasks"].items()} for d, dag in dags.items()}
    assert down["lamina_smoke"] == {
        "probe_kafka": ["report"],
        "probe_cassandra": ["report"],
        "report": [],
    }
    assert dags["lamina_smoke"]["schedule"] == "None"
    for view in VIEWS:
        dag = dags[f"lamina_batch_{view}"]
        assert down[f"lamina_batch_{view}"] == chain("wait_for_archiver", runner)
        assert (dag["schedule"], dag["max_active_runs"], dag["params"]) == ("@hourly", 1, {})
        assert dag["tasks"]["wait_for_archiver"]["timeout"] == 3660
        assert dag["tasks"]["validate"]["retries"] == 0
        assert dag["tasks"]["validate"]["on_failure"] == ["alert_on_failure"]
        assert dag["tasks"]["publish"]["retries"] == 2
        assert dag["tasks"]["publish"]["timeout"] == 600
    recompute = dags["lamina_recompute"]
    assert (recompute["schedule"], recompute["max_active_runs"]) == ("None", 1)
    assert recompute["params"] == {"views": list(VIEWS), "from_scratch": False}
    want = {"select_views": sorted(f"{SOURCE[v]}.plan" for v in VIEWS)}
    for view in VIEWS:
        want |= source_chain(SOURCE[view], [view], runner)
    assert down["lamina_recompute"] == want
    fresh = dags["lamina_freshness"]
    assert (fresh["schedule"], fresh["params"]) == ("*/15 * * * *", {})
    assert fresh["tasks"] == {
        f"check_{v}": {
            "type": "_PythonDecoratedOperator",
            "down": [],
            "retries": 0,
            "on_failure": ["alert_on_failure"],
            "timeout": 600.0,
        }
        for v in VIEWS
    }
    for tasks in (dags["lamina_batch_cloud_metering"]["tasks"], recompute["tasks"]):
        build = next(t for i, t in tasks.items() if i.endswith("recompute"))
        assert build["timeout"] == 4 * 3600
        if runner == "taskflow":
            assert build["type"] == "_PythonDecoratedOperator"
        else:
            assert build["type"] == "SparkSubmitOperator"
            assert build["application"] == str(ROOT / "batch" / "driver.py")
            assert build["conn_id"] == "lamina_spark"


@pytest.fixture(scope="module")
def world_env(airflow_env: dict[str, str], private_world: dict[str, Any]) -> dict[str, str]:
    """The Airflow environment pointed at this module's own world (keyspace and master
    dataset; the DAG runs add epochs, versions and real-time rows to it)."""
    settings = private_world["settings"]
    return {
        **airflow_env,
        "LAMINA_CASSANDRA__KEYSPACE": settings.cassandra.keyspace,
        "LAMINA_PIPELINE__MASTER_DIR": str(settings.master_dir),
    }


def test_batch_dag_reconciles_publishes_and_purges(
    harness: AirflowHarness, world_env: dict[str, str], private_world: dict[str, Any]
) -> None:
    """New events arrive through "Kafka" in two epochs; the real-time view agrees on every
    cell but three: one differs, one is missing, and one holds a dead-weight row of epoch 0
    that no batch event backs.

    First run: one archived file of epoch ``e1`` is damaged and Spark is told to ride over
    bad files (``spark.sql.files.ignoreCorruptFiles``), so the batch lacks its events: its
    self-check against the master dataset fails, ``validate`` fails with an ALERT and nothing
    is published. Second run, the file restored, with ``max_divergence`` 0.01 (the three
    cells are beyond it, which blocked the publish before): the batch passes its self-check,
    so it is published and the speed layer's divergence alerted on; its report finds exactly
    those three cells, the covered real-time rows are purged and the merged answers equal
    the truth."""
    settings, catalog = private_world["settings"], private_world["catalog"]
    view = catalog.view("cloud_metering")
    es = settings.pipeline.epoch_seconds
    # The first epoch no batch may have covered yet (an archiver catching up); not "now",
    # which would put the cutoff ahead of now and make the freshness test wait for it.
    e1 = max(int(w["complete_before"]) for w in progress(settings, view.source).values())
    more = truth.metering(200, seed=77)
    files, rt = archive_two_epochs(settings, view.source, more.good, e1)
    private_world["data"]["cloud_metering"].good.extend(more.good)
    cells = sorted({(c, b) for c, b, _ in rt})
    differ, missing = cells[0], cells[1]
    row = next(k for k in rt if k[:2] == differ)
    rt[row] = (rt[row][0], rt[row][1] + 1)
    rt = {k: v for k, v in rt.items() if k[:2] != missing}
    dead = ("c9", truth.BASE // 3600 * 3600, 0)  # no event of c9 exists anywhere
    rt[dead] = (999_999, 1)
    with session(settings.cassandra) as s:
        store = Store(s, settings.cassandra)
        before = store.published(view)
        stmt = s.prepare(
            insert_cql(view, f"{settings.cassandra.keyspace}.{realtime_table(view)}", realtime=True)
        )
        for (c, b, e), (secs, n) in rt.items():
            s.execute(stmt, (c, b, e, secs, n))

    intact = files[0].read_bytes()
    damaged = bytearray(intact)
    damaged[4:40] = b"\xff" * 36  # the first page header: the footer still reads
    files[0].write_bytes(bytes(damaged))
    lenient_spark = json.dumps({"spark.sql.files.ignoreCorruptFiles": "true"})
    strict = {**world_env, "LAMINA_AIRFLOW__MAX_DIVERGENCE": "0.01"}
    broken = {**strict, "LAMINA_SPARK__CONF": lenient_spark}
    states, out = run_dag(harness, "lamina_batch_cloud_metering", broken, ok=False)
    assert states == {
        "wait_for_archiver": "success",
        "recompute": "success",
        "validate": "failed",
        "publish": "upstream_failed",
        "purge_and_gc": "upstream_failed",
    }
    alerts = [line for line in out.splitlines() if line.startswith("ALERT lamina")]
    assert len(alerts) == 1, out
    assert alerts[0].startswith("ALERT lamina lamina_batch_cloud_metering.validate: view ")
    assert (
        f"the batch disagrees with its master dataset: epoch {e1}: the master dataset's "
        "1 file(s) hold 100 rows by their footers, the build read 0" in alerts[0]
    )
    files[0].write_bytes(intact)  # the operator restores the file
    states, out = run_dag(harness, "lamina_batch_cloud_metering", strict)
    assert states == dict.fromkeys(chain("wait_for_archiver", "taskflow"), "success")
    alerts = [line for line in out.splitlines() if line.startswith("ALERT lamina")]
    assert len(alerts) == 1, out
    assert alerts[0].startswith(
        "ALERT lamina lamina_batch_cloud_metering.validate: view 'cloud_metering' version "
    )
    assert "the speed layer diverged: 3 of" in alerts[0] and "> max_divergence 1.0%" in alerts[0]

    with session(settings.cassandra) as s:
        store = Store(s, settings.cassandra)
        after = store.published(view)
        assert after.version > before.version + 1  # the broken run's version stays unpublished
        assert after.cutoff == e1 + 2 * es > before.cutoff
        report = store.reconciliation(view, after.version)
        rejected = store.reconciliation(view, after.version - 1)
        floor = store.retained_min_cutoff(view)
        kept = [r for k in ("c0", "c1", "c9") for r in store.read_realtime(view, (k,), 0, 2**40)]
        answer = QueryService(store, catalog, settings).query(
            "cloud_metering", [f"c{i}" for i in range(6)], truth.BASE - 86400 * 4, truth.BASE + 3600
        )
    assert floor is not None and all(r.ingest_epoch >= floor for r in kept)
    assert not any(r.ingest_epoch == 0 for r in kept)  # the dead weight was purged
    assert report is not None and rejected is not None
    assert rejected["verdict"]["diverged"] == "batch"
    assert not rejected["self_check"]["ok"]
    assert rejected["self_check"]["events"] == report["self_check"]["events"] - 100
    assert report["verdict"] == {
        "diverged": "speed_layer",
        "problems": [],
        "warnings": [alerts[0].split("version ", 1)[1].split(": ", 1)[1]],
        "publishable": True,
    }
    assert report["self_check"]["ok"] and report["self_check"]["problems"] == []
    assert {k: report[k] for k in REPORT_COUNTS} == {
        "cutoff": e1 + 2 * es,
        "epoch_from": 0,
        "realtime_rows": len(rt),
        "cells": len(cells) + 1,
        "equal": len(cells) - 2,
        "differing": 1,
        "missing_realtime": 1,
        "missing_batch": 1,
        "diverging": 3,
    }
    by_kind = {smp["kind"]: smp for smp in report["samples"]}
    assert set(by_kind) == {"differing", "missing_realtime", "missing_batch"}
    want = truth.truth("cloud_metering", more.good)
    assert by_kind["differing"] == {
        "kind": "differing",
        "key": [differ[0]],
        "bucket": differ[1],
        "aggregations": ["records"],
        "batch": want[differ],
        "realtime": {**want[differ], "records": want[differ]["records"] + 1},
    }
    assert (by_kind["missing_realtime"]["key"], by_kind["missing_realtime"]["bucket"]) == (
        [missing[0]],
        missing[1],
    )
    assert by_kind["missing_batch"]["realtime"] == {"instance_seconds": 999_999, "records": 1}
    cli = subprocess.run(
        [
            str(Path(sys.executable).parent / "lamina"),
            "batch",
            "report",
            "cloud_metering",
            "--format",
            "json",
        ],
        env=world_env,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout) == report
    got = {
        (r["key"], b["bucket_start"]): b["values"] for r in answer["results"] for b in r["buckets"]
    }
    assert got == truth.truth("cloud_metering", private_world["data"]["cloud_metering"].good)


REPORT_COUNTS = (
    "cutoff",
    "epoch_from",
    "realtime_rows",
    "cells",
    "equal",
    "differing",
    "missing_realtime",
    "missing_batch",
    "diverging",
)


def published(world: dict[str, Any]) -> dict[str, Any]:
    settings, catalog = world["settings"], world["catalog"]
    with session(settings.cassandra) as s:
        store = Store(s, settings.cassandra)
        return {v: store.published(catalog.view(v)) for v in VIEWS}


def group_states(states: dict[str, str], view: str) -> set[str]:
    """The states of the tasks of ``view``'s source group in a ``lamina_recompute`` run."""
    return {st for t, st in states.items() if t.startswith(f"{SOURCE[view]}.")}


def test_recompute_dag_from_scratch_with_connection_endpoints(
    harness: AirflowHarness, world_env: dict[str, str], private_world: dict[str, Any]
) -> None:
    """Chosen views are rebuilt although nothing new arrived; the others are skipped. The
    settings point at a dead Cassandra port: the run works only through the
    ``lamina_cassandra`` connection that overrides it."""
    settings = private_world["settings"]
    cass = settings.cassandra
    env = {
        **world_env,
        "LAMINA_CASSANDRA__PORT": "1",
        "AIRFLOW_CONN_LAMINA_CASSANDRA": f"cassandra://{cass.host}:{cass.port}",
    }
    before = published(private_world)
    chosen = ["web_pageviews", "iot_temperature"]
    states, _ = run_dag(harness, "lamina_recompute", env, {"views": chosen, "from_scratch": True})
    assert states["select_views"] == "success"
    for view in chosen:
        assert group_states(states, view) == {"success"}
    assert group_states(states, "cloud_metering") == {"skipped"}
    after = published(private_world)
    assert after["cloud_metering"] == before["cloud_metering"]
    with session(cass) as s:
        store = Store(s, cass)
        for view in chosen:
            assert after[view].version > before[view].version
            assert after[view].cutoff == before[view].cutoff
            report = store.reconciliation(private_world["catalog"].view(view), after[view].version)
            assert report is not None
            assert (report["cutoff"], report["epoch_from"], report["cells"]) == (
                after[view].cutoff,
                None,
                0,
            )
    for view in chosen:
        want = truth.truth(view, private_world["data"][view].good)
        got = answers(settings, private_world["catalog"], view, sorted({k for k, _ in want}))
        assert set(got) == set(want)
        assert {k: p for k in want if (p := truth.check(view, got[k]["values"], want[k]))} == {}


def test_recompute_dag_with_spark_submit(
    harness: AirflowHarness, world_env: dict[str, str], private_world: dict[str, Any]
) -> None:
    """``runner = spark_submit``: the build runs in a ``spark-submit`` driver on the master of
    the ``lamina_spark`` connection; ``validate`` finds the version it built in the store."""
    env = {
        **world_env,
        "LAMINA_AIRFLOW__RUNNER": "spark_submit",
        "AIRFLOW_CONN_LAMINA_SPARK": json.dumps({"conn_type": "spark", "host": "local[1]"}),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    before = published(private_world)
    conf = {"views": ["cloud_metering"], "from_scratch": True}
    states, _ = run_dag(harness, "lamina_recompute", env, conf)
    assert {t: st for t, st in states.items() if t.startswith("metering.")} == dict.fromkeys(
        source_chain("metering", ["cloud_metering"], "spark_submit"), "success"
    )
    assert group_states(states, "web_pageviews") == group_states(states, "iot_temperature")
    assert group_states(states, "web_pageviews") == {"skipped"}
    after = published(private_world)
    assert after["cloud_metering"].version > before["cloud_metering"].version
    assert after["cloud_metering"].cutoff == before["cloud_metering"].cutoff
    settings, catalog = private_world["settings"], private_world["catalog"]
    with session(settings.cassandra) as s:
        version = Store(s, settings.cassandra).version(
            catalog.view("cloud_metering"), after["cloud_metering"].version
        )
    assert version is not None and version.state == "published"
    want = truth.truth("cloud_metering", private_world["data"]["cloud_metering"].good)
    got = answers(settings, catalog, "cloud_metering", sorted({k for k, _ in want}))
    assert {k: b["values"] for k, b in got.items()} == want


def test_spark_submit_without_its_connection_fails_at_once_saying_so(
    harness: AirflowHarness, world_env: dict[str, str], private_world: dict[str, Any]
) -> None:
    """Without the ``lamina_spark`` connection the Spark provider would submit to ``yarn``
    and fail three times: the ``submission`` step fails once, naming the connection."""
    env = {**world_env, "LAMINA_AIRFLOW__RUNNER": "spark_submit"}
    env.pop("AIRFLOW_CONN_LAMINA_SPARK", None)
    before = published(private_world)
    conf = {"views": ["cloud_metering"], "from_scratch": True}
    states, out = run_dag(harness, "lamina_recompute", env, conf, ok=False)
    assert states["metering.submission"] == "failed"
    assert states["metering.recompute"] == "upstream_failed"
    assert "needs the Airflow connection 'lamina_spark'" in out
    assert "AIRFLOW_CONN_LAMINA_SPARK=" in out
    assert out.count("needs the Airflow connection") <= 2  # no retries (the log and the error)
    assert published(private_world) == before


def test_recompute_dag_skips_views_without_new_epochs(
    harness: AirflowHarness, world_env: dict[str, str], private_world: dict[str, Any]
) -> None:
    before = published(private_world)
    states, _ = run_dag(harness, "lamina_recompute", world_env, {"from_scratch": False})
    assert states["select_views"] == "success"
    assert {st for t, st in states.items() if t != "select_views"} == {"skipped"}
    assert published(private_world) == before


def test_recompute_dag_rejects_unknown_views(
    harness: AirflowHarness, world_env: dict[str, str]
) -> None:
    states, out = run_dag(
        harness, "lamina_recompute", world_env, {"views": ["web_pageviews", "nope"]}, ok=False
    )
    assert states["select_views"] == "failed"
    assert {st for t, st in states.items() if t != "select_views"} == {"upstream_failed"}
    assert (
        "unknown view(s) 'nope' (known views: web_pageviews, iot_temperature, cloud_metering)"
        in out
    )


def test_freshness_dag_healthy_and_stale(
    harness: AirflowHarness,
    world_env: dict[str, str],
    private_world: dict[str, Any],
    tmp_path: Path,
) -> None:
    states, out = run_dag(harness, "lamina_freshness", world_env)
    assert states == {f"check_{v}": "success" for v in VIEWS}
    assert "ALERT" not in out
    # The same views, but cloud_metering tolerates 1 s of staleness: its cutoff is older.
    views = tmp_path / "views.toml"
    text = (ROOT / "conf" / "views.toml").read_text()
    views.write_text(
        text.replace("[views.cloud_metering]\n", "[views.cloud_metering]\nmax_staleness_s = 1\n")
    )
    # A cutoff may lie ahead of now (an import or archive completes the current epoch), by
    # a few epochs at most: wait until it is past the 1 s limit.
    es = private_world["settings"].pipeline.epoch_seconds
    wait = published(private_world)["cloud_metering"].cutoff + 2 - time.time()
    assert wait < 4 * es, f"cloud_metering's cutoff lies {wait:.0f}s ahead of now"
    time.sleep(max(0.0, wait))
    stale = {**world_env, "LAMINA_PIPELINE__VIEWS_FILE": str(views)}
    states, out = run_dag(harness, "lamina_freshness", stale, ok=False)
    assert states == {
        "check_web_pageviews": "success",
        "check_iot_temperature": "success",
        "check_cloud_metering": "failed",
    }
    alerts = [line for line in out.splitlines() if line.startswith("ALERT lamina")]
    assert len(alerts) == 1
    assert alerts[0].startswith(
        "ALERT lamina lamina_freshness.check_cloud_metering: view 'cloud_metering' version "
    )
    assert "(limit 1s): stale" in alerts[0]


@pytest.fixture(scope="module")
def visitors_views(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The demo's views plus ``web_visitors``, a second view of the pageviews source."""
    path = tmp_path_factory.mktemp("views") / "views.toml"
    path.write_text((ROOT / "conf" / "views.toml").read_text() + VISITORS)
    return str(path)


def test_recompute_dag_builds_the_views_of_a_source_in_one_recompute(
    harness: AirflowHarness, airflow_env: dict[str, str], visitors_views: str
) -> None:
    """Two views of one source: one ``plan`` and one ``recompute`` for both, then a task
    group per view."""
    env = {**airflow_env, "LAMINA_PIPELINE__VIEWS_FILE": visitors_views}
    for runner in ("taskflow", "spark_submit"):
        dags = dump_dags(harness, {**env, "LAMINA_AIRFLOW__RUNNER": runner})
        down = {t: x["down"] for t, x in dags["lamina_recompute"]["tasks"].items()}
        pageviews = {t: d for t, d in down.items() if t.startswith("pageviews.")}
        assert pageviews == source_chain("pageviews", ["web_pageviews", "web_visitors"], runner)


def test_recompute_dag_reads_a_source_once_for_its_views(
    harness: AirflowHarness,
    world_env: dict[str, str],
    private_world: dict[str, Any],
    visitors_views: str,
) -> None:
    """A run over two views of one source reads and deduplicates it once (the second
    build's timings say it took the first one's read), and both are published; the
    merged answers of web_pageviews still equal the truth."""
    env = {**world_env, "LAMINA_PIPELINE__VIEWS_FILE": visitors_views}
    chosen = ["web_pageviews", "web_visitors"]
    before = published(private_world)
    states, _ = run_dag(harness, "lamina_recompute", env, {"views": chosen, "from_scratch": True})
    assert {st for t, st in states.items() if t.startswith("pageviews.")} == {"success"}
    assert group_states(states, "iot_temperature") == {"skipped"}
    settings = private_world["settings"]
    catalog = load_views(Path(visitors_views))
    with session(settings.cassandra) as s:
        store = Store(s, settings.cassandra)
        pubs = {v: store.published(catalog.view(v)) for v in chosen}
        built = {v: store.version(catalog.view(v), pubs[v].version) for v in chosen}
    assert pubs["web_pageviews"].version > before["web_pageviews"].version
    assert pubs["web_visitors"].cutoff == pubs["web_pageviews"].cutoff
    timings = {v: built[v].timings for v in chosen}
    assert [timings[v]["read_views"] for v in chosen] == [2, 2], timings
    assert [timings[v]["read_shared"] for v in chosen] == [0, 1], timings
    want = truth.truth("web_pageviews", private_world["data"]["web_pageviews"].good)
    got = answers(settings, private_world["catalog"], "web_pageviews", sorted({k for k, _ in want}))
    assert {
        k: p for k in want if (p := truth.check("web_pageviews", got[k]["values"], want[k]))
    } == {}
