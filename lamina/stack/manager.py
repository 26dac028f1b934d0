"""``lamina stack up | down | status | logs``: the local stack as a whole.

``up`` fetches jars (first run only), starts every service that is not already healthy,
and waits until each answers a real request. ``down`` stops exactly the processes ``up``
started, by pid file, and whatever they left in their process group. Both are idempotent.

The stack is Kafka and Cassandra; its Airflow part (:mod:`lamina.stack.airflow_services`)
only when asked for.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from lamina import process
from lamina.errors import PortInUseError, StackError
from lamina.files import tail
from lamina.progress import Progress, as_progress
from lamina.settings import Settings
from lamina.stack.airflow_services import AIRFLOW_SERVICES
from lamina.stack.services import CassandraService, KafkaService, Service, find_java

log = logging.getLogger(__name__)

SERVICES: dict[str, type[Service]] = {
    "kafka": KafkaService,
    "cassandra": CassandraService,
    **AIRFLOW_SERVICES,
}
"""The services ``lamina stack`` manages, in start order (stopped in reverse)."""

GROUPS: dict[str, list[str]] = {"airflow": list(AIRFLOW_SERVICES)}
"""Names that stand for several services."""

CHOICES = (
    ", ".join(n for n, cls in SERVICES.items() if not cls.optional)
    + ", airflow ("
    + (", ".join(AIRFLOW_SERVICES))
    + ")"
)


@dataclass(frozen=True)
class ServiceStatus:
    """What ``stack status`` reports for one service."""

    name: str
    state: str  # "healthy", "starting", "stopped" or "unhealthy: <reason>"
    host: str
    port: int
    pid: int | None
    version: str | None
    log: Path

    @property
    def healthy(self) -> bool:
        return self.state == "healthy"


STILL_STARTING_S = 30.0
"""How often a service that is not ready yet reports what its log last said."""


def _tail(path: Path, lines: int = 5) -> str:
    """The last ``lines`` lines of a service's log for a one-line error, each cut at 300."""
    return tail(path, lines, width=300)


def optional_running(settings: Settings) -> bool:
    """Whether a process of an optional part (Airflow) of this state dir's stack runs."""
    return any(
        process.running_pid(svc.pid_file, svc.marker) is not None
        for cls in SERVICES.values()
        if cls.optional
        for svc in [cls(settings)]
    )


