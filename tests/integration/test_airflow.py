"""Airflow: migrate a fresh metadata DB and run the DAGs in dags/ with `airflow dags test`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lamina.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
AIRFLOW = str(Path(sys.executable).parent / "airflow")


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
    airflow("db", "migrate", env=env)
    return env


def airflow(*args: str, env: dict[str, str]) -> str:
    proc = subprocess.run([AIRFLOW, *args], env=env, capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, f"airflow {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_dags_import_cleanly(airflow_env: dict[str, str]) -> None:
    out = airflow("dags", "list-import-errors", "-l", "-o", "json", env=airflow_env)
    assert json.loads(out) == []


def test_smoke_dag_runs_green(airflow_env: dict[str, str]) -> None:
    airflow("dags", "test", "lamina_smoke", env=airflow_env)
    runs = json.loads(airflow("dags", "list-runs", "lamina_smoke", "-o", "json", env=airflow_env))
    assert runs and runs[0]["state"] == "success"
    states = json.loads(
        airflow(
            "tasks",
            "states-for-dag-run",
            "lamina_smoke",
            runs[0]["run_id"],
            "-o",
            "json",
            env=airflow_env,
        )
    )
    assert {s["task_id"]: s["state"] for s in states} == {
        "probe_kafka": "success",
        "probe_cassandra": "success",
        "report": "success",
    }


VIEWS = ("web_pageviews", "iot_temperature", "cloud_metering")
BATCH_TASKS = {
    "wait_for_archiver": ["recompute"],
    "recompute": ["validate"],
    "validate": ["publish"],
    "publish": ["purge_and_gc"],
    "purge_and_gc": [],
}


def test_batch_dags_are_generated_per_view(airflow_env: dict[str, str]) -> None:
    code = (
        "import json, os\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        "bag = DagBag(os.environ['AIRFLOW__CORE__DAGS_FOLDER'])\n"
        "print(json.dumps({'errors': list(bag.import_errors), 'dags': {d: {t.task_id: "
        "sorted(t.downstream_task_ids) for t in dag.tasks} for d, dag in bag.dags.items()}, "
        "'schedules': {d: str(dag.schedule) for d, dag in bag.dags.items()}}))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=airflow_env, capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["errors"] == []
    for view in VIEWS:
        assert out["dags"][f"lamina_batch_{view}"] == BATCH_TASKS
        assert out["schedules"][f"lamina_batch_{view}"] == "@hourly"


def test_batch_dag_publishes_and_purges(
    airflow_env: dict[str, str], world: dict[str, Any], tmp_path: Path
) -> None:
    from batch.master import import_files
    from serving.cassandra import session
    from serving.query import QueryService
    from serving.store import Store, insert_cql, realtime_table
    from tests import truth

    settings, catalog = world["settings"], world["catalog"]
    view = catalog.view("cloud_metering")
    more = truth.metering(200, seed=77)
    path = tmp_path / "more.jsonl"
    path.write_bytes(b"\n".join(more.raw) + b"\n")
    import_files(settings, view.source, [path])
    world["data"]["cloud_metering"].good.extend(more.good)
    with session(settings.cassandra) as s:
        store = Store(s, settings.cassandra)
        before = store.published(view)
        # A real-time row of an epoch every batch covers: dead weight the DAG must purge.
        stale = s.prepare(
            insert_cql(view, f"{settings.cassandra.keyspace}.{realtime_table(view)}", realtime=True)
        )
        s.execute(stale, ("c1", truth.BASE // 3600 * 3600, 0, 999_999, 1))
    env = {
        **airflow_env,
        "LAMINA_CASSANDRA__KEYSPACE": settings.cassandra.keyspace,
        "LAMINA_PIPELINE__MASTER_DIR": str(settings.master_dir),
    }
    airflow("dags", "test", "lamina_batch_cloud_metering", env=env)
    runs = json.loads(
        airflow("dags", "list-runs", "lamina_batch_cloud_metering", "-o", "json", env=env)
    )
    states = json.loads(
        airflow(
            "tasks",
            "states-for-dag-run",
            "lamina_batch_cloud_metering",
            runs[0]["run_id"],
            "-o",
            "json",
            env=env,
        )
    )
    assert {s["task_id"]: s["state"] for s in states} == dict.fromkeys(BATCH_TASKS, "success")
    with session(settings.cassandra) as s:
        store = Store(s, settings.cassandra)
        after = store.published(view)
        assert after.version > before.version and after.cutoff > before.cutoff
        rt = list(store.read_realtime(view, ("c1",), 0, 2**40))
        assert all(r.ingest_epoch >= store.retained_min_cutoff(view) for r in rt)
        assert not any(r.ingest_epoch == 0 for r in rt)
        answer = QueryService(store, catalog, settings).query(
            "cloud_metering", [f"c{i}" for i in range(6)], truth.BASE - 86400 * 4, truth.BASE + 3600
        )
    want = truth.truth("cloud_metering", world["data"]["cloud_metering"].good)
    got = {
        (r["key"], b["bucket_start"]): b["values"] for r in answer["results"] for b in r["buckets"]
    }
    assert got == want
