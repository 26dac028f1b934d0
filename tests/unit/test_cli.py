"""The CLI: conventional --help/--version and one-line errors, never a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from lamina.cli import main

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "lamina.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize("args", [["--help"], ["stack", "--help"], ["stack", "up", "--help"]])
def test_help(args: list[str]) -> None:
    out = run(*args)
    assert out.returncode == 0
    assert "usage: lamina" in out.stdout


def test_bad_config_is_one_line() -> None:
    out = run("stack", "status", env={"LAMINA_KAFKA__PORT": "x"})
    assert out.returncode == 1
    assert out.stderr.startswith("lamina: error: invalid settings")
    assert "kafka.port" in out.stderr
    assert "Traceback" not in out.stderr


def test_unknown_service(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stack", "status", "zookeeper"]) == 1
    err = capsys.readouterr().err
    assert "unknown service zookeeper" in err
    assert "choose from kafka, cassandra" in err


def test_usage_error_exits_2() -> None:
    out = run("stack", "sideways")
    assert out.returncode == 2
    assert "invalid choice" in out.stderr


def test_taken_port_is_one_clear_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        out = run(
            "stack",
            "up",
            "kafka",
            "--no-spark",
            env={"LAMINA_STACK__STATE_DIR": str(tmp_path), "LAMINA_KAFKA__PORT": str(port)},
        )
    assert out.returncode == 1
    assert f"client port 127.0.0.1:{port} is taken by pid" in out.stderr
    assert "LAMINA_KAFKA__PORT" in out.stderr
    assert "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


VIEWS = """
[sources.probe]
topic = "probe-topic"
event_id = "id"
event_time = "ts"
fields = { id = "string", ts = "string", k = "long" }

[views.probe_view]
source = "probe"
keys = ["k"]
bucket = "15m"
aggregations = { n = { fn = "count" } }
"""


@pytest.mark.parametrize("flag", ["-c", "--config"])
def test_config_flag_is_honoured(
    flag: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    views = tmp_path / "views.toml"
    views.write_text(VIEWS)
    cfg = tmp_path / "lamina.toml"
    cfg.write_text(f'[pipeline]\nviews_file = "{views}"\n')
    monkeypatch.setenv("LAMINA_CONFIG", str(tmp_path / "not-this-one.toml"))  # the flag wins
    assert main([flag, str(cfg), "views"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == [
        "probe_view: source probe (topic probe-topic), keys k, per 15m: n=count(*)"
    ]


def test_missing_config_file_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    out = run("-c", str(missing), "views")
    assert out.returncode == 1
    assert out.stdout == ""
    assert out.stderr.startswith(f"lamina: error: settings file {missing} does not exist")
    assert len(out.stderr.strip().splitlines()) == 1
    assert "Traceback" not in out.stderr


def test_malformed_json_env_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LAMINA_SPARK__CONF", "{spark.a: 1}")
    assert main(["-c", str(ROOT / "conf" / "lamina.toml"), "views"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("lamina: error:") and "LAMINA_SPARK__CONF" in err


def test_a_down_store_is_a_one_line_error_not_a_traceback() -> None:
    """Cassandra unreachable (a refused port): `lamina query` names it and exits 1."""
    out = run("query", "web_pageviews", "/x", env={"LAMINA_CASSANDRA__PORT": "1"})
    assert out.returncode == 1
    assert "Traceback" not in out.stdout + out.stderr
    assert out.stderr.startswith(
        "lamina: error: the store is unavailable: Cassandra at 127.0.0.1:1"
    )
    assert len(out.stderr.strip().splitlines()) == 1


def test_batch_run_incremental_and_full_flags() -> None:
    """``--incremental`` / ``--full`` override ``[batch] incremental`` for one run (neither:
    the setting, ``None``); both at once is a usage error."""
    import argparse

    from lamina.cli import batch as batch_cli

    parser = argparse.ArgumentParser()
    batch_cli.register(parser.add_subparsers(dest="group"))
    assert parser.parse_args(["batch", "run"]).incremental is None
    assert parser.parse_args(["batch", "run", "--incremental"]).incremental is True
    assert parser.parse_args(["batch", "run", "--full"]).incremental is False
    out = run("batch", "run", "--incremental", "--full")
    assert out.returncode == 2 and "not allowed with argument" in out.stderr
    assert "--incremental" in run("batch", "run", "--help").stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("query", "web_pageviews", "/x", "--top", "pageviews"), "--top ranks every key"),
        (("query", "web_pageviews", "/x", "--limit", "3"), "--limit goes with --top"),
    ],
)
def test_top_and_keys_misuse_is_one_line_before_any_read(
    args: tuple[str, ...], message: str
) -> None:
    """Misused flags are refused before Cassandra is asked (it is unreachable here): one
    line, exit 1. (Bad parameters of the query itself: tests/unit/test_top.py and the API's
    tests, the same code.)"""
    out = run(*args, env={"LAMINA_CASSANDRA__PORT": "1"})
    assert out.returncode == 1, out.stderr
    assert message in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_quiet_output_is_undone_when_a_command_returns(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI hides dependencies' warnings and sends Spark's output to a file while its
    command runs; a program calling it (a test) gets its own settings back."""
    import warnings

    from lamina import console

    monkeypatch.delenv("PYTHONWARNINGS", raising=False)
    filters = list(warnings.filters)
    seen: dict[str, object] = {}

    def probe(settings: object, args: object) -> int:
        seen["log"] = console.JVM_LOG
        seen["env"] = os.environ.get("PYTHONWARNINGS")
        with warnings.catch_warnings(record=True) as caught:
            warnings.warn_explicit("dep", FutureWarning, "x.py", 1, module="somedep")
            warnings.warn_explicit("own", FutureWarning, "y.py", 1, module="lamina.views")
        seen["warned"] = [str(w.message) for w in caught]
        return 0

    monkeypatch.setattr("lamina.cli.stack.cmd_stack_status", probe)
    assert main(["-c", str(ROOT / "conf" / "lamina.toml"), "stack", "status"]) == 0
    assert str(seen["log"]).endswith("/logs/spark.log") and seen["env"] == "ignore"
    assert seen["warned"] == ["own"]
    assert console.JVM_LOG is None and "PYTHONWARNINGS" not in os.environ
    assert warnings.filters == filters


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["query", "web_pageviews", "/a", "--from", "nan"], "nan"),
        (["query", "web_pageviews", "--top", "nope"], "no aggregation 'nope'"),
        (["query", "web_pageviews", "--top", "pageviews", "--limit", "0"], "limit=0"),
        (["keys", "web_pageviews", "--limit", "0"], "limit=0"),
        (["query", "nope", "/a"], "unknown view 'nope'"),
    ],
)
def test_a_bad_query_parameter_is_named_before_connecting(args: list[str], named: str) -> None:
    """Parameters are checked before the CLI connects: with Cassandra unreachable (a closed
    port here) a bad one is still the error, not the outage."""
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    out = run(*args, env={"LAMINA_CASSANDRA__PORT": str(port)})
    assert out.returncode == 1, out.stderr
    assert named in out.stderr and "Cassandra" not in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
