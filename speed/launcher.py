"""Submitted streaming jobs: launch through ``spark-submit``, detached, and keep a registry.

A job runs one source's query (see :func:`lamina.streams.job_queries`)
in its own ``spark-submit`` process (client deploy mode: the driver is
:mod:`speed.driver`), started and watched by the job's supervisor (:mod:`speed.supervisor`,
a small detached Python process), which relaunches a driver that ended without a stop
request. Its registry entry is a directory ``<jobs_dir>/<id>/``:

- ``job.json``: what was asked and what happened to it (what, master, conf, queries,
  checkpoints, supervisor pid, ``spark-submit`` pid, relaunch count, why the last driver
  ended and when it was relaunched, whether a stop was requested);
- ``settings.json``: the effective settings at submit time, so a restart runs the same job;
- ``launch.json``: the ``spark-submit`` command line the supervisor runs;
- ``driver.json``: what the driver reports (its pid, Spark application id, final state);
- ``job.log``: the output of the supervisor, ``spark-submit`` and the driver (appended
  across relaunches).

A job's state is derived, never stored alone: ``starting`` (processes up, driver not yet
reporting), ``running``, ``restarting`` (the driver ended without a stop request; the
supervisor relaunches it after a delay), ``stopping`` (stop requested), ``stopped`` (stopped
on request), ``failed`` (a query failed and the supervisor gave up, or the processes ended
without saying why: see the log).

A second job on a checkpoint that a live job (or any process holding its checkpoint lock,
e.g. ``lamina stream run``) uses is refused with :class:`~lamina.errors.ConflictError`.

Submit, stop, restart and the supervisor's relaunches change the registry under its lock
(an exclusive ``flock`` of ``<jobs_dir>/registry.lock``, held from the first read to the
last write, launch included), so concurrent operations (CLI processes, API requests,
supervisors) run one after the other and each sees what the one before left: of two submits
of one source the second is refused, of two restarts the second restarts the driver the
first launched, and the registered driver is always the only one. A stop request is written
under the lock and a supervisor relaunches only under the lock after reading it, so a stop
is never undone by a relaunch. Reading (list, status) takes no lock.

The registry is private to the user running the jobs: its directories are created 0700,
its files 0600 (``settings.json`` holds the whole configuration, ``conf`` may hold secrets).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import secrets
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lamina.context import load_catalog
from lamina.errors import ConfigError, ConflictError, NotFoundError
from lamina.files import read_json, write_json_atomic
from lamina.jars import spark_connector_jars
from lamina.process import alive, cmdline, spawn
from lamina.settings import Settings
from lamina.streams import (
    checkpoint_path,
    end_offsets,
    events_behind,
    job_names,
    job_queries,
    job_source,
    lock_checkpoint,
    lock_holder,
    query_statuses,
    read_source_report,
)
from lamina.views import ViewCatalog

LIVE = ("starting", "running", "restarting", "stopping")

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
"""Permissions of the registry's directories and files (see the module doc)."""

LOCK_FILE = "registry.lock"


@dataclass
class Job:
    """One registry entry; ``state`` and ``message`` are derived on load (see module doc)."""

    id: str
    what: str
    master: str
    conf: dict[str, str]
    queries: list[str]
    checkpoints: list[str]
    submitted_at: float
    log: str
    launcher_pid: int | None = None
    """The ``spark-submit`` process (the JVM; the driver is its Python child)."""
    restarts: int = 0
    """Relaunches, by the supervisor or ``lamina stream restart``."""
    stop_requested: bool = False
    supervisor_pid: int | None = None
    last_exit: str | None = None
    """Why the last driver that ended without a stop request ended (exit code or signal)."""
    last_restart_at: float | None = None
    """When the supervisor last relaunched the driver (epoch seconds)."""
    driver_pid: int | None = None
    app_id: str | None = None
    started_at: float | None = None
    ended_at: float | None = None
    state: str = "starting"
    message: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- files --------------------------------------------------------------------------------


