"""The user-facing commands on a populated world: query, versions, import, views."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests import truth
from tests.conftest import ROOT


def lamina(world: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    s = world["settings"]
    env = {
        **os.environ,
        "LAMINA_CASSANDRA__KEYSPACE": s.cassandra.keyspace,
        "LAMINA_PIPELINE__MASTER_DIR": str(s.master_dir),
        "COLUMNS": "200",
    }
    return subprocess.run(
        [sys.executable, "-m", "lamina.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )


def test_query_json_matches_truth(world: dict[str, Any]) -> None:
    out = lamina(
        world,
        "query",
        "cloud_metering",
        "c2",
        "--from",
        str(truth.BASE - 86400 * 4),
        "--to",
        str(truth.BASE + 3600),
        "--format",
        "json",
    )
    assert out.returncode == 0, out.stderr
    body = json.loads(out.stdout)
    want = truth.truth("cloud_metering", world["data"]["cloud_metering"].good)
    got = {b["bucket_start"]: b["values"] for b in body["results"][0]["buckets"]}
    assert got == {b: v for (k, b), v in want.items() if k == "c2"}


def test_query_table_and_errors(world: dict[str, Any]) -> None:
    out = lamina(
        world,
        "query",
        "iot_temperature",
        "s1",
        "--granularity",
        "hour",
        "--q",
        "0.9",
        "--from",
        str(truth.BASE - 7200),
        "--to",
        str(truth.BASE),
    )
    assert out.returncode == 0, out.stderr
    assert "iot_temperature per hour" in out.stdout and "temp_q" in out.stdout
    bad = lamina(world, "query", "iot_temperature", "s1", "--granularity", "week")
    assert bad.returncode == 1 and bad.stderr.startswith("lamina: error: granularity: bad time")
    assert "Traceback" not in bad.stderr
    missing = lamina(world, "query", "nope", "x")
    assert missing.returncode == 1 and "unknown view 'nope'" in missing.stderr


def test_versions_lists_the_published_one(world: dict[str, Any]) -> None:
    out = lamina(world, "batch", "versions", "web_pageviews")
    assert out.returncode == 0, out.stderr
    assert any(line.split()[0].endswith("*") for line in out.stdout.splitlines()[1:])


def test_import_reports_rejections(world: dict[str, Any], tmp_path: Path) -> None:
    f = tmp_path / "h.csv"
    f.write_text(
        "usage_id,ts,customer,instance_type,instance_seconds\n"
        "u1,1795000000,c9,m5,60\nu2,not-a-time,c9,m5,60\nu3,1795000001,c9,m5,lots\n"
    )
    out = lamina(world, "master", "import", "metering", str(f))
    assert out.returncode == 0, out.stderr
    assert "imported 1 events" in out.stdout and "rejected 2" in out.stdout
    dl = out.stdout.split("rejected rows with their reasons: ")[1].strip()
    rows = [json.loads(line) for line in Path(dl).read_text().splitlines()]
    assert [r["line"] for r in rows] == [3, 4]
    assert "should be long" in rows[1]["reason"]
    nofile = lamina(world, "master", "import", "metering", str(tmp_path / "none.jsonl"))
    assert nofile.returncode == 1 and "no such file" in nofile.stderr


def test_views_lists_definitions(world: dict[str, Any]) -> None:
    out = lamina(world, "views")
    assert out.returncode == 0
    assert "web_pageviews: source pageviews (topic pageviews), keys url, per hour" in out.stdout
