"""The streaming-job registry without Spark: conf parsing, checkpoint locks between real
processes, how a job's state is derived from its files and its process, the submit line."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lamina.errors import ConfigError, ConflictError, NotFoundError
from lamina.settings import Settings
from lamina.streams import job_names, job_queries, release_locks, try_lock
from lamina.views import load_views
from speed import launcher

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = Settings()
    return s.model_copy(
        update={
            "spark": s.spark.model_copy(
                update={"checkpoint_dir": tmp_path / "ck", "jobs_dir": tmp_path / "jobs"}
            )
        }
    )


def test_parse_conf() -> None:
    assert launcher.parse_conf(["a.b=1", "c= x=y"]) == {"a.b": "1", "c": " x=y"}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        launcher.parse_conf(["spark.executor.memory"])
    with pytest.raises(ConfigError):
        launcher.parse_conf(["=2g"])


def test_job_queries() -> None:
    catalog = load_views(ROOT / "conf" / "views.toml")
    assert job_names(catalog) == ["pageviews", "sensors", "metering"]
    assert job_queries(catalog, "pageviews") == {"source-pageviews": catalog.sources["pageviews"]}
    with pytest.raises(NotFoundError, match="kept by the job of its source: 'pageviews'"):
        job_queries(catalog, "web_pageviews")  # jobs were per view before 0.4
    with pytest.raises(NotFoundError, match="every source job archives"):
        job_queries(catalog, "archiver")
    with pytest.raises(NotFoundError, match="jobs are sources: pageviews, sensors, metering"):
        job_queries(catalog, "no_such_source")


def test_checkpoint_lock_is_exclusive_between_processes(settings: Settings) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time, fcntl; f = open(sys.argv[1], 'a+'); "
            "fcntl.flock(f, fcntl.LOCK_EX); f.write('pid holder-proc'); f.flush(); "
            "print('locked', flush=True); time.sleep(60)",
            str(settings.checkpoint_dir / "speed-x.lock"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    settings.checkpoint_dir.mkdir(parents=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        assert try_lock(settings, "speed-x", hold=False) == "pid holder-proc"
        with pytest.raises(ConflictError, match="holder-proc"):
            launcher.ensure_free(settings, [], ["speed-x"], me="")
    finally:
        holder.kill()
        holder.wait()
    # The kernel dropped the lock with the process: free again, and ours once taken.
    assert try_lock(settings, "speed-x") is None
    assert try_lock(settings, "speed-x") is None  # held by us already: still fine
    release_locks()


def write_job(settings: Settings, job_id: str, pid: int | None, **driver: object) -> None:
    d = settings.jobs_dir / job_id
    d.mkdir(parents=True)
    job = launcher.Job(
        id=job_id,
        what="web_pageviews",
        master="local[2]",
        conf={},
        queries=["speed-web_pageviews"],
        checkpoints=[str(settings.checkpoint_dir / "speed-web_pageviews")],
        submitted_at=time.time(),
        log=str(d / "job.log"),
        launcher_pid=pid,
    )
    launcher._save(settings, job)
    if driver:
        (d / "driver.json").write_text(json.dumps(driver))


def test_state_is_derived_from_files_and_process(settings: Settings) -> None:
    # A live process whose command line names the job: running (as the driver reported).
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "--job-id", "live"]
    )
    try:
        write_job(settings, "live", proc.pid, state="running", driver_pid=proc.pid)
        assert launcher.load(settings, "live").state == "running"
        # Its checkpoint is taken: a new job on it is refused, naming the live one.
        with pytest.raises(ConflictError, match="job live"):
            launcher.ensure_free(
                settings, [str(settings.checkpoint_dir / "speed-web_pageviews")], [], me=""
            )
        launcher.ensure_free(
            settings, [str(settings.checkpoint_dir / "speed-web_pageviews")], [], me="live"
        )
    finally:
        proc.kill()
        proc.wait()
    # The same pid no longer runs and nothing was reported: failed, pointing at the log.
    assert launcher.load(settings, "live").state == "failed"
    assert "job.log" in launcher.load(settings, "live").message
    # A final report wins.
    write_job(settings, "done", None, final="stopped", message="stopped on request")
    assert launcher.load(settings, "done").state == "stopped"
    # A live pid that is not the job (recycled pid) does not count as the job.
    write_job(settings, "recycled", 1, state="running")
    assert launcher.load(settings, "recycled").state == "failed"
    assert [j.id for j in launcher.jobs(settings)] == ["live", "done", "recycled"]
    with pytest.raises(NotFoundError, match="lamina stream list"):
        launcher.load(settings, "nope")


def test_submit_line(settings: Settings) -> None:
    job = launcher.Job(
        id="j1",
        what="pageviews",
        master="spark://h:7077",
        conf={"spark.executor.memory": "2g"},
        queries=[],
        checkpoints=[],
        submitted_at=0.0,
        log="/tmp/x.log",
    )
    argv = launcher.submit_argv(settings, job, [Path("/c/a.jar"), Path("/c/b.jar")])
    assert argv[0].endswith("/bin/spark-submit") and Path(argv[0]).exists()
    assert argv[argv.index("--master") + 1] == "spark://h:7077"
    assert "spark.executor.memory=2g" in argv
    assert argv[argv.index("--jars") + 1] == "/c/a.jar,/c/b.jar"
    assert argv[-5].endswith("speed/driver.py")
    assert argv[-4:] == ["--job-id", "j1", "--jobs-dir", str(settings.jobs_dir)]