def _dir(settings: Settings, job_id: str) -> Path:
    return settings.jobs_dir / job_id


def _write_json(path: Path, data: dict[str, Any]) -> None:
    write_json_atomic(path, data, indent=2, mode=PRIVATE_FILE)


class Cancelled(Exception):
    """Raised by :func:`registry_lock` when its ``cancelled`` turned true while it waited."""


@contextlib.contextmanager
def registry_lock(
    settings: Settings,
    doing: str,
    progress: Callable[[str], None] = lambda _m: None,
    cancelled: Callable[[], bool] = lambda: False,
) -> Iterator[None]:
    """Hold the registry's exclusive lock for the block (see the module doc), waiting for
    the operation holding it to finish (``progress`` says so, naming it).

    Waits at most as long as a stop may take plus a minute, then raises
    :class:`ConflictError` naming the holder; raises :class:`Cancelled` as soon as
    ``cancelled()`` is true while it waits (a supervisor waiting while a stop holds the
    lock). The lock is an ``flock``: per open file, so it also excludes other threads of
    this process (not re-entrant: take it once per operation); the kernel drops it when its
    holder exits, however it exits.
    """
    root = settings.jobs_dir
    root.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, PRIVATE_FILE)
    with os.fdopen(fd, "r+") as f:
        patience = settings.spark.stop_timeout_s + 90
        deadline = time.monotonic() + patience
        told = False
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if cancelled():
                    raise Cancelled(doing) from None
                f.seek(0)
                holder = f.read().strip() or "another process"
                if time.monotonic() >= deadline:
                    raise ConflictError(
                        f"the job registry {root} is busy: {holder} did not finish within "
                        f"{patience:.0f}s",
                        hint="retry when it is done (lamina stream list shows the jobs)",
                    ) from None
                if not told:
                    progress(f"waiting for {holder} to finish")
                    told = True
                time.sleep(0.05)
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} ({' '.join(sys.argv)[:100]}): {doing}")
        f.flush()
        try:
            yield
        finally:
            f.seek(0)
            f.truncate()
            f.flush()
            fcntl.flock(f, fcntl.LOCK_UN)


def _read_json(path: Path) -> dict[str, Any]:
    return read_json(path) or {}


def report(jobs_dir: Path, job_id: str, **fields: Any) -> None:
    """The driver's side: merge ``fields`` into ``driver.json`` (pid, app id, final state)."""
    path = jobs_dir / job_id / "driver.json"
    _write_json(path, {**_read_json(path), **fields})


_JOB_FIELDS = (
    "id",
    "what",
    "master",
    "conf",
    "queries",
    "checkpoints",
    "submitted_at",
    "log",
    "launcher_pid",
    "restarts",
    "stop_requested",
    "supervisor_pid",
    "last_exit",
    "last_restart_at",
)


def save(jobs_dir: Path, job: Job) -> None:
    """Write ``job.json`` (the registry lock must be held)."""
    _write_json(jobs_dir / job.id / "job.json", {k: getattr(job, k) for k in _JOB_FIELDS})


def _save(settings: Settings, job: Job) -> None:
    save(settings.jobs_dir, job)


def _ours(pid: int | None, job: Job, marker: str = "") -> bool:
    """True while ``pid`` runs as one of ``job``'s processes (checked by its command line,
    so a recycled pid is never mistaken for the job)."""
    if pid is None or not alive(pid):
        return False
    line = cmdline(pid, patience_s=1.0)
    return line is not None and f"--job-id {job.id}" in line and marker in line


def _launcher_alive(job: Job) -> bool:
    """True while the job's ``spark-submit`` process runs."""
    return _ours(job.launcher_pid, job)


def _supervisor_alive(job: Job) -> bool:
    """True while the job's supervisor runs."""
    return _ours(job.supervisor_pid, job, "speed.supervisor")


def _any_alive(job: Job) -> bool:
    return _launcher_alive(job) or _supervisor_alive(job)


