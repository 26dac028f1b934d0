"""Process bookkeeping on /proc: when a process counts as alive."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lamina import process
from lamina.process import alive

SYS_EXIT = {"x86_64": 60, "aarch64": 93}
"""The ``exit`` system call, which ends only the calling thread (``exit_group`` ends all)."""

MAIN_THREAD_ENDS_FIRST = (
    "import ctypes, sys, threading, time\n"
    "threading.Thread(target=time.sleep, args=(float(sys.argv[1]),)).start()\n"
    "print('up', flush=True)\n"
    "ctypes.CDLL(None).syscall(int(sys.argv[2]), 0)\n"
)
"""A process whose main thread ends while another thread runs on for ``argv[1]`` seconds,
as a JVM's main thread does during shutdown (its sockets stay open until the last thread
ends)."""


def _main_thread_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


@pytest.mark.skipif(platform.machine() not in SYS_EXIT, reason="exit syscall number unknown")
def test_a_process_is_alive_until_its_last_thread_ends() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", MAIN_THREAD_ENDS_FIRST, "2", str(SYS_EXIT[platform.machine()])],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "up"
        deadline = time.monotonic() + 5
        while _main_thread_state(child.pid) != "Z":
            assert time.monotonic() < deadline, "the main thread did not end"
            time.sleep(0.01)
        assert alive(child.pid)  # the main thread is a zombie, the other one still runs
        deadline = time.monotonic() + 10
        while alive(child.pid):
            assert time.monotonic() < deadline, "still alive after its last thread ended"
            time.sleep(0.05)
    finally:
        child.kill()
        child.wait()


def test_port_owner_finds_the_listener_while_descriptors_come_and_go() -> None:
    """A descriptor closed while the owner scan reads this process's fds (driver and Kafka
    client threads do that all the time) must not hide the listening socket behind it: the
    churned descriptors are numbered below the socket's, so the scan meets them first."""
    stop = threading.Event()
    low = [open(os.devnull, "rb") for _ in range(256)]  # noqa: SIM115
    sock = socket.socket()
    for f in low:
        f.close()

    def churn() -> None:
        while not stop.is_set():
            files = [open(os.devnull, "rb") for _ in range(128)]  # noqa: SIM115
            for f in files:
                f.close()

    with sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        workers = [threading.Thread(target=churn, daemon=True) for _ in range(2)]
        for w in workers:
            w.start()
        try:
            found = [process.port_owner(port) for _ in range(40)]
        finally:
            stop.set()
            for w in workers:
                w.join()
    assert all(f is not None and f.startswith(f"pid {os.getpid()} (") for f in found), found
