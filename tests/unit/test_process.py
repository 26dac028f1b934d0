"""Process bookkeeping on /proc: when a process counts as alive."""

from __future__ import annotations

import platform
import subprocess
import sys
import time
from pathlib import Path

import pytest

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