def job_definition(jobs_dir: Path, job_id: str) -> Job:
    """What was submitted as ``job_id`` (``job.json``; state not derived: see :func:`load`).
    Raises :class:`NotFoundError` if there is no such job."""
    data = _read_json(jobs_dir / job_id / "job.json")
    if not data:
        raise NotFoundError(
            f"no streaming job {job_id!r} in {jobs_dir}",
            hint="lamina stream list shows the submitted jobs",
        )
    return Job(**data)


def load(settings: Settings, job_id: str) -> Job:
    """The job ``job_id`` with its current state; :class:`NotFoundError` if unknown."""
    job = job_definition(settings.jobs_dir, job_id)
    driver = _read_json(_dir(settings, job_id) / "driver.json")
    job.driver_pid = driver.get("driver_pid")
    job.app_id = driver.get("app_id")
    job.started_at = driver.get("started_at")
    job.ended_at = driver.get("ended_at")
    final = driver.get("final")
    submitting, supervised = _launcher_alive(job), _supervisor_alive(job)
    if (submitting or supervised) and job.stop_requested:
        job.state = "stopping"
    elif submitting and final is None:
        job.state = driver.get("state", "starting")
        if not supervised and job.supervisor_pid is not None:
            job.message = (
                f"not supervised: its supervisor (pid {job.supervisor_pid}) is gone, so nothing "
                f"relaunches the driver if it ends; lamina stream restart {job.id} supervises "
                "it again"
            )
    elif supervised:
        # The driver ended (or is ending) without a stop request: the supervisor relaunches
        # it, or gives up and reports the job failed.
        job.state = "starting" if job.launcher_pid is None else "restarting"
        if job.last_exit:
            job.message = f"relaunching: the driver ended ({job.last_exit})"
    elif final in ("stopped", "failed"):
        job.state, job.message = final, driver.get("message", "")
    elif job.stop_requested:
        job.state = "stopped"
        job.message = "its process ended on the stop request, before the driver reported"
    else:
        job.state = "failed"
        job.message = f"the job's processes ended without a final report (killed?); see {job.log}"
    return job


def jobs(settings: Settings) -> list[Job]:
    """Every registered job, oldest first."""
    root = settings.jobs_dir
    if not root.is_dir():
        return []
    found = [load(settings, p.parent.name) for p in root.glob("*/job.json")]
    return sorted(found, key=lambda j: j.submitted_at)


# -- submit, stop, restart ---------------------------------------------------------------


def ensure_free(settings: Settings, checkpoints: list[str], queries: list[str], me: str) -> None:
    """Refuse (:class:`ConflictError`) if a live job other than ``me`` uses one of these
    checkpoints, or any process on this machine holds one of their locks."""
    wanted = set(checkpoints)
    for other in jobs(settings):
        if other.id != me and other.state in LIVE and wanted & set(other.checkpoints):
            shared = ", ".join(sorted(wanted & set(other.checkpoints)))
            raise ConflictError(
                f"job {other.id} ({other.what}, {other.state}) already uses the checkpoint "
                f"{shared}",
                hint=f"stop it first (lamina stream stop {other.id}) or restart it "
                f"(lamina stream restart {other.id})",
            )
    for query in queries:
        lock_checkpoint(settings, query, hold=False)


def _spark_home() -> Path:
    spec = importlib.util.find_spec("pyspark")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("pyspark is not installed", hint="make setup installs it")
    return Path(next(iter(spec.submodule_search_locations)))


def submit_argv(settings: Settings, job: Job, connector: list[Path]) -> list[str]:
    """The ``spark-submit`` command line of ``job`` (client deploy mode), shipping the
    ``connector`` jars (Spark's Kafka source) to the driver and the executors."""
    argv = [
        str(_spark_home() / "bin" / "spark-submit"),
        "--master",
        job.master,
        "--name",
        f"lamina-{job.what}",
        "--driver-memory",
        settings.spark.driver_memory,
        "--jars",
        ",".join(str(j) for j in connector),
    ]
    for key, value in job.conf.items():
        argv += ["--conf", f"{key}={value}"]
    driver = Path(__file__).with_name("driver.py")
    return [*argv, str(driver), "--job-id", job.id, "--jobs-dir", str(settings.jobs_dir)]


