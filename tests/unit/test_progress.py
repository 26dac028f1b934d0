"""Progress reporting (issue #15): the layers report through :class:`lamina.progress.Progress`;
plain lines off a terminal, rich live tasks on one, nothing with ``--quiet``."""

from __future__ import annotations

import re
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from lamina.cli import main
from lamina.cli.progress import TerminalProgress, cli_progress
from lamina.progress import Progress, as_progress

pytestmark = pytest.mark.unit

STAMP = re.compile(r"^\d\d:\d\d:\d\d ")


def test_a_plain_callable_gets_one_line_per_note_task_and_status() -> None:
    said: list[str] = []
    p = as_progress(said.append)
    assert not p.live
    p("built")
    with p.task("v1: writing rows", total=10) as task:
        task.advance(4)
        task.update(completed=7)
        task.status("7 rows written")
        assert (task.completed, task.total) == (7, 10)
    assert said == ["built", "v1: writing rows ...", "v1: writing rows: 7 rows written"]


def test_a_progress_is_passed_through_and_none_logs() -> None:
    p = Progress(None)
    assert as_progress(p) is p
    with p.task("silent") as task:
        task.status("nothing")  # emits nothing, raises nothing
    assert as_progress(None).live is False


def test_off_a_terminal_lines_are_plain_and_timestamped() -> None:
    out = StringIO()
    p = cli_progress(console=Console(file=out, force_terminal=False))
    assert not p.live
    p.note("kafka: ready in 3.0s")
    with p.task("cassandra: waiting until it is ready") as task:
        task.update(completed=1, total=2)  # counts: not shown in plain output
        task.status("still starting after 30s")
    lines = out.getvalue().splitlines()
    assert [STAMP.sub("", line) for line in lines] == [
        "kafka: ready in 3.0s",
        "cassandra: waiting until it is ready ...",
        "cassandra: waiting until it is ready: still starting after 30s",
    ]
    assert all(STAMP.match(line) for line in lines)
    assert "\x1b" not in out.getvalue()


def test_quiet_prints_nothing() -> None:
    out = StringIO()
    p = cli_progress(quiet=True, console=Console(file=out, force_terminal=True))
    p.note("a line")
    with p.task("a task", total=3) as task:
        task.advance()
        task.status("busy")
    assert out.getvalue() == ""


def test_on_a_terminal_tasks_are_live_and_go_away() -> None:
    out = StringIO()
    console = Console(file=out, force_terminal=True, width=100)
    p = cli_progress(console=console)
    assert isinstance(p, TerminalProgress) and p.live
    with p.task("web_pageviews v3: aggregating and writing rows", total=8) as task:
        task.update(completed=3)
        task.status("1200 rows written")
        p._bars.refresh()  # type: ignore[union-attr]
        p.note("a note while it runs")
    p.note("web_pageviews v3: published")
    shown = out.getvalue()
    assert "aggregating and writing rows" in shown and "3 of 8" in shown
    assert "1200 rows written" in shown and "0:00:0" in shown  # counts, status, elapsed
    assert p._bars is None  # the live display stopped with its last task
    # what stays on screen: the notes, each a timestamped line
    assert re.search(r"\d\d:\d\d:\d\d a note while it runs", shown)
    assert re.search(r"\d\d:\d\d:\d\d web_pageviews v3: published", shown)


def test_nested_tasks_share_one_live_display() -> None:
    out = StringIO()
    p = cli_progress(console=Console(file=out, force_terminal=True, width=80))
    assert isinstance(p, TerminalProgress)
    with p.task("outer") as outer, p.task("inner", total=2) as inner:
        bars = p._bars
        assert bars is not None and len(bars.tasks) == 2
        inner.advance(2)
        outer.status("waiting for inner")
    assert p._bars is None


def test_quiet_flag_hides_status_lines(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``lamina stack down`` on a state directory with nothing running says so per service;
    with ``-q`` it says nothing (and still succeeds)."""
    monkeypatch.setenv("LAMINA_STACK__STATE_DIR", str(tmp_path))
    assert main(["stack", "down"]) == 0
    said = capsys.readouterr().out
    assert "kafka: not running" in said and "cassandra: not running" in said
    assert main(["-q", "stack", "down"]) == 0
    assert capsys.readouterr().out == ""


def demo_rows(n: int) -> list[dict[str, Any]]:
    parts = {"readings": 12345, "temp_mean": 21.034, "temp_q": 26.512}
    return [
        {
            "bucket": f"11-29 13:{m:02d}",
            "batch": parts if m < 30 else None,
            "realtime": {"readings": 56, "temp_mean": 20.5, "temp_q": 25.99},
            "merged": {"readings": 12401, "temp_mean": 21.01, "temp_q": 26.4},
        }
        for m in range(0, 10 * n, 10)
    ]


@pytest.mark.parametrize("width", [80, 100, 109, 110, 120, 200])
def test_demo_answer_tables_fit_the_terminal_and_cut_no_number(width: int) -> None:
    from lamina.cli.demo import answer_table

    for aggs in (["readings", "temp_mean", "temp_q"], ["readings"]):
        out = StringIO()
        console = Console(file=out, width=width, force_terminal=False)
        console.print(answer_table(console, "iot_temperature", "sensor-1", aggs, demo_rows(6)))
        text = out.getvalue()
        lines = text.splitlines()
        assert max(len(line) for line in lines) <= width
        # No table cropped at the edge: each of its lines ends with its right border.
        assert all(line.rstrip()[-1] in "┓┃┩│┤┘" for line in lines[1:]), text
        assert "…" not in text
        shown = ["12345", "56", "12401", "11-29 13:50"]
        if len(aggs) > 1:
            shown += ["21.03", "20.50", "26.51", "25.99"]
        assert all(value in text for value in shown), text


def test_a_log_record_during_a_live_task_prints_above_it() -> None:
    """The CLI's log handler writes to ``sys.stderr`` as it is when a record comes: during a
    live display that is rich's redirect, so the record goes through the console (above the
    spinner) rather than through the display."""
    import logging

    from lamina.cli.progress import StderrNowHandler

    out = StringIO()
    p = cli_progress(console=Console(file=out, force_terminal=True, width=100))
    logger = logging.getLogger("tests.progress.live")
    handler = StderrNowHandler()
    logger.addHandler(handler)
    logger.propagate = False
    try:
        with p.task("a long wait"):
            logger.warning("a warning while waiting")
    finally:
        logger.removeHandler(handler)
    assert "a warning while waiting" in out.getvalue()
