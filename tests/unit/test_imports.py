"""``master import`` of JSON lines and CSV files holding poison records (issue #12): every
record is imported or written to the dead letters with its reason; none stops the import.
An import is visible whole or not at all, in an epoch taken when it commits. Files only
(the master dataset is a directory): no engine, no services."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from batch.imports import import_files
from lamina.errors import ConfigError
from lamina.master import (
    ImportStaging,
    committed_imports,
    deadletter_dir,
    imports_dir,
    progress,
    record_progress,
    running_imports,
    source_dir,
    staging_dir,
    sweep_staging,
    write_epoch,
)
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


def _lines(n: int, prefix: str = "e") -> bytes:
    return b"".join(HEAD % f"{prefix}{i}".encode() + b"}\n" for i in range(n))


def test_an_import_that_fails_midway_leaves_nothing(settings: Settings, tmp_path: Path) -> None:
    """Chunks written, a dead letter written, then the second file fails: no event, no
    dead letter, no progress of the import remain (it is retried whole)."""
    good = tmp_path / "good.jsonl"
    good.write_bytes(_lines(5) + b"not json\n")
    later = tmp_path / "later.txt"
    later.write_text("an unknown format\n")
    with pytest.raises(ConfigError, match="unknown format"):
        import_files(settings, PV, [good, later], chunk_rows=2)
    assert list(source_dir(settings, PV).rglob("*.parquet")) == []
    assert not deadletter_dir(settings, PV).exists() or not any(
        deadletter_dir(settings, PV).iterdir()
    )
    assert progress(settings, PV) == {}
    report = import_files(settings, PV, [good], chunk_rows=2)
    assert (report.accepted, report.rejected) == (5, 1)
    [files] = committed_imports(settings, PV).values()
    assert len(files) == 3 and len(_imported(settings)) == 5
    assert len(_letters(report.deadletters)) == 1


def test_an_import_takes_its_epoch_when_it_commits(settings: Settings, tmp_path: Path) -> None:
    """A cutoff that passed the current epoch while the import was being written (the
    archiver moved on) is not passed by the import: its epoch is taken at the commit."""
    path = tmp_path / "history.jsonl"
    path.write_bytes(_lines(50_000))
    ahead = 10**10  # far beyond the current epoch

    def archiver_moves_on(accepted: int, rejected: int) -> None:
        record_progress(settings, PV, "archiver", ahead, active=True)

    report = import_files(settings, PV, [path], chunk_rows=10_000, on_progress=archiver_moves_on)
    assert report.epoch == ahead
    assert list(committed_imports(settings, PV)) == [ahead]


def test_only_committed_imports_are_read_in_either_layout(
    settings: Settings, tmp_path: Path
) -> None:
    """Readers list files directly in an epoch directory (imports before manifests) and
    those of committed manifests; never a staging directory, whether its import runs or
    died (the next import removes the dead one only)."""
    old = imports_dir(settings, PV) / "ingest_epoch=100" / "import-0123abcd-ffff.parquet"
    old.parent.mkdir(parents=True)
    old.write_bytes(b"")  # a file of an import by Lamina before manifests
    (old.parent / ".import-x.parquet.tmp").write_bytes(b"")  # one it was still writing
    report = import_files(settings, PV, [_file(tmp_path, 3)])
    running = ImportStaging(settings, PV, "import-running")
    running.add(pq.read_table(next(iter(committed_imports(settings, PV)[report.epoch]))))
    dead = staging_dir(settings, PV) / "import-dead"
    dead.mkdir()
    (dead / "part-00000.parquet").write_bytes(b"")
    (staging_dir(settings, PV) / "import-dead.lock").touch()
    committed = committed_imports(settings, PV)
    assert sorted(committed) == [100, report.epoch]
    assert committed[100] == [old]
    assert len(committed[report.epoch]) == 1
    assert running_imports(settings, PV) == ["import-running"]
    assert sweep_staging(settings, PV) == ["import-dead"]
    assert not dead.exists() and running.dir.exists()
    running.close()
    assert not running.dir.exists()
    write_epoch(settings, PV, 200, pq.read_table(committed[report.epoch][0]), "bench")
    assert sorted(committed_imports(settings, PV)) == [100, 200, report.epoch]
    # Only the import recorded progress: history written at chosen epochs records none.
    assert [w["complete_before"] for w in progress(settings, PV).values()] == [
        report.epoch + settings.pipeline.epoch_seconds
    ]


def _file(tmp_path: Path, n: int) -> Path:
    path = tmp_path / "few.jsonl"
    path.write_bytes(_lines(n, "few"))
    return path


def test_only_json_whitespace_makes_a_blank_line(settings: Settings, tmp_path: Path) -> None:
    """Blank lines (JSON whitespace only) are no records; a line of other whitespace (a
    vertical tab, a form feed) is a record, rejected as on a Kafka topic: it used to be
    skipped without a letter."""
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n \t\r\n\x0b\n\x0c\n\x0b\x0c \n\r\n")
    report = import_files(settings, PV, [path])
    assert (report.accepted, report.rejected) == (0, 3)
    letters = _letters(report.deadletters)
    assert [(d["line"], d["reason"]) for d in letters] == [
        (3, "not valid JSON"),
        (4, "not valid JSON"),
        (5, "not valid JSON"),
    ]


def test_import_dead_letters_are_private(settings: Settings, tmp_path: Path) -> None:
    """They hold the rejected input verbatim: file 0600 in a directory created 0700."""
    path = tmp_path / "events.jsonl"
    path.write_bytes(HEAD % b"good" + b"}\n" + b"{oops\n")
    report = import_files(settings, PV, [path])
    assert report.deadletters is not None
    assert stat.S_IMODE(report.deadletters.stat().st_mode) == 0o600
    assert stat.S_IMODE(report.deadletters.parent.stat().st_mode) == 0o700


def test_reading_the_cutoff_writes_nothing(settings: Settings, tmp_path: Path) -> None:
    """Readers (the API, an Airflow worker: maybe another user, read-only) read the cutoff and
    probe running imports without creating a lock file; once an import has committed, the
    cutoff is read under its lock and still agrees."""
    from lamina.master import complete_cutoff

    record_progress(settings, PV, "archiver", 1000, active=True)
    lock = source_dir(settings, PV) / "_progress" / ".lock"
    assert complete_cutoff(settings, PV) == 1000
    assert not lock.exists()  # the old shared lock created it
    staging_dir(settings, PV).mkdir(parents=True)
    (staging_dir(settings, PV) / "import-dead").mkdir()  # its lock file is gone: dead
    assert running_imports(settings, PV) == []
    assert not (staging_dir(settings, PV) / "import-dead.lock").exists()

    path = tmp_path / "history.jsonl"
    path.write_bytes(_lines(10))
    report = import_files(settings, PV, [path])
    assert report.epoch >= 1000 and lock.exists()
    assert complete_cutoff(settings, PV) == 1000
    assert sweep_staging(settings, PV) == []  # the import swept the dead one itself


def test_dead_letters_left_by_a_killed_import_move_at_the_next_one(
    settings: Settings, tmp_path: Path
) -> None:
    """Killed between its commit and moving its dead letters, an import leaves them in its
    directory: the next import moves them where dead letters are, nothing lost."""
    from batch.imports import DEADLETTERS_STAGED

    path = tmp_path / "events.jsonl"
    path.write_bytes(HEAD % b"one" + b"}\n" + b"{oops\n")
    first = import_files(settings, PV, [path])
    assert first.deadletters is not None
    # As a kill right after the commit leaves it: the letters still in the import's directory.
    [committed] = [d for d in imports_dir(settings, PV).glob("ingest_epoch=*/*") if d.is_dir()]
    first.deadletters.rename(committed / DEADLETTERS_STAGED)
    path.write_bytes(HEAD % b"two" + b"}\n")
    import_files(settings, PV, [path])
    assert not list(imports_dir(settings, PV).rglob(DEADLETTERS_STAGED))
    [letter] = _letters(first.deadletters)
    assert (letter["raw"], letter["line"]) == ("{oops", 2) and letter["reason"]
