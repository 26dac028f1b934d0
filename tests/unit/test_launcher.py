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
from lamina.files import read_json
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
                update={
                    "checkpoint_dir": tmp_path / "ck",
                    "jobs_dir": tmp_path / "jobs",
                    "restart_delay_s": 0.1,
                }
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
print(f"fake driver {os.getpid()} up", flush=True)
if os.environ.get("FAKE_DRIVER_CRASH"):
    report(final="failed", message="streaming query q failed: boom", ended_at=time.time())
    sys.exit(1)
report(driver_pid=os.getpid(), state="running", started_at=time.time())
while True:
    time.sleep(0.05)
"""
"""A stand-in for ``spark-submit ... speed/driver.py``: reports itself running, and stopped
on SIGTERM, like the real driver (no JVM); with ``FAKE_DRIVER_CRASH`` set, fails at once."""


class Launched(list[int]):
    """The pids of every supervisor launched, and a way to find the stand-in drivers."""

    def __init__(self, script: Path) -> None:
        super().__init__()
        self.script = script

    def drivers(self) -> list[int]:
        """The pids of the stand-in drivers running now (whoever launched them)."""
        out = []
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit() and alive(int(proc.name)):
                with contextlib.suppress(OSError):
                    if str(self.script).encode() in (proc / "cmdline").read_bytes():
                        out.append(int(proc.name))
        return out


@pytest.fixture
def drivers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Launched]:
    """Jobs launch :data:`FAKE_DRIVER` under their supervisor; yields the supervisors' pids
    (supervisors and drivers are all killed at the end)."""
    script = tmp_path / "fake_driver.py"
    script.write_text(FAKE_DRIVER)
    launched = Launched(script)
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
    for pid in launched.drivers():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def wait_state(
    settings: Settings, job_id: str, state: str, until: Callable[[launcher.Job], bool] = bool
) -> launcher.Job:
    """The job once it is in ``state`` (with ``until(job)`` true); fails after 30 s."""
    deadline = time.monotonic() + 30
    while (job := launcher.load(settings, job_id)).state != state or not until(job):
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
    return job


def wait_running(settings: Settings, job_id: str) -> launcher.Job:
    return wait_state(settings, job_id, "running")


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
    settings: Settings, drivers: Launched
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
    assert [pid for pid in drivers if alive(pid)] == [job.supervisor_pid], drivers
    assert drivers.drivers() == [job.launcher_pid] == [job.driver_pid]
    assert job.restarts == 2
    stopped = launcher.stop(settings, job_id, timeout_s=20)
    assert stopped.state == "stopped"
    assert [pid for pid in drivers if alive(pid)] == [] and drivers.drivers() == []


def test_concurrent_submits_of_one_source_launch_one_job(
    settings: Settings, drivers: Launched
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
    assert [pid for pid in drivers if alive(pid)] == [jobs[0].supervisor_pid]
    assert len(wait_running(settings, jobs[0].id) and drivers.drivers()) == 1
    assert [j.id for j in launcher.jobs(settings)] == [jobs[0].id]
    assert launcher.stop(settings, jobs[0].id, timeout_s=20).state == "stopped"


def test_the_registry_is_private(settings: Settings, drivers: Launched) -> None:
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
            "launch.json",
            "launcher.pid",
            "supervisor.pid",
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


def with_restarts(settings: Settings, **fields: object) -> Settings:
    return settings.model_copy(update={"spark": settings.spark.model_copy(update=fields)})


def test_a_killed_driver_is_relaunched_and_recorded(settings: Settings, drivers: Launched) -> None:
    catalog = load_views(ROOT / "conf" / "views.toml")
    job_id = launcher.submit(settings, catalog, "pageviews").id
    first = wait_running(settings, job_id)
    assert first.restarts == 0 and first.last_exit is None
    os.kill(first.driver_pid, signal.SIGKILL)  # type: ignore[arg-type]
    # The supervisor relaunches it from its checkpoints, and says why.
    job = wait_state(settings, job_id, "running", lambda j: j.driver_pid != first.driver_pid)
    assert job.restarts == 1 and job.last_exit == "spark-submit killed by SIGKILL"
    assert job.last_restart_at is not None and job.last_restart_at > first.started_at  # type: ignore[operator]
    assert job.supervisor_pid == first.supervisor_pid
    assert drivers.drivers() == [job.driver_pid]
    assert [j.restarts for j in launcher.jobs(settings)] == [1]
    # One log, appended across the relaunch: both drivers and the supervisor's reason.
    text = Path(job.log).read_text()
    assert (
        f"fake driver {first.driver_pid} up" in text and f"fake driver {job.driver_pid} up" in text
    )
    assert "the driver ended without a stop request (spark-submit killed by SIGKILL)" in text
    assert launcher.stop(settings, job_id, timeout_s=20).state == "stopped"
    assert drivers.drivers() == [] and not alive(job.supervisor_pid)  # type: ignore[arg-type]


def test_a_stopped_job_is_not_relaunched(settings: Settings, drivers: Launched) -> None:
    catalog = load_views(ROOT / "conf" / "views.toml")
    job_id = launcher.submit(settings, catalog, "pageviews").id
    job = wait_running(settings, job_id)
    stopped = launcher.stop(settings, job_id, timeout_s=20)
    assert stopped.state == "stopped" and stopped.message == "stopped on request"
    assert not alive(job.supervisor_pid) and drivers.drivers() == []  # type: ignore[arg-type]
    time.sleep(1)  # ten relaunch delays: nothing comes back
    assert drivers.drivers() == [] and launcher.load(settings, job_id).restarts == 0

    # A stop while the driver is down (the supervisor waiting to relaunch it) ends it too.
    slow = with_restarts(settings, restart_delay_s=30.0)
    job_id = launcher.submit(slow, catalog, "pageviews").id
    job = wait_running(slow, job_id)
    os.kill(job.driver_pid, signal.SIGKILL)  # type: ignore[arg-type]
    down = wait_state(slow, job_id, "restarting", lambda j: j.last_exit is not None)
    assert "relaunching: the driver ended (spark-submit killed by SIGKILL)" in down.message
    started = time.monotonic()
    stopped = launcher.stop(slow, job_id, timeout_s=20)
    assert time.monotonic() - started < 5
    assert stopped.state == "stopped", stopped
    assert "while the driver was down: spark-submit killed by SIGKILL" in stopped.message
    assert not alive(job.supervisor_pid) and drivers.drivers() == []  # type: ignore[arg-type]
    assert stopped.restarts == 0


def test_the_supervisor_gives_up_after_the_restart_limit(
    settings: Settings, drivers: Launched, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_DRIVER_CRASH", "1")  # every driver fails at once
    limited = with_restarts(settings, restart_limit=2, restart_delay_s=0.05)
    catalog = load_views(ROOT / "conf" / "views.toml")
    job_id = launcher.submit(limited, catalog, "pageviews").id
    job = wait_state(limited, job_id, "failed")
    assert job.restarts == 2
    assert job.last_exit == "exit code 1: streaming query q failed: boom"
    assert job.message.startswith(
        "the driver ended (exit code 1: streaming query q failed: boom) after 2 relaunches "
        "within 600s (spark.restart_limit 2): the supervisor gave up"
    ), job.message
    assert f"lamina stream restart {job_id}" in job.message
    assert not alive(job.supervisor_pid) and drivers.drivers() == []  # type: ignore[arg-type]
    assert Path(job.log).read_text().count("fake driver") == 3


def test_a_killed_supervisor_leaves_the_driver_running_unsupervised(
    settings: Settings, drivers: Launched
) -> None:
    catalog = load_views(ROOT / "conf" / "views.toml")
    job_id = launcher.submit(settings, catalog, "pageviews").id
    job = wait_running(settings, job_id)
    os.kill(job.supervisor_pid, signal.SIGKILL)  # type: ignore[arg-type]
    while alive(job.supervisor_pid):  # type: ignore[arg-type]
        time.sleep(0.05)
    job = launcher.load(settings, job_id)
    assert job.state == "running" and job.message.startswith("not supervised"), job
    # A restart supervises it again; a stop still stops the unsupervised driver.
    unsupervised = job.driver_pid
    launcher.restart(settings, job_id)
    job = wait_state(settings, job_id, "running", lambda j: j.driver_pid != unsupervised)
    assert job.message == "" and drivers.drivers() == [job.driver_pid]
    os.kill(job.supervisor_pid, signal.SIGKILL)  # type: ignore[arg-type]
    while alive(job.supervisor_pid):  # type: ignore[arg-type]
        time.sleep(0.05)
    assert launcher.stop(settings, job_id, timeout_s=20).state == "stopped"
    assert drivers.drivers() == []


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


def test_job_json_is_written_before_the_supervisor_starts(
    settings: Settings, drivers: Launched, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new supervisor reads ``job.json`` as soon as it starts (the stop request, while it
    waits for the registry lock its launcher holds): it must be there, stop cleared, on
    submit (no file yet) and on restart (the stop's request still in it)."""
    seen: list[dict[str, Any] | None] = []
    spawn = launcher.spawn

    def spawn_seeing(argv: list[str], **kwargs: Any) -> int:
        job_id = argv[argv.index("--job-id") + 1]
        seen.append(read_json(settings.jobs_dir / job_id / "job.json"))
        return spawn(argv, **kwargs)

    monkeypatch.setattr(launcher, "spawn", spawn_seeing)
    catalog = load_views(ROOT / "conf" / "views.toml")
    job_id = launcher.submit(settings, catalog, "pageviews").id
    first = wait_running(settings, job_id)
    launcher.restart(settings, job_id)
    job = wait_state(settings, job_id, "running", lambda j: j.driver_pid != first.driver_pid)
    assert job.restarts == 1 and job.supervisor_pid != first.supervisor_pid
    assert len(seen) == 2, seen
    for record in seen:
        assert record is not None, seen
        assert record["id"] == job_id and record["stop_requested"] is False, record
        assert record["supervisor_pid"] is None and record["launcher_pid"] is None, record
    assert launcher.stop(settings, job_id, timeout_s=20).state == "stopped"