class Stack:
    """The local services named in ``names`` (a service, or ``airflow`` for its three
    processes); by default Kafka and Cassandra, plus the Airflow part when ``airflow`` is
    true (``None``: ``[stack] airflow``)."""

    def __init__(
        self,
        settings: Settings,
        names: Iterable[str] | None = None,
        *,
        airflow: bool | None = None,
    ) -> None:
        self.settings = settings
        if names:
            chosen = [m for n in names for m in GROUPS.get(n, [n])]
        else:
            optional = settings.stack.airflow if airflow is None else airflow
            chosen = [n for n, cls in SERVICES.items() if optional or not cls.optional]
        unknown = [n for n in chosen if n not in SERVICES]
        if unknown:
            raise StackError(f"unknown service {', '.join(unknown)}", hint=f"choose from {CHOICES}")
        chosen = list(dict.fromkeys(chosen))  # named twice: once
        self.services: list[Service] = [SERVICES[n](settings) for n in chosen]

    def service(self, name: str) -> Service:
        for svc in self.services:
            if svc.name == name:
                return svc
        raise StackError(f"unknown service {name}", hint=f"choose from {CHOICES}")

    # -- status -------------------------------------------------------------------------

    def status_of(self, svc: Service) -> ServiceStatus:
        pid = process.running_pid(svc.pid_file, svc.marker)
        version: str | None = None
        if pid is None:
            state = "stopped"
        else:
            try:
                version = svc.probe()
                state = "healthy"
            except Exception as exc:  # any failure to answer means "not healthy yet"
                state = f"unhealthy: {type(exc).__name__}: {exc}".strip()
        return ServiceStatus(svc.name, state, svc.host, svc.client_port, pid, version, svc.log_file)

    def status(self) -> list[ServiceStatus]:
        return [self.status_of(svc) for svc in self.services]

    # -- up -----------------------------------------------------------------------------

    def _check_ports(self, svc: Service, progress: Callable[[str], None] = log.info) -> None:
        low, high = process.ephemeral_ports()
        for label, port in svc.ports.items():
            if low <= port <= high:
                progress(
                    f"{svc.name}: warning: its {label} port {port} lies in the kernel's range "
                    f"for outgoing connections ({low}-{high}): a restart can find it taken by "
                    f"one; pick a port below {low}"
                )
            if process.port_open(svc.host, port):
                owner = process.port_owner(port) or "another process"
                raise PortInUseError(
                    f"cannot start {svc.name}: its {label} port {svc.host}:{port} is taken by"
                    f" {owner}",
                    hint=f"stop that process or set {svc.port_setting(label)}",
                )

    def up(self, progress: Callable[[str], None] = log.info) -> list[ServiceStatus]:
        """Start every service that is not running; wait until all are healthy.

        Raises :class:`StackError` (with the log path) if a service dies or does not
        become ready within ``stack.start_timeout_s``. ``progress``: a line per service
        started and ready; jar fetches and each wait are tasks of it (a live spinner with
        the elapsed time; plain output says every 30 s what the service's log says).
        """
        progress = as_progress(progress)
        pending: list[Service] = []
        for svc in self.services:
            st = self.status_of(svc)
            if st.pid is not None:
                progress(f"{svc.name}: already running (pid {st.pid})")
                pending.append(svc)
                continue
            self._check_ports(svc, progress)
            pending.append(svc)
        to_start = [s for s in pending if process.running_pid(s.pid_file, s.marker) is None]
        if to_start:
            java = find_java() if any(s.uses_java for s in to_start) else ""
            for svc in to_start:
                t0 = time.monotonic()
                dirs = svc.fetch(progress)
                if time.monotonic() - t0 > 1:
                    progress(f"{svc.name}: jars fetched in {time.monotonic() - t0:.0f}s")
                svc.make_private()
                argv = svc.command(java, dirs)
                pid = process.spawn(
                    argv, log_file=svc.stdout_file, pid_file=svc.pid_file, env=svc.env()
                )
                progress(f"{svc.name}: started pid {pid}, log {svc.log_file}")
        return [self._wait_ready(svc, progress, svc in to_start) for svc in pending]

    def _wait_ready(self, svc: Service, progress: Progress, started: bool) -> ServiceStatus:
        """Wait for ``svc``: a task of ``progress`` when this call ``started`` it (an
        already running one is usually ready at once: no task, its lines as notes)."""
        if not started:
            return self._wait(svc, progress, lambda m: progress.note(f"{svc.name}: {m}"))
        with progress.task(f"{svc.name}: waiting until it is ready") as task:
            return self._wait(svc, progress, task.status)

    def _wait(
        self, svc: Service, progress: Progress, status: Callable[[str], None]
    ) -> ServiceStatus:
        deadline = time.monotonic() + self.settings.stack.start_timeout_s
        t0 = time.monotonic()
        next_note = t0 + STILL_STARTING_S
        last_error = ""
        while time.monotonic() < deadline:
            if time.monotonic() >= next_note:  # a slow start says what it is doing
                next_note += STILL_STARTING_S
                status(
                    f"still starting after {time.monotonic() - t0:.0f}s;"
                    f" its log says: {_tail(svc.log_file, 1)}"
                )
            pid = process.running_pid(svc.pid_file, svc.marker)
            if pid is None:
                raise StackError(
                    f"{svc.name} exited during start-up: {_tail(svc.stdout_file, 3)}",
                    log=str(svc.log_file if svc.log_file.exists() else svc.stdout_file),
                )
            try:
                version = svc.probe()
            except Exception as exc:
                last_error = f"{type(exc).__name__}: {exc}"
                time.sleep(1.0)
                continue
            progress(f"{svc.name}: ready in {time.monotonic() - t0:.1f}s (version {version})")
            return ServiceStatus(
                svc.name, "healthy", svc.host, svc.client_port, pid, version, svc.log_file
            )
        raise StackError(
            f"{svc.name} did not become ready within {self.settings.stack.start_timeout_s:.0f}s"
            f" (last error: {last_error}); the last lines of its log: {_tail(svc.log_file, 3)}",
            log=str(svc.log_file),
        )

    # -- down ---------------------------------------------------------------------------

    def down(self, progress: Callable[[str], None] = log.info) -> None:
        """Stop the services this stack started: SIGTERM, then SIGKILL after the timeout."""
        for svc in reversed(self.services):
            pid = process.running_pid(svc.pid_file, svc.marker)
            if pid is None:
                progress(f"{svc.name}: not running")
                svc.pid_file.unlink(missing_ok=True)
                continue
            t0 = time.monotonic()
            graceful = process.terminate(pid, self.settings.stack.stop_timeout_s)
            left = process.kill_group(pid)  # children that outlived it (Airflow's tasks)
            svc.pid_file.unlink(missing_ok=True)
            how = "stopped" if graceful else "killed (did not stop after SIGTERM)"
            if left:
                how += f", and killed {left} process(es) it left behind"
            progress(f"{svc.name}: {how} pid {pid} in {time.monotonic() - t0:.1f}s")
