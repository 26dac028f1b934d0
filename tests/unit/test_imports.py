"""``master import`` of JSON lines and CSV files holding poison records (issue #12): every
record is imported or written to the dead letters with its reason; none stops the import.
Files only (the master dataset is a directory): no engine, no services."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from batch.imports import import_files
from lamina.master import imports_dir
from lamina.settings import Settings, load_settings
from lamina.views import load_views

ROOT = Path(__file__).resolve().parents[2]
PV = load_views(ROOT / "conf" / "views.toml").sources["pageviews"]
HEAD = b'{"event_id":"%s","ts":"2026-11-27T10:00:00Z"'


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = load_settings(ROOT / "conf" / "lamina.toml")
    return s.model_copy(
        update={"pipeline": s.pipeline.model_copy(update={"master_dir": tmp_path / "master"})}
    )


def _imported(settings: Settings) -> list[dict[str, object]]:
    files = sorted(imports_dir(settings, PV).rglob("*.parquet"))
    return [r for f in files for r in pq.read_table(f).to_pylist()]


def _letters(path: Path | None) -> list[dict[str, object]]:
    assert path is not None
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_poison_json_lines_become_dead_letters(settings: Settings, tmp_path: Path) -> None:
    lines = [
        HEAD % b"good1" + b',"status":200,"load_ms":1.5}',
        b"[" * 50_000,
        HEAD % b"deep" + b',"x":' + b"[" * 50_000 + b"}",
        HEAD % b"bigd" + b',"load_ms":1' + b"0" * 400 + b"}",
        HEAD % b"bigl" + b',"status":1' + b"0" * 400 + b"}",
        HEAD % b"surr" + b',"url":"\\ud800"}',
        HEAD % b"utf8" + b',"url":"\xff\xfe"}',
        HEAD % b"nan" + b',"load_ms":NaN}',
        HEAD % b"inf" + b',"load_ms":-Infinity}',
        HEAD % b"good2" + b"}" + b"[" * 5000,  # text after the object is ignored
    ]
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    report = import_files(settings, PV, [path])
    assert (report.accepted, report.rejected) == (2, 8)
    assert sorted(str(r["event_id"]) for r in _imported(settings)) == ["good1", "good2"]
    letters = _letters(report.deadletters)
    assert [d["line"] for d in letters] == [2, 3, 4, 5, 6, 7, 8, 9]
    reasons = [str(d["reason"]) for d in letters]
    assert reasons[0] == "not a JSON object but list"
    assert reasons[1] == "not valid JSON: nested more than 1000 levels deep"
    assert reasons[2] == "field 'load_ms' is not a finite number: inf"
    assert reasons[3].startswith("field 'status' does not fit a 64-bit long")
    assert reasons[4] == "not valid JSON: a lone surrogate escape (not Unicode text)"
    assert reasons[5].startswith("not valid JSON: not valid UTF-8")
    assert reasons[6:] == [
        "not valid JSON: NaN is not JSON",
        "not valid JSON: -Infinity is not JSON",
    ]


def test_poison_csv_rows_become_dead_letters(settings: Settings, tmp_path: Path) -> None:
    header = b"event_id,ts,url,visitor,status,load_ms,note\n"
    t = b"2026-11-27T10:00:00Z"
    rows = [
        b"good1," + t + b",/a,v,200,1.5,",
        b"nan," + t + b",/a,v,200,nan,",
        b"inf," + t + b",/a,v,200,inf,",
        b"ninf," + t + b",/a,v,200,-Infinity,",
        b"huge," + t + b",/a,v,200,1e400,",
        b"long," + t + b",/a,v,9223372036854775808,1,",
        b"bytes," + t + b",/\xff\xfe,v,200,1,",
        b"note," + t + b",/a,v,200,1,\xed\xa0\x80",  # not UTF-8 in an unused column
        b"big," + t + b",/" + b"a" * 200_000 + b",v,200,1,",  # beyond the csv field limit
        b"good2," + t + b",/b,,404,,",
    ]
    path = tmp_path / "events.csv"
    path.write_bytes(header + b"\n".join(rows) + b"\n")
    report = import_files(settings, PV, [path])
    assert (report.accepted, report.rejected) == (2, 8)
    got = sorted(_imported(settings), key=lambda r: str(r["event_id"]))
    assert [(r["event_id"], r["url"], r["status"], r["load_ms"]) for r in got] == [
        ("good1", "/a", 200, 1.5),
        ("good2", "/b", 404, None),
    ]
    letters = _letters(report.deadletters)
    assert [str(d["reason"]) for d in letters[:6]] == [
        "field 'load_ms' is not a finite number: nan",
        "field 'load_ms' is not a finite number: inf",
        "field 'load_ms' is not a finite number: -inf",
        "field 'load_ms' is not a finite number: inf",
        "field 'status' does not fit a 64-bit long: 9223372036854775808",
        "field 'url' is not valid UTF-8 text (a lone surrogate)",
    ]
    assert letters[6]["reason"] == "field 'note' is not valid UTF-8 text (a lone surrogate)"
    assert str(letters[7]["reason"]).startswith("not valid CSV: field larger than field limit")
    assert [d["line"] for d in letters] == [3, 4, 5, 6, 7, 8, 9, 10]
    # The dead letter keeps the row's text; the bytes that were not UTF-8 are replaced.
    assert json.loads(str(letters[5]["raw"]))["url"] == "/\ufffd\ufffd"
    assert json.loads(str(letters[6]["raw"]))["note"] == "\ufffd" * 3
    assert str(letters[7]["raw"]).startswith("big,2026-11-27T10:00:00Z,/aaa")


def test_import_dead_letters_are_private(settings: Settings, tmp_path: Path) -> None:
    """They hold the rejected input verbatim: file 0600 in a directory created 0700."""
    path = tmp_path / "events.jsonl"
    path.write_bytes(HEAD % b"good" + b"}\n" + b"{oops\n")
    report = import_files(settings, PV, [path])
    assert report.deadletters is not None
    assert stat.S_IMODE(report.deadletters.stat().st_mode) == 0o600
    assert stat.S_IMODE(report.deadletters.parent.stat().st_mode) == 0o700
