"""Airflow as users run it: the dev stack's Airflow part (API server, scheduler, DAG
processor; LocalExecutor) runs a scheduled batch DAG, reached through its REST API."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lamina import process
from lamina.settings import Settings, environment, load_settings
from lamina.stack.airflow_services import ADMIN, api_url, password_file
from lamina.stack.manager import Stack
from lamina.views import load_views
from serving.cassandra import session
from serving.store import Store
from tests import truth
from tests.conftest import ROOT, isolated
from tests.integration.answers import answers, assert_exact
from tests.integration.conftest import archive_two_epochs, drop_keyspace

VIEW = "cloud_metering"
DAG = f"lamina_batch_{VIEW}"


def free_port() -> int:
    """A port below the kernel's ephemeral range that nothing listens on now."""
    low = process.ephemeral_ports()[0]
    rng = random.Random()
    while True:
        port = rng.randrange(20000, low - 1)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port


@pytest.fixture(scope="module")
def airflow_world(
    stack: Settings, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[dict[str, Any]]:
    """A private keyspace and master dataset: the archiver's two epochs of 400 metering
    events, nothing published yet; and the Airflow part, started by ``lamina stack up
    airflow`` in the background with its own state dir and port, the world's ``LAMINA_*``
    variables in its environment. Stops the part afterwards (its logs are kept, and named
    when a test failed) and drops the keyspace."""
    tmp = tmp_path_factory.mktemp("airflow_world")
    settings = isolated(stack, tmp)
    env = {
        "LAMINA_CONFIG": str(ROOT / "conf" / "lamina.toml"),
        "LAMINA_STACK__STATE_DIR": str(tmp / "state"),
        "LAMINA_AIRFLOW__PORT": str(free_port()),
        "LAMINA_CASSANDRA__KEYSPACE": settings.cassandra.keyspace,
        "LAMINA_PIPELINE__MASTER_DIR": str(settings.master_dir),
    }
    with environment(env):
        part_settings = load_settings()
    part = Stack(part_settings, ["airflow"])
    failed = request.session.testsfailed
    out = tmp / "stack-up.log"
    t0 = time.monotonic()
    with out.open("w") as log:
        up = subprocess.Popen(
            [sys.executable, "-m", "lamina.cli", "stack", "up", "airflow", "--no-spark"],
            env={**os.environ, **env},
            cwd=tmp,  # anywhere: the settings file is LAMINA_CONFIG
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        catalog = load_views(ROOT / "conf" / "views.toml")
        source = catalog.view(VIEW).source
        es = settings.pipeline.epoch_seconds
        e1 = int(time.time()) // es * es - 3 * es  # the cutoff, e1 + 2 epochs, is past
        events = truth.metering(400, seed=91).good
        archive_two_epochs(settings, source, events, e1)
        rc = up.wait(timeout=600)
        print(f"[airflow] `lamina stack up airflow` exited {rc} in {time.monotonic() - t0:.1f}s")
        assert rc == 0, out.read_text()
        yield {
            "settings": settings,
            "catalog": catalog,
            "events": events,
            "cutoff": e1 + 2 * es,
            "airflow": part_settings,
            "stack_up": out.read_text(),
        }
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
        if request.session.testsfailed > failed:
            for svc in part.services:
                print(f"[airflow] {svc.name} log kept: {svc.log_file}")
            print(f"[airflow] task logs kept under {part_settings.stack.state_dir / 'airflow'}")
        part.down(progress=lambda m: print(f"[airflow] {m}"))
        drop_keyspace(settings)


class Rest:
    """The Airflow REST API as a user calls it: a token from ``/auth/token`` with the admin
    password the API server generated, then ``Authorization: Bearer``."""

    def __init__(self, settings: Settings) -> None:
        self.base = api_url(settings)
        password = json.loads(password_file(settings).read_text())[ADMIN]
        reply = self.call("POST", "/auth/token", {"username": ADMIN, "password": password})
        self.token = reply["access_token"]

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        req = urllib.request.Request(
            self.base + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json"}
            | ({"Authorization": f"Bearer {self.token}"} if hasattr(self, "token") else {}),
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.load(resp)


def wait_for(what: str, check: Any, timeout_s: float, every_s: float = 2.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            got = check()
        except urllib.error.HTTPError as exc:
            if exc.code != 404:
                raise
            got = None
        if got:
            return got
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s:.0f}s"
        time.sleep(every_s)


def test_an_unpaused_batch_dag_runs_on_schedule_and_publishes(
    airflow_world: dict[str, Any],
) -> None:
    """The archiver completed two epochs and nothing is published; the DAG, paused as every
    DAG starts, is unpaused through the REST API. The scheduler creates its scheduled run at
    once (catchup off: the latest hourly run) and runs every task through LocalExecutor and
    the execution API on the configured port, in the world the ``LAMINA_*`` variables name:
    version 1 is published at the archiver's cutoff and the answers equal the truth."""
    settings, catalog = airflow_world["settings"], airflow_world["catalog"]
    airflow, events = airflow_world["airflow"], airflow_world["events"]
    assert f"Airflow UI and REST API: {api_url(airflow)}" in airflow_world["stack_up"]

    rest = Rest(airflow)
    dag = wait_for("the DAG parsed", lambda: rest.call("GET", f"/api/v2/dags/{DAG}"), 120)
    assert dag["is_paused"] is True
    assert rest.call("GET", "/api/v2/dags?paused=false")["total_entries"] == 0
    rest.call("PATCH", f"/api/v2/dags/{DAG}", {"is_paused": False})

    def finished() -> dict[str, Any] | None:
        runs = rest.call("GET", f"/api/v2/dags/{DAG}/dagRuns?order_by=run_after")["dag_runs"]
        return runs[0] if runs and runs[0]["state"] in ("success", "failed") else None

    run = wait_for("the scheduled run", finished, 600, every_s=3)
    # Paused again: the next hour's run must not start while the processes stop.
    rest.call("PATCH", f"/api/v2/dags/{DAG}", {"is_paused": True})
    tis = rest.call("GET", f"/api/v2/dags/{DAG}/dagRuns/{run['dag_run_id']}/taskInstances")
    states = {t["task_id"]: t["state"] for t in tis["task_instances"]}
    assert (run["run_type"], run["state"]) == ("scheduled", "success"), states
    assert set(states.values()) == {"success"} and len(states) == 5, states

    with session(settings.cassandra) as s:
        published = Store(s, settings.cassandra).published(catalog.view(VIEW))
    assert published is not None
    assert (published.version, published.cutoff) == (1, airflow_world["cutoff"])
    keys = sorted({ev["customer"] for ev in events})
    assert_exact(VIEW, answers(settings, catalog, VIEW, keys), truth.truth(VIEW, events))
    log = Path(airflow.stack.state_dir, "airflow", "logs", f"dag_id={DAG}")
    assert any(log.rglob("*.log")), "no task log under the Airflow home"
