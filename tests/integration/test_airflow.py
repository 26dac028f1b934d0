"""Airflow: migrate a fresh metadata DB and run the DAGs in dags/ with `airflow dags test`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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
