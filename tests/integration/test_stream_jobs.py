"""Submitted streaming jobs: ``lamina stream submit|list|status|stop|restart`` and the same
operations on the HTTP API, against the real Kafka, Cassandra and ``spark-submit``.

One job's life: submit a source's job; a second submit on its checkpoint is refused (CLI and
HTTP); status shows progress and zero lag once caught up; the merged answers equal the
truth; stop (HTTP) ends it gracefully; events produced meanwhile are picked up after a
restart (CLI) with nothing lost and nothing counted twice.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from lamina.process import alive
from lamina.settings import Settings
from lamina.streams import ensure_topics, read_supervision
from lamina.views import ViewCatalog, load_views
from serving.api import create_app
from speed import launcher
from speed.api import jobs_router
from tests import truth
from tests.conftest import run_lamina
from tests.integration.streams import (
    check_answers,
    drop_private_world,
    end_offsets,
    private_env,
    produce,
    settings_under,
)

VIEW = "cloud_metering"
JOB = "metering"  # the source of VIEW: its job keeps the view
QUERY = f"source-{JOB}"


@pytest.fixture(scope="module")
def env(stack: Settings, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return private_env(tmp_path_factory.mktemp("jobs"), "jobs", 5)


@pytest.fixture(scope="module")
def jset(env: dict[str, str]) -> Iterator[Settings]:
    with settings_under(env) as settings:
        yield settings
    drop_private_world(settings)


def jobs_app(settings: Settings, catalog: ViewCatalog) -> FastAPI:
    """The app ``lamina serve`` runs: serving plus the speed layer's ``/jobs`` router."""
    return create_app(settings, catalog, routers=[jobs_router(settings, catalog)])


