"""The user-facing commands on a populated world: query, versions, import, views."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from batch.recompute import run_batch
from lamina.settings import Settings
from lamina.views import load_views
from serving.cassandra import session
from serving.store import Store
from tests import truth
from tests.conftest import ROOT, isolated, run_lamina
from tests.integration.conftest import drop_keyspace


def lamina(world: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``lamina ARGS`` in a new process pointed at ``world``'s keyspace and master."""
    s = world["settings"]
    env = {
        "LAMINA_CASSANDRA__KEYSPACE": s.cassandra.keyspace,
        "LAMINA_PIPELINE__MASTER_DIR": str(s.master_dir),
        "COLUMNS": "200",
    }
    return run_lamina(env, *args)


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


def test_versions_marks_exactly_the_published_one(world: dict[str, Any]) -> None:
    out = lamina(world, "batch", "versions", "web_pageviews")
    assert out.returncode == 0, out.stderr
    settings = world["settings"]
    with session(settings.cassandra) as s:
        store = Store(s, settings.cassandra)
        view = world["catalog"].view("web_pageviews")
        pub, versions = store.published(view), store.versions(view)
    assert pub is not None
    header, *lines = out.stdout.splitlines()
    assert header.split()[:5] == ["version", "state", "cutoff", "(UTC)", "rows"]
    listed = [(line.split()[0], line.split()[1]) for line in lines]
    assert listed == [
        (f"{v.version}{'*' if v.version == pub.version else ''}", v.state) for v in versions
    ]
    assert sum(v.endswith("*") for v, _ in listed) == 1


def test_imports_csv_and_parquet_then_query(stack: Settings, spark: Any, tmp_path: Path) -> None:
    """CSV (with rejections) and Parquet imports into a private world; after a batch, the
    imported rows answer queries exactly, the rejected ones are in the import's dead
    letters with their line and reason."""
    settings = isolated(stack, tmp_path)
    catalog = load_views(ROOT / "conf" / "views.toml")
    world = {"settings": settings}
    csv = tmp_path / "h.csv"
    csv.write_text(
        "usage_id,ts,customer,instance_type,instance_seconds\n"
        "u1,1795000000,c9,m5,60\nu2,not-a-time,c9,m5,60\nu3,1795000001,c9,m5,lots\n"
        "u4,1795000002.5,c9,c6,\n"
    )
    more = truth.metering(300, seed=41)
    parquet = tmp_path / "h.parquet"
    pq.write_table(pa.Table.from_pylist(more.good), parquet)
    try:
        out = lamina(world, "master", "import", "metering", str(csv))
        assert out.returncode == 0, out.stderr
        assert "imported 2 events" in out.stdout and "rejected 2" in out.stdout
        dl = out.stdout.split("rejected rows with their reasons: ")[1].strip()
        rows = [json.loads(line) for line in Path(dl).read_text().splitlines()]
        assert [r["line"] for r in rows] == [3, 4]
        assert "should be long" in rows[1]["reason"]
        out = lamina(world, "master", "import", "metering", str(parquet))
        assert out.returncode == 0, out.stderr
        assert "imported 300 events" in out.stdout
        nofile = lamina(world, "master", "import", "metering", str(tmp_path / "none.jsonl"))
        assert nofile.returncode == 1 and "no such file" in nofile.stderr
        assert "Traceback" not in nofile.stderr

        run_batch(spark, settings, catalog, ["cloud_metering"])
        events = [
            {"customer": "c9", "ts": 1795000000.0, "instance_seconds": 60},
            {"customer": "c9", "ts": 1795000002.5, "instance_seconds": None},
            *more.good,
        ]
        want = truth.truth("cloud_metering", events)
        for key in sorted({k for k, _ in want}):
            out = lamina(
                world,
                "query",
                "cloud_metering",
                key,
                "--from",
                str(truth.BASE - 86400),
                "--to",
                str(truth.BASE + 3600),
                "--format",
                "json",
            )
            assert out.returncode == 0, out.stderr
            got = {
                b["bucket_start"]: b["values"]
                for b in json.loads(out.stdout)["results"][0]["buckets"]
            }
            assert got == {b: v for (k, b), v in want.items() if k == key}, key
            if key == "c9":
                assert got == {1794999600: {"instance_seconds": 60, "records": 2}}
    finally:
        drop_keyspace(settings)


def test_views_lists_definitions(world: dict[str, Any]) -> None:
    out = lamina(world, "views")
    assert out.returncode == 0
    assert "web_pageviews: source pageviews (topic pageviews), keys url, per hour" in out.stdout