def test_the_supervisor_waits_briefly_for_a_missing_job_json(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from speed import supervisor

    monkeypatch.setattr(supervisor, "JOB_FILE_PATIENCE_S", 0.5, raising=False)
    write_job(settings, "j1", None)
    d = settings.jobs_dir / "j1"
    (d / "settings.json").write_text(json.dumps(launcher.settings_record(settings)))
    saved = (d / "job.json").read_text()
    (d / "job.json").unlink()
    sup = supervisor.Supervisor("j1", settings.jobs_dir)
    # job.json appears a moment later: read then, no error.
    later = threading.Timer(0.2, (d / "job.json").write_text, args=(saved,))
    later.start()
    try:
        assert sup.stop_requested() is False
    finally:
        later.join()
    # It never appears: the job fails saying why, nothing launched, no traceback.
    (d / "job.json").unlink()
    assert sup.run() == 1
    driver = json.loads((d / "driver.json").read_text())
    assert driver["final"] == "failed"
    assert driver["message"].startswith(f"the supervisor gave up: no job.json in {d}")
    assert not (d / "launcher.pid").exists()


def test_a_driver_stopped_by_its_own_sigterm_is_not_relaunched(
    settings: Settings, drivers: Launched
) -> None:
    """``kill <driver pid>``: the driver stops gracefully and reports ``stopped``; the
    supervisor takes that as a stop (see its module doc) and relaunches nothing."""
    catalog = load_views(ROOT / "conf" / "views.toml")
    job_id = launcher.submit(settings, catalog, "pageviews").id
    job = wait_running(settings, job_id)
    os.kill(job.driver_pid, signal.SIGTERM)  # type: ignore[arg-type]
    deadline = time.monotonic() + 20
    while alive(job.supervisor_pid) and time.monotonic() < deadline:  # type: ignore[arg-type]
        time.sleep(0.05)
    stopped = launcher.load(settings, job_id)
    assert not alive(job.supervisor_pid), stopped  # type: ignore[arg-type]
    assert stopped.state == "stopped" and stopped.message == "stopped on request", stopped
    assert stopped.restarts == 0 and stopped.last_exit is None
    assert drivers.drivers() == []
    assert (
        "the driver reported it stopped (exit code 0: stopped on request)"
        in Path(job.log).read_text()
    )
