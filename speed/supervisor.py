"""The supervisor of a submitted streaming job: ``python -m speed.supervisor --job-id ID``.

Launched detached by :func:`speed.launcher.submit` and :func:`~speed.launcher.restart`,
never by hand (like systemd's ``Restart=on-failure`` or Spark's ``spark.driver.supervise``).
It runs the job's ``spark-submit`` line (``launch.json``) in its own process group, output
appended to ``job.log``, and when that process ends without a stop request (any exit code,
or killed by a signal: kill -9, OOM killer, a query that failed after its outage retries)
it relaunches it, and the driver resumes from its checkpoints:

- after ``spark.restart_delay_s`` doubling with each relaunch in the window, at most
  ``spark.restart_delay_max_s``;
- at most ``spark.restart_limit`` relaunches within ``spark.restart_window_s``; one more end
  and it gives up: the job is ``failed``, its message says why the driver last ended.

Every relaunch is recorded in ``job.json`` (``restarts``, ``last_exit``,
``last_restart_at``), and next to each query's checkpoint for the metrics
(:func:`lamina.streams.supervision_file`). Before relaunching, the leftovers of the ended
process group (a Python driver whose JVM was killed) are killed, so one driver runs at a
time.

Stop: ``lamina stream stop`` writes the stop request under the registry lock, then SIGTERMs
the driver and this process. A relaunch happens only under the lock after reading the
request, so a stop is never undone. SIGTERM alone (no request in the registry) also stops
the job: to this process, it is passed on to the driver and nothing is relaunched; to the
driver (``kill <driver pid>``), the driver stops gracefully and reports ``stopped``, and a
driver that reported ``stopped`` is not relaunched either. A stop while the driver is down
ends the job ``stopped``.

``job.json`` is written before this process starts; should it be missing, it is looked for
again for :data:`JOB_FILE_PATIENCE_S`, then the job fails saying so (nothing launched).

If this process itself is killed (kill -9), the driver keeps running unsupervised: the
registry shows it ``running`` with a message saying so, and nothing relaunches it when it
ends (then the job is ``failed``); ``lamina stream restart`` supervises it again.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from lamina.errors import NotFoundError
from lamina.files import read_json
from lamina.streams import write_supervision
from speed.launcher import (
    PRIVATE_FILE,
    Cancelled,
    Job,
    job_definition,
    job_settings,
    registry_lock,
    report,
    save,
)

log = logging.getLogger("lamina.supervisor")

JOB_FILE_PATIENCE_S = 5.0
"""How long a missing ``job.json`` is looked for again before the job fails."""


def describe_exit(status: int, driver: dict[str, object]) -> str:
    """Why ``spark-submit`` ended, from its wait ``status`` (negative: killed by that signal)
    and ``driver.json``: e.g. ``killed by SIGKILL``, ``exit code 137 (128 + SIGKILL: the
    driver was killed)``, ``exit code 1: streaming query ... failed: ...``."""
    if status < 0:
        text = f"spark-submit killed by {_signal_name(-status)}"
    else:
        text = f"exit code {status}"
        if 128 < status < 128 + 65 and not driver.get("final"):
            text += f" (128 + {_signal_name(status - 128)}: the driver was killed)"
    if driver.get("message"):
        text += f": {driver['message']}"
    return text


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


class Supervisor:
    """One job's supervision loop (see the module doc)."""

    def __init__(self, job_id: str, jobs_dir: Path) -> None:
        self.job_id, self.jobs_dir = job_id, jobs_dir
        self.dir = jobs_dir / job_id
        self.settings = job_settings(jobs_dir, job_id)
        self.signalled = threading.Event()
        self.ends: list[float] = []
        """When (monotonic) each relaunch still in the window was decided."""

    def definition(self) -> Job:
        """``job.json``, looked for again for :data:`JOB_FILE_PATIENCE_S` if missing (see
        the module doc); :class:`NotFoundError` past that."""
        deadline = time.monotonic() + JOB_FILE_PATIENCE_S
        while True:
            try:
                return job_definition(self.jobs_dir, self.job_id)
            except NotFoundError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.1)

    def stop_requested(self) -> bool:
        """True once a stop was asked: the registry says so, or this process got SIGTERM."""
        return self.signalled.is_set() or self.definition().stop_requested

    def run(self) -> int:
        """Launch, watch, relaunch; returns 0 when stopped (on request, or the driver
        reported it stopped), 1 when it gave up or the job's ``job.json`` is missing."""
        try:
            return self._run()
        except NotFoundError:
            message = (
                f"the supervisor gave up: no job.json in {self.dir} (looked for it "
                f"{JOB_FILE_PATIENCE_S:.0f}s); lamina stream restart {self.job_id} "
                "launches the job again"
            )
            report(
                self.jobs_dir, self.job_id, final="failed", message=message, ended_at=time.time()
            )
            log.error("job %s: %s", self.job_id, message)
            return 1

    def _run(self) -> int:
        spark = self.settings.spark
        while True:
            try:
                proc = self._launch()
            except Cancelled:
                proc = None
            if proc is None:
                return self._stopped("before the driver was launched again")
            status = self._watch(proc)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # leftovers: a driver whose JVM died
            driver = read_json(self.dir / "driver.json") or {}
            reason = describe_exit(status, driver)
            if self.stop_requested():
                return self._stopped(f"the driver ended: {reason}")
            if driver.get("final") == "stopped":  # SIGTERM to the driver itself: a stop too
                log.info("job %s: the driver reported it stopped (%s)", self.job_id, reason)
                return self._stopped(f"the driver stopped: {reason}")
            now = time.monotonic()
            self.ends = [t for t in self.ends if now - t < spark.restart_window_s]
            if len(self.ends) >= spark.restart_limit:
                return self._give_up(reason)
            self.ends.append(now)
            delay = min(
                spark.restart_delay_max_s, spark.restart_delay_s * 2 ** (len(self.ends) - 1)
            )
            try:
                if not self._record(reason):
                    return self._stopped(f"the driver ended: {reason}")
            except Cancelled:
                return self._stopped(f"the driver ended: {reason}")
            log.warning(
                "job %s: the driver ended without a stop request (%s); relaunching it in %.1fs "
                "(relaunch %d of at most %d within %.0fs)",
                self.job_id,
                reason,
                delay,
                len(self.ends),
                spark.restart_limit,
                spark.restart_window_s,
            )
            deadline = time.monotonic() + delay
            while time.monotonic() < deadline:
                if self.stop_requested():
                    return self._stopped(f"while the driver was down: {reason}")
                self.signalled.wait(min(0.2, max(0.0, deadline - time.monotonic())))

    def _locked(self, doing: str) -> contextlib.AbstractContextManager[None]:
        return registry_lock(self.settings, f"{doing} (supervisor)", cancelled=self.stop_requested)

    def _launch(self) -> subprocess.Popen[bytes] | None:
        """Under the registry lock: unless a stop was requested, start ``spark-submit`` and
        record it (and, after the first launch, the relaunch); ``None`` if stopping."""
        with self._locked(f"launch {self.job_id}"):
            job = self.definition()
            if job.stop_requested or self.signalled.is_set():
                return None
            argv = (read_json(self.dir / "launch.json") or {})["argv"]
            (self.dir / "driver.json").unlink(missing_ok=True)
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, start_new_session=True, close_fds=True
            )
            pid_fd = os.open(
                self.dir / "launcher.pid", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE
            )
            with os.fdopen(pid_fd, "w") as f:
                f.write(f"{proc.pid}\n")
            if job.launcher_pid is not None:  # not the first launch: a relaunch
                job.restarts += 1
                job.last_restart_at = time.time()
            job.launcher_pid = proc.pid
            save(self.jobs_dir, job)
            self._report(job, gave_up=False)
        log.info("job %s: spark-submit started, pid %d", self.job_id, proc.pid)
        return proc

    def _watch(self, proc: subprocess.Popen[bytes]) -> int:
        """Wait for ``proc`` to end; a SIGTERM to this process that did not come with a
        stop request in the registry is passed on to the driver. Returns its wait status."""
        passed_on = False
        while proc.poll() is None:
            if self.signalled.wait(0.2) and not passed_on:
                passed_on = True
                if not self.definition().stop_requested:
                    driver = read_json(self.dir / "driver.json") or {}
                    target = driver.get("driver_pid") or proc.pid
                    log.info("job %s: SIGTERM: asking pid %s to stop", self.job_id, target)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(target), signal.SIGTERM)
        return proc.returncode

    def _record(self, reason: str) -> bool:
        """Under the registry lock: record why the driver ended; False if a stop was
        requested meanwhile (nothing recorded then)."""
        with self._locked(f"record the end of {self.job_id}'s driver"):
            job = self.definition()
            if job.stop_requested:
                return False
            job.last_exit = reason
            save(self.jobs_dir, job)
            return True

    def _report(self, job: Job, *, gave_up: bool) -> None:
        for query in job.queries:
            write_supervision(
                self.settings,
                query,
                {
                    "job": job.id,
                    "restarts": job.restarts,
                    "last_exit": job.last_exit,
                    "last_restart_at": job.last_restart_at,
                    "gave_up": gave_up,
                },
            )

    def _stopped(self, what: str) -> int:
        driver = read_json(self.dir / "driver.json") or {}
        if driver.get("final") != "stopped":
            report(
                self.jobs_dir,
                self.job_id,
                final="stopped",
                message=f"stopped on request ({what})",
                ended_at=time.time(),
            )
        log.info("job %s: stopped on request; nothing relaunched", self.job_id)
        return 0

    def _give_up(self, reason: str) -> int:
        spark = self.settings.spark
        message = (
            f"the driver ended ({reason}) after {len(self.ends)} relaunches within "
            f"{spark.restart_window_s:.0f}s (spark.restart_limit {spark.restart_limit}): "
            f"the supervisor gave up; see {self.dir / 'job.log'}; lamina stream restart "
            f"{self.job_id} launches it again"
        )
        try:
            with self._locked(f"record the end of {self.job_id}"):
                job = self.definition()
                if job.stop_requested:
                    return self._stopped(f"the driver ended: {reason}")
                job.last_exit = reason
                save(self.jobs_dir, job)
                self._report(job, gave_up=True)
        except Cancelled:  # a stop came meanwhile: it wins
            return self._stopped(f"the driver ended: {reason}")
        report(self.jobs_dir, self.job_id, final="failed", message=message, ended_at=time.time())
        log.error("job %s: %s", self.job_id, message)
        return 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--job-id", required=True)
    p.add_argument("--jobs-dir", required=True, type=Path)
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stdout,
    )
    supervisor = Supervisor(args.job_id, args.jobs_dir)

    def on_signal(signum: int, frame: object) -> None:
        supervisor.signalled.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())