def lamina(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run_lamina(env, *args, timeout=180)


def wait_caught_up(settings: Settings, job_id: str, topic: str) -> None:
    """Until the job runs and its query processed every record in the topic, with zero lag
    (read from the registry in this process: a ``lamina`` process per poll costs seconds).
    The job's own epoch marks count in the lag until it reads them: zero lag is waited for."""
    want = {p: o for p, o in end_offsets(settings, topic).items()}
    deadline = time.monotonic() + 240
    st: dict[str, Any] = {}
    while time.monotonic() < deadline:
        st = launcher.status(settings, job_id)
        assert st["state"] in ("starting", "running"), (st, Path(st["log"]).read_text()[-3000:])
        (q,) = st["queries"]
        done = q["processed_offsets"] or {}
        # The checkpoint's commit comes a moment before the listener's status: wait for both.
        fresh = q["age_s"] is not None and q["age_s"] < 120
        if (
            st["state"] == "running"
            and fresh
            and all(done.get(p, -1) >= o for p, o in want.items())
            and q["lag"] == 0
        ):
            assert q["batch_id"] is not None and q["batch_duration_ms"] is not None
            assert q["input_rows_per_s"] is not None and q["processed_rows_per_s"] is not None
            return
        time.sleep(1)
    raise AssertionError(f"job {job_id} not caught up: {st}\n{Path(st['log']).read_text()[-3000:]}")


def test_submit_status_stop_restart(env: dict[str, str], jset: Settings) -> None:
    settings = jset
    catalog = load_views(settings.pipeline.views_file)
    topic = catalog.view(VIEW).source.topic
    ensure_topics(settings, [topic, f"{topic}.deadletters"])
    first = truth.metering(400, seed=31)
    produce(settings, topic, first.raw)

    out = lamina(env, "stream", "submit", JOB, "--conf", "spark.ui.enabled=false", "--format=json")
    assert out.returncode == 0, out.stderr
    job = json.loads(out.stdout)
    job_id = job["id"]
    try:
        assert job["what"] == JOB and job["master"] == settings.spark.master
        assert job["conf"] == {"spark.ui.enabled": "false"}
        assert job["checkpoints"] == [str(settings.checkpoint_dir / QUERY)]

        # The checkpoint is taken: a second submit is refused, by the CLI and over HTTP.
        again = lamina(env, "stream", "submit", JOB)
        assert again.returncode == 1
        assert f"job {job_id}" in again.stderr and "already uses the checkpoint" in again.stderr
        with TestClient(jobs_app(settings, catalog), base_url="http://127.0.0.1") as client:
            r = client.post("/jobs", json={"job": JOB})
            assert r.status_code == 409 and job_id in r.json()["error"], r.text
            assert r.json()["hint"]
            assert client.post("/jobs", json={"job": "nope"}).status_code == 404
            assert client.get("/jobs/no-such-job").status_code == 404

        wait_caught_up(settings, job_id, topic)
        check_answers(settings, {VIEW: first.good})
        # The checkpoint lock also stops a foreground run (before it starts a JVM).
        fg = lamina(env, "stream", "run", JOB)
        assert fg.returncode == 1 and "is in use by pid" in fg.stderr, fg.stderr
        table = lamina(env, "stream", "status", job_id)
        assert table.returncode == 0 and QUERY in table.stdout

        # Stop over HTTP: graceful, the process ends, the registry says stopped.
        with TestClient(jobs_app(settings, catalog), base_url="http://127.0.0.1") as client:
            r = client.post(f"/jobs/{job_id}/stop")
            assert r.status_code == 200, r.text
            stopped = r.json()
            assert stopped["state"] == "stopped", stopped
            assert not alive(stopped["launcher_pid"]) and not alive(stopped["driver_pid"])
            assert "stopping at the next micro-batch boundary" in Path(stopped["log"]).read_text()
            listed = {j["id"]: j for j in client.get("/jobs").json()}
            assert listed[job_id]["state"] == "stopped"

        # Events produced while it is down are picked up after a restart, exactly once.
        second = truth.metering(300, seed=32)
        produce(settings, topic, second.raw)
        out = lamina(env, "stream", "restart", job_id)
        assert out.returncode == 0, out.stderr
        wait_caught_up(settings, job_id, topic)
        check_answers(settings, {VIEW: first.good + second.good})
        listed = json.loads(lamina(env, "stream", "list", "--format", "json").stdout)
        assert [(j["id"], j["state"], j["restarts"]) for j in listed] == [(job_id, "running", 1)]

        out = lamina(env, "stream", "stop", job_id)
        assert out.returncode == 0, out.stderr
        out = lamina(env, "stream", "status", job_id, "--format", "json")
        assert out.returncode == 0, out.stderr
        st = json.loads(out.stdout)
        assert st["id"] == job_id and st["state"] == "stopped", st
        assert [q["query"] for q in st["queries"]] == [QUERY]
        assert st["queries"][0]["lag"] == 0
    finally:
        launcher.stop(settings, job_id, timeout_s=30)  # a no-op once it stopped


def wait_relaunched(settings: Settings, job_id: str, killed: int, restarts: int) -> dict[str, Any]:
    """The job's registry entry once its supervisor relaunched it after ``killed`` died: a
    new driver reports running and ``restarts`` relaunches are recorded."""
    deadline = time.monotonic() + 240
    job = launcher.load(settings, job_id)
    while time.monotonic() < deadline:
        job = launcher.load(settings, job_id)
        assert job.state in ("running", "restarting", "starting"), (job, tail(job.log))
        if job.state == "running" and job.driver_pid not in (None, killed):
            assert job.restarts == restarts, job
            return job.as_dict()
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} not relaunched: {job}\n{tail(job.log)}")


def tail(log: str) -> str:
    return Path(log).read_text()[-3000:]


