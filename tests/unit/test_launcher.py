"""The streaming-job registry without Spark: conf parsing, checkpoint locks between real
processes, how a job's state is derived from its files and its process, the submit line."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from lamina.errors import ConfigError, ConflictError, NotFoundError
from lamina.process import alive
from lamina.settings import Settings
from lamina.streams import job_names, job_queries, release_locks, try_lock
from lamina.views import load_views
from speed import launcher

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")


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


FAKE_DRIVER = """
import json, os, signal, sys, time

args = sys.argv
job_id, jobs_dir = args[args.index("--job-id") + 1], args[args.index("--jobs-dir") + 1]
path = os.path.join(jobs_dir, job_id, "driver.json")


def report(**fields):
    try:
        with open(path) as f:
            old = json.load(f)
    except (OSError, ValueError):
        old = {}
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump({**old, **fields}, f)
    os.replace(tmp, path)


def stop(*_):
    report(final="stopped", message="stopped on request", ended_at=time.time())
    sys.exit(0)


signal.signal(signal.SIGTERM, stop)
report(driver_pid=os.getpid(), state="running", started_at=time.time())
while True:
    time.sleep(0.05)
"""
"""A stand-in for ``spark-submit ... speed/driver.py``: reports itself running, and stopped
on SIGTERM, like the real driver (no JVM)."""


@pytest.fixture
def drivers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Jobs launch :data:`FAKE_DRIVER`; yields the pids of every driver launched (all killed
    at the end)."""
    script = tmp_path / "fake_driver.py"
    script.write_text(FAKE_DRIVER)
    launched: list[int] = []
    spawn = launcher.spawn

    def submit_argv(settings: Settings, job: launcher.Job, connector: list[Path]) -> list[str]:
        jobs_dir = str(settings.jobs_dir)
        return [sys.executable, str(script), "--job-id", job.id, "--jobs-dir", jobs_dir]

    def spawn_and_record(argv: list[str], **kwargs: Any) -> int:
        pid = spawn(argv, **kwargs)
        launched.append(pid)
        return pid

    monkeypatch.setattr(launcher, "submit_argv", submit_argv)
    monkeypatch.setattr(launcher, "spark_connector_jars", lambda cache_dir: [])
    monkeypatch.setattr(launcher, "spawn", spawn_and_record)
    yield launched
    for pid in launched:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def wait_running(settings: Settings, job_id: str) -> launcher.Job:
    deadline = time.monotonic() + 30
    while (job := launcher.load(settings, job_id)).state != "running":
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
    return job


def concurrently(*calls: Callable[[], T]) -> list[T | Exception]:
    """Run ``calls`` in threads released at the same moment; their results or errors."""
    barrier = threading.Barrier(len(calls))
    out: list[T | Exception] = [RuntimeError("did not finish")] * len(calls)

    def run(i: int) -> None:
        barrier.wait()
        try:
            out[i] = calls[i]()
        except Exception as exc:
            out[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return out


def test_concurrent_restarts_leave_one_driver_and_stop_stops_it(
    settings: Settings, drivers: list[int]
) -> None:
    catalog = load_views(ROOT / "conf" / "views.toml")
    job_id = launcher.submit(settings, catalog, "pageviews").id
    wait_running(settings, job_id)
    results = concurrently(
        lambda: launcher.restart(settings, job_id), lambda: launcher.restart(settings, job_id)
    )
    assert [type(r) for r in results] == [launcher.Job, launcher.Job], results
    # The second restart ran after the first and restarted the driver the first launched.
    job = wait_running(settings, job_id)
    assert [pid for pid in drivers if alive(pid)] == [job.launcher_pid], drivers
    assert job.restarts == 2
    stopped = launcher.stop(settings, job_id, timeout_s=20)
    assert stopped.state == "stopped"
    assert [pid for pid in drivers if alive(pid)] == []


def test_concurrent_submits_of_one_source_launch_one_job(
    settings: Settings, drivers: list[int]
) -> None:
    catalog = load_views(ROOT / "conf" / "views.toml")
    results = concurrently(
        lambda: launcher.submit(settings, catalog, "pageviews"),
        lambda: launcher.submit(settings, catalog, "pageviews"),
    )
    jobs = [r for r in results if isinstance(r, launcher.Job)]
    refused = [r for r in results if isinstance(r, ConflictError)]
    assert len(jobs) == 1 and len(refused) == 1, results
    assert f"job {jobs[0].id}" in refused[0].message
    assert [pid for pid in drivers if alive(pid)] == [jobs[0].launcher_pid]
    assert [j.id for j in launcher.jobs(settings)] == [jobs[0].id]
    assert launcher.stop(settings, jobs[0].id, timeout_s=20).state == "stopped"


def test_the_registry_is_private(settings: Settings, drivers: list[int]) -> None:
    catalog = load_views(ROOT / "conf" / "views.toml")
    job_id = launcher.submit(settings, catalog, "pageviews").id
    launcher.restart(settings, job_id)
    wait_running(settings, job_id)
    launcher.stop(settings, job_id, timeout_s=20)
    # What the real driver reports goes through launcher.report (the fake writes its own).
    launcher.report(settings.jobs_dir, job_id, final="stopped")
    root = settings.jobs_dir
    d = root / job_id
    modes = {p.relative_to(root).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in (root, d)}
    assert modes == {".": 0o700, job_id: 0o700}
    files = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [*root.iterdir(), *d.iterdir()]}
    files.pop(job_id)
    assert files == {
        name: 0o600
        for name in (
            "registry.lock",
            "job.json",
            "settings.json",
            "driver.json",
            "job.log",
            "launcher.pid",
        )
    }


def test_saved_settings_leave_the_api_tokens_out(settings: Settings, tmp_path: Path) -> None:
    """``settings.json`` never holds the API's tokens, and reads back (driver, restart)."""
    with_tokens = settings.model_copy(
        update={"serving": type(settings.serving)(jobs_token="j" * 20, read_token="r" * 20)}
    )
    record = launcher.settings_record(with_tokens)
    assert "jobs_token" not in record["serving"] and "read_token" not in record["serving"]
    (tmp_path / "j1").mkdir()
    (tmp_path / "j1" / "settings.json").write_text(json.dumps(record))
    assert launcher.job_settings(tmp_path, "j1").serving.jobs_token is None


def test_saved_settings_keep_the_service_passwords_for_the_job(
    settings: Settings, tmp_path: Path
) -> None:
    """A job logs in to Kafka and Cassandra with the passwords it was submitted with: the
    private ``settings.json`` holds them in clear (a dump would hold ``**********``)."""
    from pydantic import SecretStr

    secured = settings.model_copy(
        update={
            "kafka": settings.kafka.model_copy(
                update={
                    "security_protocol": "SASL_PLAINTEXT",
                    "username": "lamina",
                    "password": SecretStr("kafka-pw"),
                }
            ),
            "cassandra": settings.cassandra.model_copy(
                update={"username": "app", "password": SecretStr("cassandra-pw")}
            ),
        }
    )
    (tmp_path / "j1").mkdir()
    (tmp_path / "j1" / "settings.json").write_text(json.dumps(launcher.settings_record(secured)))
    back = launcher.job_settings(tmp_path, "j1")
    assert back.kafka.secret == "kafka-pw" and back.kafka.username == "lamina"
    assert back.cassandra.password is not None
    assert back.cassandra.password.get_secret_value() == "cassandra-pw"
