"""A warm Airflow for the tests: one process imports Airflow once, then forks per command.

Each ``airflow`` CLI invocation otherwise pays Airflow's import and CLI start-up. The server
(``python -m tests.integration.airflow_harness``, started by :class:`AirflowHarness`) imports
the CLI and the modules ``dags test`` needs, then runs every request in a forked child: the
real ``airflow`` CLI entry point (or a Python snippet) with the request's environment, its
stdout and stderr captured. A child is a fresh process as far as settings, connections,
parsed DAGs and the metadata DB connection go; only imported modules are shared.

Task states are read from the SQLite metadata DB directly (:func:`newest_run`).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import selectors
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[2]

# Fixed when the server starts (Airflow reads them at import): requests must not change them.
STARTUP_VARS = ("AIRFLOW_HOME", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "PYTHONWARNINGS")

PRELOAD = (
    "airflow.__main__",
    "airflow.cli.commands.dag_command",
    "airflow.cli.commands.db_command",
    "airflow.dag_processing.dagbag",
    "airflow.models",
    "airflow.sdk",
    "airflow.sdk.execution_time.supervisor",
    "airflow.serialization.serialized_objects",
    "airflow.providers.apache.spark.operators.spark_submit",
    # Libraries the DAGs' tasks import (no Lamina module: they read settings when called).
    "cassandra.cluster",
    "pyarrow.parquet",
    "pyspark.sql",
)


class AirflowHarness:
    """Client of one server process; ``run`` / ``python`` return (exit code, stdout, stderr)."""

    def __init__(self, env: dict[str, str], log: Path, timeout_s: float = 1800) -> None:
        self.env = env
        self.timeout_s = timeout_s
        self.forks = 0
        self._log = log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.airflow_harness"],
            env=env,
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            start_new_session=True,
        )
        assert self._reply() == {"ready": True}, f"harness did not start: see {log}"

    def run(
        self, *argv: str, env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> tuple[int, str, str]:
        """``airflow <argv>`` (the CLI's own entry point) in a forked child, in ``cwd``
        (default: the repository)."""
        return self._request({"argv": list(argv), "cwd": str(cwd or ROOT)}, env)

    def python(self, code: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
        """``python -c <code>`` in a forked child (Airflow already imported)."""
        return self._request({"code": code}, env)

    def _request(self, req: dict[str, Any], env: dict[str, str] | None) -> tuple[int, str, str]:
        env = self.env if env is None else env
        changed = [v for v in STARTUP_VARS if env.get(v) != self.env.get(v)]
        assert not changed, f"{changed} are fixed when the harness starts"
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"cwd": str(ROOT), **req, "env": env}) + "\n")
        self.proc.stdin.flush()
        self.forks += 1
        started = time.monotonic()
        out = self._reply()
        what = " ".join(req["argv"]) if "argv" in req else "python -c ..."
        took = time.monotonic() - started
        self._log.write(f"[harness] {what}: exit {out['rc']} in {took:.1f}s\n".encode())
        self._log.flush()
        return out["rc"], out["stdout"], out["stderr"]

    def _reply(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(self.timeout_s):
                self.close()
                raise TimeoutError(f"airflow harness: no answer within {self.timeout_s}s")
        line = self.proc.stdout.readline()
        assert line, f"airflow harness exited {self.proc.poll()}"
        reply: dict[str, Any] = json.loads(line)
        return reply

    def close(self) -> None:
        """Stop the server and whatever it left running (its own process group)."""
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()


@dataclass(frozen=True)
class Run:
    """One DAG run as the metadata DB holds it."""

    id: int
    run_id: str
    state: str
    tasks: dict[str, str]
    """task id -> state"""


def newest_run(db: Path, dag_id: str) -> Run | None:
    """The newest run of ``dag_id`` and its tasks' states, read from the SQLite metadata DB
    (no Airflow import); ``None`` before the first run."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        row = con.execute(
            "SELECT id, run_id, state FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1",
            (dag_id,),
        ).fetchone()
        if row is None:
            return None
        tis = con.execute(
            "SELECT task_id, state FROM task_instance WHERE dag_id = ? AND run_id = ?",
            (dag_id, row[1]),
        ).fetchall()
    finally:
        con.close()
    return Run(row[0], row[1], row[2], dict(tis))


def _child(req: dict[str, Any], proto: IO[str], out: int, err: int) -> None:
    """In the forked child: become the requested command; never returns."""
    rc = 1
    try:
        proto.close()
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(out, 1)
        os.dup2(err, 2)
        os.environ.clear()
        os.environ.update(req["env"])
        os.chdir(req["cwd"])
        from airflow import settings

        if settings.engine is not None:  # never share the parent's DB connections
            settings.engine.dispose(close=False)
        if "argv" in req:
            from airflow.__main__ import main

            sys.argv = ["airflow", *req["argv"]]
            main()
        else:
            sys.argv = ["-c"]
            exec(compile(req["code"], "<string>", "exec"), {"__name__": "__main__"})
        rc = 0
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            rc = e.code or 0
        else:
            print(e.code, file=sys.stderr)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        # What the interpreter's exit would do (stop a Spark session, flush logging), minus
        # the parent's buffers: os._exit.
        with contextlib.suppress(BaseException):
            atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(rc)


def serve() -> None:
    """Import Airflow, then answer one JSON request per stdin line with one JSON line."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray prints (import warnings) must not reach the protocol
    import importlib

    for mod in PRELOAD:
        importlib.import_module(mod)
    # The in-process execution API every `dags test` task talks to: a cached app whose
    # construction and versioned routes (built on its first request) take seconds. Built
    # once here, before any thread or DB connection exists.
    from airflow.sdk.execution_time.supervisor import in_process_api_server

    app = in_process_api_server().app
    if not getattr(app, "_cadwyn_initialized", True):
        app._cadwyn_initialize()
    assert threading.active_count() == 1, "forking needs a single-threaded server"
    proto.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        req = json.loads(line)
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                _child(req, proto, out.fileno(), err.fileno())
            _, status = os.waitpid(pid, 0)
            out.seek(0)
            err.seek(0)
            reply = {
                "rc": os.waitstatus_to_exitcode(status),
                "stdout": out.read().decode(errors="replace"),
                "stderr": err.read().decode(errors="replace"),
            }
        proto.write(json.dumps(reply) + "\n")


if __name__ == "__main__":
    serve()