def _launch(settings: Settings, job: Job) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMINA_")}
    env.update(
        SPARK_HOME=str(_spark_home()),
        PYSPARK_PYTHON=sys.executable,
        PYSPARK_DRIVER_PYTHON=sys.executable,
    )
    if job.master.startswith("local"):
        env.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    d = _dir(settings, job.id)
    (d / "driver.json").unlink(missing_ok=True)
    connector = spark_connector_jars(settings.stack.cache_dir)
    _write_json(d / "launch.json", {"argv": submit_argv(settings, job, connector)})
    # job.json as the new supervisor must read it, written before it starts: it reads the
    # stop request while it waits for the registry lock (held by us), so a stale one (a
    # restart's stop) would stop it at once, and a missing one (a submit) would fail it.
    job.stop_requested = False
    job.launcher_pid = None  # the supervisor launches spark-submit and records it
    job.supervisor_pid = None
    _save(settings, job)
    job.supervisor_pid = spawn(
        supervisor_argv(settings, job),
        log_file=Path(job.log),
        pid_file=d / "supervisor.pid",
        env=env,
        file_mode=PRIVATE_FILE,
    )
    _save(settings, job)


def supervisor_argv(settings: Settings, job: Job) -> list[str]:
    """The command line of ``job``'s supervisor (this Python, :mod:`speed.supervisor`)."""
    jobs_dir = str(settings.jobs_dir)
    return [sys.executable, "-m", "speed.supervisor", "--job-id", job.id, "--jobs-dir", jobs_dir]


def _absolute(settings: Settings) -> Settings:
    """``settings`` with every path made absolute, so the job finds them from any cwd."""
    p, sp = settings.pipeline, settings.spark
    return settings.model_copy(
        update={
            "pipeline": p.model_copy(
                update={
                    "views_file": p.views_file.resolve(),
                    "master_dir": Path(settings.master_dir).resolve(),
                }
            ),
            "spark": sp.model_copy(
                update={
                    "checkpoint_dir": settings.checkpoint_dir.resolve(),
                    "jobs_dir": settings.jobs_dir.resolve(),
                }
            ),
        }
    )


