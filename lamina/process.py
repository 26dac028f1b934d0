"""Start, find and stop background processes by pid file (the dev stack's services, the
speed layer's submitted jobs).

A process is "ours" only if its pid file exists *and* the live process's command line
contains the service's marker (its own state directory), so a recycled pid is never killed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

STOP_REQUESTED = threading.Event()
"""Set when this process was asked to stop (SIGTERM/SIGINT in a streaming driver): long
waits (a micro-batch waiting out a Cassandra outage) give up early."""


def read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _stat_state(stat_file: Path) -> str | None:
    try:
        stat = stat_file.read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def _state(pid: int) -> str | None:
    """The one-letter state of ``pid`` from /proc (``Z`` for a zombie), or None if gone.

    A process whose main thread ended while other threads still run (a JVM shutting down:
    its sockets are still open) shows ``Z`` for the main thread; it counts as the state of
    a thread still running, so such a process is not taken for gone.
    """
    state = _stat_state(Path(f"/proc/{pid}/stat"))
    if state != "Z":
        return state
    try:
        tasks = [t for t in os.listdir(f"/proc/{pid}/task") if t != str(pid)]
    except (FileNotFoundError, ProcessLookupError):
        return state
    for task in tasks:
        other = _stat_state(Path(f"/proc/{pid}/task/{task}/stat"))
        if other not in (None, "Z"):
            return other
    return state


def cmdline(pid: int, *, patience_s: float = 0.0) -> str | None:
    """The process's command line, or ``None`` if it is gone, a zombie or shows none.

    A live process can transiently show an empty command line (a starting JVM reserving its
    heap holds the mm lock); with ``patience_s`` the read is retried for that long.
    """
    for _ in range(max(1, int(patience_s / 0.02))):
        state = _state(pid)
        if state is None or state == "Z":
            return None
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError):
            return None
        if raw:
            return raw.replace(b"\0", b" ").decode(errors="replace")
        if patience_s:
            time.sleep(0.02)
    return None


def running_pid(pid_file: Path, marker: str) -> int | None:
    """The pid recorded in ``pid_file`` if that process is alive and is ours, else ``None``."""
    pid = read_pid(pid_file)
    if pid is None:
        return None
    line = cmdline(pid, patience_s=2.0)
    if line is None or marker not in line:
        return None
    return pid


def spawn(
    argv: Sequence[str],
    *,
    log_file: Path,
    pid_file: Path,
    env: Mapping[str, str] | None = None,
    file_mode: int = 0o666,
) -> int:
    """Start ``argv`` detached (own session, stdin closed), output appended to ``log_file``.

    ``log_file`` and ``pid_file``, when this creates them, get ``file_mode`` minus the umask
    (``0o600``: private); existing ones keep their permissions."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    log_fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, file_mode)
    with os.fdopen(log_fd, "ab") as out:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            start_new_session=True,
        )
    pid_fd = os.open(pid_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, file_mode)
    with os.fdopen(pid_fd, "w") as f:
        f.write(f"{proc.pid}\n")
    return proc.pid


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as gone, and is reaped if it is our child)."""
    if _state(pid) in (None, "Z"):
        # Reap it if it is our child, so it does not linger as a zombie.
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        return False
    return True


def terminate(pid: int, timeout_s: float) -> bool:
    """SIGTERM, wait up to ``timeout_s``, then SIGKILL. Returns True if it stopped gracefully."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.2)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return True
    while alive(pid):
        time.sleep(0.1)
    return False


def kill_group(pgid: int) -> int:
    """SIGKILL what is left of the process group ``pgid`` (a process :func:`spawn` started
    leads its own group); returns how many processes were in it (0: none left)."""
    members = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == pgid:
            continue
        try:
            stat = (proc / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            members += 1
    if members:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
    return members


def port_open(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """True if something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def port_owner(port: int) -> str | None:
    """Best-effort description (``pid command``) of the process listening on ``port``."""
    inode = None
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inode = fields[9]
                break
        if inode:
            break
    if not inode:
        return None
    gone = (FileNotFoundError, PermissionError, ProcessLookupError)
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fds = list((proc / "fd").iterdir())
        except gone:  # the process ended, or is not ours to look at
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except gone:  # this descriptor was closed meanwhile: look at the next one
                continue
            if target == f"socket:[{inode}]":
                line = cmdline(int(proc.name)) or "?"
                return f"pid {proc.name} ({line[:80]})"
    return None


EPHEMERAL_PORTS = Path("/proc/sys/net/ipv4/ip_local_port_range")


def ephemeral_ports(path: Path = EPHEMERAL_PORTS) -> tuple[int, int]:
    """The kernel's range of local ports for outgoing connections (Linux's default when it
    cannot be read): a server port in it can be taken by a client connection while the
    server restarts."""
    try:
        low, high = (int(x) for x in path.read_text().split())
    except (OSError, ValueError):
        return 32768, 60999
    return low, high
