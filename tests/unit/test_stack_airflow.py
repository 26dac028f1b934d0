"""The dev stack's Airflow part, without starting it: only when asked for, one shared and
private configuration whose task-critical settings the caller's ``AIRFLOW__*`` variables
cannot split, and ``stack down`` leaving no child behind."""

from __future__ import annotations

import configparser
import json
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lamina import process
from lamina.errors import PortInUseError, StackError
from lamina.settings import Settings, environment, load_settings
from lamina.stack.airflow_services import airflow_env, write_config
from lamina.stack.manager import Stack

ROOT = Path(__file__).resolve().parents[2]
AIRFLOW = ["airflow-api-server", "airflow-scheduler", "airflow-dag-processor"]


def _settings(tmp_path: Path, **airflow: object) -> Settings:
    s = load_settings(ROOT / "conf" / "lamina.toml")
    return s.model_copy(
        update={
            "stack": s.stack.model_copy(update={"state_dir": tmp_path}),
            "airflow": s.airflow.model_copy(update=airflow),
        }
    )


def _names(stack: Stack) -> list[str]:
    return [svc.name for svc in stack.services]


def test_airflow_joins_the_stack_only_when_asked(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    assert _names(Stack(s)) == ["kafka", "cassandra"]
    assert _names(Stack(s, airflow=True)) == ["kafka", "cassandra", *AIRFLOW]
    on = s.model_copy(update={"stack": s.stack.model_copy(update={"airflow": True})})
    assert _names(Stack(on)) == ["kafka", "cassandra", *AIRFLOW]
    assert _names(Stack(on, airflow=False)) == ["kafka", "cassandra"]
    assert _names(Stack(s, ["airflow"])) == AIRFLOW
    assert _names(Stack(s, ["airflow-scheduler", "kafka", "airflow"])) == [
        "airflow-scheduler",
        "kafka",
        "airflow-api-server",
        "airflow-dag-processor",
    ]
    with pytest.raises(StackError, match="choose from kafka, cassandra, airflow"):
        Stack(s, ["airflow-webserver"])


def test_airflow_configuration_is_private_and_points_tasks_at_the_configured_port(
    tmp_path: Path,
) -> None:
    s = _settings(tmp_path, port=21234)
    cfg_path = write_config(s)
    assert cfg_path == tmp_path / "airflow" / "airflow.cfg"
    assert stat.S_IMODE(cfg_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(cfg_path.parent.stat().st_mode) == 0o700
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(cfg_path)
    assert cfg["core"]["execution_api_server_url"] == "http://127.0.0.1:21234/execution/"
    assert cfg["api"]["base_url"] == "http://127.0.0.1:21234"
    assert (cfg["api"]["host"], cfg["api"]["port"]) == ("127.0.0.1", "21234")
    assert cfg["core"]["executor"] == "LocalExecutor"
    assert cfg["core"]["dags_folder"] == str(ROOT / "dags")
    assert cfg["database"]["sql_alchemy_conn"] == f"sqlite:///{tmp_path / 'airflow/airflow.db'}"
    assert cfg["core"]["load_examples"] == "False"
    # One secret for the scheduler's task tokens and the API server's check, kept over
    # restarts (tokens of running tasks stay valid).
    secret = cfg["api_auth"]["jwt_secret"]
    assert len(secret) >= 32 and cfg["api"]["secret_key"] == secret
    write_config(s)
    again = configparser.ConfigParser(interpolation=None)
    again.read(cfg_path)
    assert again["api_auth"]["jwt_secret"] == secret


def test_the_callers_airflow_variables_cannot_split_what_tasks_need(tmp_path: Path) -> None:
    """The processes inherit the caller's environment (its ``LAMINA_*`` variables reach the
    DAGs), but the settings the three must share are the stack's; other ``AIRFLOW__*``
    settings stay the caller's to choose. ``LAMINA_CONFIG`` becomes absolute: the
    processes may run elsewhere."""
    s = _settings(tmp_path, port=21234)
    caller = {
        "AIRFLOW_HOME": "/elsewhere",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": "http://localhost:8080/execution/",
        "AIRFLOW__API_AUTH__JWT_SECRET": "other",
        "AIRFLOW__CORE__PARALLELISM": "2",
        "LAMINA_CASSANDRA__KEYSPACE": "private",
        "LAMINA_CONFIG": "conf/lamina.toml",
    }
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        with environment(caller):
            env = airflow_env(s)
    finally:
        os.chdir(cwd)
    assert env["AIRFLOW_HOME"] == str(tmp_path / "airflow")
    assert env["AIRFLOW_CONFIG"] == str(tmp_path / "airflow" / "airflow.cfg")
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:21234/execution/"
    assert env["AIRFLOW__API_AUTH__JWT_SECRET"] not in ("other", "")
    assert env["AIRFLOW__API__SECRET_KEY"] == env["AIRFLOW__API_AUTH__JWT_SECRET"]
    assert env["AIRFLOW__CORE__PARALLELISM"] == "2"
    assert env["LAMINA_CASSANDRA__KEYSPACE"] == "private"
    assert env["LAMINA_CONFIG"] == str(ROOT / "conf" / "lamina.toml")


def test_a_taken_airflow_port_names_its_setting(tmp_path: Path) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        stack = Stack(_settings(tmp_path, port=port), ["airflow"])
        with pytest.raises(PortInUseError, match="LAMINA_AIRFLOW__PORT"):
            stack._check_ports(stack.service("airflow-api-server"), lambda _: None)
        # The scheduler and the DAG processor bind nothing: the API server's port, in use
        # by a running API server, does not keep them from starting.
        stack._check_ports(stack.service("airflow-scheduler"), lambda _: None)


def test_status_lists_airflow_when_configured(tmp_path: Path) -> None:
    env = {**os.environ, "LAMINA_STACK__STATE_DIR": str(tmp_path)}
    argv = [sys.executable, "-m", "lamina.cli", "stack", "status", "--format", "json"]
    out = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True)
    assert [s["service"] for s in json.loads(out.stdout)] == ["kafka", "cassandra"]
    out = subprocess.run(
        argv, env={**env, "LAMINA_STACK__AIRFLOW": "true"}, cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 3  # configured and stopped: not healthy
    listed = json.loads(out.stdout)
    assert [s["service"] for s in listed] == ["kafka", "cassandra", *AIRFLOW]
    assert {s["state"] for s in listed} == {"stopped"}


def test_down_leaves_no_child_of_a_service_behind(tmp_path: Path) -> None:
    """Airflow's scheduler runs tasks in its children; one that outlives a stopped
    scheduler is killed by ``stack down`` (here: a shell and its background child)."""
    log, pid_file, child_file = tmp_path / "out.log", tmp_path / "pid", tmp_path / "child"
    leader = process.spawn(
        ["sh", "-c", f"sleep 300 & echo $! > {child_file}; wait"],
        log_file=log,
        pid_file=pid_file,
    )
    deadline = time.monotonic() + 10
    while not child_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.1)  # written, not only created
    child = int(child_file.read_text())
    assert process.alive(child)
    assert process.terminate(leader, 10)
    assert process.alive(child)  # sh does not pass SIGTERM on to its children
    assert process.kill_group(leader) == 1
    deadline = time.monotonic() + 10
    while process.alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not process.alive(child)
    assert process.kill_group(leader) == 0
