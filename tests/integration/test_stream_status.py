"""``lamina stream status`` and ``list`` see every source job, also one run in the
foreground (``lamina stream run``): who runs it, its lag, whether it caught up, and how far
its source is archived; so does the console's ``GET /streams``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from fastapi.testclient import TestClient

from lamina.settings import Settings
from lamina.streams import ensure_topics
from lamina.views import load_views
from serving.api import create_app
from speed.api import status_router
from speed.launcher import source_statuses
from tests import truth
from tests.conftest import ROOT, run_lamina
from tests.integration.streams import drop_private_world, private_env, produce, settings_under

JOB = "metering"


def test_status_and_list_see_a_foreground_run(stack: Settings, tmp_path: Path) -> None:
    env = private_env(tmp_path, "fg", 5)
    with settings_under(env) as settings:
        try:
            catalog = load_views(settings.pipeline.views_file)
            topic = catalog.sources[JOB].topic
            ensure_topics(settings, [topic, f"{topic}.deadletters"])
            produce(settings, topic, truth.metering(200, seed=41).raw)
            [before] = source_statuses(settings, [JOB])
            assert before["run_by"] is None and before["complete_before_epoch"] is None
            log = (tmp_path / "stream.log").open("wb")
            proc = subprocess.Popen(
                [sys.executable, "-m", "lamina.cli", "stream", "run", JOB, "--trigger", "1"],
                env={**os.environ, **env},
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                deadline = time.monotonic() + 300
                st = before
                while time.monotonic() < deadline and not st["caught_up"]:
                    assert proc.poll() is None, (tmp_path / "stream.log").read_text()[-3000:]
                    time.sleep(1)
                    [st] = source_statuses(settings, [JOB])
                # Caught up: every event read; the lag left is the job's own epoch marks.
                assert st["caught_up"] and st["events_behind"] == 0, st
                assert st["run_by"].startswith(f"pid {proc.pid} "), st
                out = run_lamina(env, "stream", "status", timeout=120)
                assert out.returncode == 0, out.stderr
                [row] = [ln for ln in out.stdout.splitlines() if ln.startswith(JOB)]
                assert f"pid {proc.pid}" in row and " yes " in row, out.stdout
                out = run_lamina(env, "stream", "status", JOB, "--format", "json", timeout=120)
                [js] = json.loads(out.stdout)
                assert js["source"] == JOB and js["caught_up"] is True
                # The console's route answers the same (one code path: source_statuses).
                app = create_app(settings, catalog, routers=[status_router(settings, catalog)])
                with TestClient(app, base_url="http://127.0.0.1") as client:
                    routed = client.get("/streams").json()
                [web] = [x for x in routed if x["source"] == JOB]
                assert web["run_by"].startswith(f"pid {proc.pid} ") and web["caught_up"] is True
                assert web["epoch_seconds"] == 5 and web["events_behind"] == 0
                listed = run_lamina(env, "stream", "list", timeout=120)
                assert "(foreground)" in listed.stdout and f"pid {proc.pid}" in listed.stdout
            finally:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=120)
            [after] = source_statuses(settings, [JOB])
            assert after["run_by"] is None and after["complete_before_epoch"] is not None
            # The console shows Lamina's own lines; Spark's output went to its log file.
            console = (tmp_path / "stream.log").read_text()
            spark_log = settings.stack.state_dir / "logs" / "spark.log"
            assert f"its own log: {spark_log}" in console, console
            for noise in ("log4j", " WARN ", "Warning", "WARNING: Using incubator modules"):
                assert noise not in console, console
            assert "log4j" in spark_log.read_text()
        finally:
            drop_private_world(settings)