def test_a_killed_driver_is_relaunched_with_nothing_lost(
    stack: Settings, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """kill -9 of the Python driver (``driver_pid``), then of the JVM (``launcher_pid``),
    while events arrive: the supervisor relaunches the job each time, records it, and the
    answers equal the truth of everything produced."""
    env = private_env(tmp_path_factory.mktemp("supervised"), "sup", 5)
    with settings_under(env) as settings:
        try:
            supervised(env, settings)
        finally:
            drop_private_world(settings)


def supervised(env: dict[str, str], settings: Settings) -> None:
    catalog = load_views(settings.pipeline.views_file)
    topic = catalog.view(VIEW).source.topic
    ensure_topics(settings, [topic, f"{topic}.deadletters"])
    batches = [truth.metering(300, seed=seed) for seed in (41, 42, 43, 44)]
    produce(settings, topic, batches[0].raw)
    out = lamina(env, "stream", "submit", JOB, "--conf", "spark.ui.enabled=false", "--format=json")
    assert out.returncode == 0, out.stderr
    job_id = json.loads(out.stdout)["id"]
    try:
        wait_caught_up(settings, job_id, topic)
        check_answers(settings, {VIEW: batches[0].good})

        # kill -9 the Python driver (what a fault injector reads from driver.json) while a
        # micro-batch may be running: relaunched, recorded, nothing lost or counted twice.
        first = launcher.load(settings, job_id)
        assert first.driver_pid is not None and first.supervisor_pid is not None
        produce(settings, topic, batches[1].raw)
        time.sleep(1)
        os.kill(first.driver_pid, signal.SIGKILL)
        produce(settings, topic, batches[2].raw)
        job = wait_relaunched(settings, job_id, first.driver_pid, restarts=1)
        assert job["last_exit"].startswith("exit code 137 (128 + SIGKILL"), job
        assert job["supervisor_pid"] == first.supervisor_pid
        assert not alive(first.driver_pid) and not alive(first.launcher_pid or 0)
        wait_caught_up(settings, job_id, topic)
        check_answers(settings, {VIEW: [e for b in batches[:3] for e in b.good]})

        # kill -9 the JVM (spark-submit): its orphaned driver is killed, a new one launched.
        second = launcher.load(settings, job_id)
        os.kill(second.launcher_pid, signal.SIGKILL)  # type: ignore[arg-type]
        produce(settings, topic, batches[3].raw)
        job = wait_relaunched(settings, job_id, second.driver_pid, restarts=2)  # type: ignore[arg-type]
        # (its orphaned driver may have reported the lost gateway first: "...: Connection refused")
        assert job["last_exit"].startswith("spark-submit killed by SIGKILL"), job
        assert not alive(second.driver_pid)  # type: ignore[arg-type]
        wait_caught_up(settings, job_id, topic)
        check_answers(settings, {VIEW: [e for b in batches for e in b.good]})

        # The CLI and the job API show the relaunches.
        listed = json.loads(lamina(env, "stream", "list", "--format", "json").stdout)
        assert [(j["id"], j["state"], j["restarts"]) for j in listed] == [(job_id, "running", 2)]
        assert listed[0]["last_exit"] == job["last_exit"]
        with TestClient(jobs_app(settings, catalog), base_url="http://127.0.0.1") as client:
            got = client.get(f"/jobs/{job_id}").json()
            assert (got["state"], got["restarts"]) == ("running", 2), got
            assert got["last_restart_at"] >= job["last_restart_at"]
        assert read_supervision(settings, QUERY) == {
            "job": job_id,
            "restarts": 2,
            "last_exit": job["last_exit"],
            "last_restart_at": job["last_restart_at"],
            "gave_up": False,
        }  # lamina_speed_job_restarts_total{source="metering"} 2
        log = Path(job["log"]).read_text()
        assert log.count("relaunching it in") == 2 and log.count("spark-submit started") == 3

        # A stop is final: both processes end, nothing is relaunched.
        out = lamina(env, "stream", "stop", job_id)
        assert out.returncode == 0, out.stderr
        time.sleep(3)
        stopped = launcher.load(settings, job_id)
        assert stopped.state == "stopped" and stopped.restarts == 2, stopped
        assert not alive(job["supervisor_pid"]) and not alive(job["launcher_pid"])
        assert not alive(job["driver_pid"])
    finally:
        launcher.stop(settings, job_id, timeout_s=30)