def parse_conf(pairs: list[str]) -> dict[str, str]:
    """``["k=v", ...]`` (``--conf`` arguments) as a dict; :class:`ConfigError` if malformed."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(
                f"--conf {pair!r} is not KEY=VALUE", hint="e.g. --conf spark.executor.memory=2g"
            )
        out[key.strip()] = value
    return out


def submit(
    settings: Settings,
    catalog: ViewCatalog,
    what: str,
    *,
    master: str | None = None,
    conf: dict[str, str] | None = None,
) -> Job:
    """Launch ``what`` (a source name) detached and register it, under the registry lock.

    Returns at once, with the job ``starting``. Raises :class:`NotFoundError` for an unknown
    view and :class:`ConflictError` if its checkpoints are in use (also by a job submitted
    concurrently: see the module doc).
    """
    queries = list(job_queries(catalog, what))
    settings = _absolute(settings)
    checkpoints = [str(checkpoint_path(settings, q)) for q in queries]
    with registry_lock(settings, f"submit {what}"):
        return _submit(settings, what, queries, checkpoints, master, conf)


def _submit(
    settings: Settings,
    what: str,
    queries: list[str],
    checkpoints: list[str],
    master: str | None,
    conf: dict[str, str] | None,
) -> Job:
    ensure_free(settings, checkpoints, queries, me="")
    job_id = f"{what.replace('_', '-')}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    d = _dir(settings, job_id)
    d.mkdir(mode=PRIVATE_DIR)
    _write_json(d / "settings.json", settings_record(settings))
    job = Job(
        id=job_id,
        what=what,
        master=master or settings.spark.master,
        conf=dict(conf or {}),
        queries=queries,
        checkpoints=checkpoints,
        submitted_at=time.time(),
        log=str(d / "job.log"),
    )
    _launch(settings, job)
    return load(settings, job_id)


def settings_record(settings: Settings) -> dict[str, Any]:
    """``settings`` as ``settings.json`` keeps them: JSON, without the HTTP API's tokens
    (a job never needs them; a dumped secret would read back as ``**********``), with the
    Kafka and Cassandra passwords in clear: the job logs in with them (the file is 0600 in
    a 0700 directory, like the settings file or environment they came from)."""
    record = settings.model_dump(mode="json", exclude={"serving": {"jobs_token", "read_token"}})
    for section in ("kafka", "cassandra"):
        password = getattr(settings, section).password
        if password is not None:
            record[section]["password"] = password.get_secret_value()
    return record


def job_settings(jobs_dir: Path, job_id: str) -> Settings:
    """The settings ``job_id`` was submitted with (used by its driver, and by restart)."""
    return Settings(**_read_json(jobs_dir / job_id / "settings.json"))


def stop(
    settings: Settings,
    job_id: str,
    *,
    timeout_s: float | None = None,
    wait: bool = True,
    progress: Callable[[str], None] = lambda _m: None,
) -> Job:
    """Stop a job gracefully: record the stop request, then SIGTERM to its driver, which
    stops each query between micro-batches (:func:`speed.queries.stop_gracefully`) and
    reports ``stopped``, and to its supervisor, which then relaunches nothing and exits.

    With ``wait``, blocks until both processes ended; past ``timeout_s`` (default: the
    settings' graceful timeout plus 30 s) the ``spark-submit`` process group and the
    supervisor are killed. A job that is not live is returned as it is. Runs under the
    registry lock (see the module doc), waiting included.
    """
    with registry_lock(settings, f"stop {job_id}", progress):
        return _stop(settings, job_id, timeout_s=timeout_s, wait=wait, progress=progress)


def _stop(
    settings: Settings,
    job_id: str,
    *,
    timeout_s: float | None,
    wait: bool,
    progress: Callable[[str], None],
) -> Job:
    job = load(settings, job_id)
    if job.state not in LIVE:
        return job
    job.stop_requested = True
    _save(settings, job)
    if _launcher_alive(job):
        target = job.driver_pid if job.driver_pid and alive(job.driver_pid) else job.launcher_pid
        progress(f"asking job {job_id} (pid {target}) to stop at a micro-batch boundary")
        with contextlib.suppress(ProcessLookupError):
            os.kill(target, signal.SIGTERM)  # type: ignore[arg-type]
    if _supervisor_alive(job):
        with contextlib.suppress(ProcessLookupError):
            os.kill(job.supervisor_pid, signal.SIGTERM)  # type: ignore[arg-type]
    if not wait:
        return load(settings, job_id)
    limit = timeout_s if timeout_s is not None else settings.spark.stop_timeout_s + 30
    deadline = time.monotonic() + limit
    while _any_alive(job) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _any_alive(job):
        progress(f"job {job_id} did not stop within {limit:.0f}s: killing it")
        for pid, kill in ((job.supervisor_pid, os.kill), (job.launcher_pid, os.killpg)):
            if pid is not None and _ours(pid, job):
                with contextlib.suppress(ProcessLookupError):
                    kill(pid, signal.SIGKILL)
        while _any_alive(job):
            time.sleep(0.1)
    return load(settings, job_id)


def restart(
    settings: Settings, job_id: str, *, progress: Callable[[str], None] = lambda _m: None
) -> Job:
    """Stop the job if it runs, then launch it again with the settings, master and conf it
    was submitted with; it resumes from its checkpoints. Stop and launch are one operation
    under the registry lock: a concurrent restart waits, then restarts this launch (see the
    module doc)."""
    with registry_lock(settings, f"restart {job_id}", progress):
        return _restart(settings, job_id, progress)


def _restart(settings: Settings, job_id: str, progress: Callable[[str], None]) -> Job:
    job = _stop(settings, job_id, timeout_s=None, wait=True, progress=progress)
    saved = job_settings(settings.jobs_dir, job_id)
    ensure_free(saved, job.checkpoints, job.queries, me=job_id)
    job.restarts += 1
    job.stop_requested = False
    progress(f"launching job {job_id} again (restart {job.restarts})")
    _launch(saved, job)
    return load(settings, job_id)


def status(settings: Settings, job_id: str) -> dict[str, Any]:
    """The job and the latest progress of each of its queries (rates, batch duration, Kafka
    lag in records, last micro-batch id, time since last progress), the ingest epoch before
    which the master dataset of its source is complete, and the source report (counts of
    records, rejects, duplicates; time per step of the last micro-batch; index size)."""
    from lamina.master import complete_cutoff

    job = load(settings, job_id)
    saved = job_settings(settings.jobs_dir, job_id)
    catalog = load_catalog(saved)
    queries = job_queries(catalog, job.what)
    out: dict[str, Any] = {
        **job.as_dict(),
        "queries": [q.as_dict() for q in query_statuses(saved, queries)],
    }
    out["complete_before_epoch"] = {
        src.name: complete_cutoff(saved, src) for src in queries.values()
    }
    out["sources"] = {src.name: read_source_report(saved, q) for q, src in queries.items()}
    return out


def source_statuses(settings: Settings, names: list[str] | None = None) -> list[dict[str, Any]]:
    """Each source job of ``names`` (default: every one) as it stands, however it runs:
    ``run_by`` is the submitted job running it, or the foreground process (``lamina stream
    run``, a notebook) holding its checkpoint, or ``None`` when nothing runs it; ``lag`` the
    Kafka records its queries have not processed (``None``: Kafka unreachable or never run);
    ``caught_up`` whether that lag is 0; ``complete_before_epoch`` the ingest epoch before
    which the master dataset of the source is complete (archived); plus each query's status
    (see :func:`lamina.streams.query_statuses`)."""
    from lamina.master import complete_cutoff

    catalog = load_catalog(settings)
    chosen = names or job_names(catalog)
    for name in chosen:
        job_source(catalog, name)  # an unknown name fails before any work
    live = {j.what: j for j in jobs(settings) if j.state in LIVE}
    try:
        latest = end_offsets(settings, {job_source(catalog, n).topic for n in chosen})
    except Exception:  # Kafka down: report progress without lag
        latest = {}
    out = []
    for name in chosen:
        queries = job_queries(catalog, name)
        holders = [h for q in queries if (h := lock_holder(settings, q)) is not None]
        job = live.get(name)
        run_by = f"job {job.id}" if job is not None else (holders[0] if holders else None)
        statuses = query_statuses(settings, queries, latest=latest)
        lags = [q.lag for q in statuses]
        lag = None if any(x is None for x in lags) else sum(x for x in lags if x is not None)
        behind = [
            events_behind(settings, q.topic, q.processed_offsets or {}, latest[q.topic])
            if q.lag is not None and q.topic in latest
            else None
            for q in statuses
        ]
        events = None if None in behind else sum(n for n in behind if n is not None)
        out.append(
            {
                "source": name,
                "run_by": run_by,
                "lag": lag,
                "events_behind": events,
                "caught_up": None if events is None and lag != 0 else lag == 0 or events == 0,
                "complete_before_epoch": complete_cutoff(settings, job_source(catalog, name)),
                "queries": [q.as_dict() for q in statuses],
            }
        )
    return out


def foreground_runs(settings: Settings) -> dict[str, str]:
    """Source jobs running outside the registry (``lamina stream run``, a notebook), by
    source, with the process holding their checkpoint."""
    catalog = load_catalog(settings)
    live = {j.what for j in jobs(settings) if j.state in LIVE}
    out = {}
    for name in job_names(catalog):
        if name in live:
            continue
        for query in job_queries(catalog, name):
            holder = lock_holder(settings, query)
            if holder is not None:
                out[name] = holder
                break
    return out
