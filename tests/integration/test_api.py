"""The HTTP API against the real Cassandra: answers, provenance, and every error path."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from serving.api import create_app
from tests import truth
from tests.conftest import ROOT, run_lamina
from tests.integration.conftest import drop_keyspace


@pytest.fixture(scope="module")
def client(world: dict[str, Any]) -> Iterator[TestClient]:
    app = create_app(world["settings"], world["catalog"])
    with TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False) as c:
        yield c


RANGE = {"from": str(truth.BASE - 4 * 86400), "to": str(truth.BASE + 3600)}


def test_list_and_describe(client: TestClient, world: dict[str, Any]) -> None:
    views = client.get("/views").json()
    assert {v["view"] for v in views} == {"web_pageviews", "iot_temperature", "cloud_metering"}
    d = client.get("/views/web_pageviews").json()
    assert d["keys"] == ["url"] and d["bucket"] == "hour"
    assert d["published"]["version"] >= 1
    assert d["published"]["definition_matches"] is True
    assert "cutoff_age_s" in d["published"] and "stale" in d["published"]


def test_query_matches_truth_with_provenance(client: TestClient, world: dict[str, Any]) -> None:
    want = truth.truth("web_pageviews", world["data"]["web_pageviews"].good)
    url = "/p/3"
    r = client.get("/views/web_pageviews/query", params={"key": url, **RANGE})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["provenance"]["version"] >= 1 and body["provenance"]["cutoff"] > 0
    [result] = body["results"]
    got = {b["bucket_start"]: b for b in result["buckets"]}
    assert set(got) == {b for k, b in want if k == url}
    for b, bucket in got.items():
        assert truth.check("web_pageviews", bucket["values"], want[(url, b)]) == []
        assert bucket["from_batch"] is True and bucket["realtime_epochs"] == []


def test_daily_rollup_uses_the_monoid(client: TestClient, world: dict[str, Any]) -> None:
    want = truth.truth("cloud_metering", world["data"]["cloud_metering"].good)
    r = client.get(
        "/views/cloud_metering/query", params={"key": "c1", "granularity": "day", **RANGE}
    )
    assert r.status_code == 200, r.text
    daily: dict[int, int] = {}
    for (k, b), v in want.items():
        if k == "c1":
            daily[b // 86400 * 86400] = daily.get(b // 86400 * 86400, 0) + v["records"]
    got = {b["bucket_start"]: b["values"]["records"] for b in r.json()["results"][0]["buckets"]}
    assert got == daily


@pytest.mark.parametrize("q", [0.01, 0.5, 0.99])
def test_many_keys_and_quantile(client: TestClient, world: dict[str, Any], q: float) -> None:
    """Several keys in one request, each answered in order; ``q`` reaches the sketches."""
    want = truth.truth("iot_temperature", world["data"]["iot_temperature"].good, width=3600)
    r = client.get(
        "/views/iot_temperature/query",
        params={"key": ["s1", "s0"], "q": q, "granularity": "hour", **RANGE},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert [x["key"] for x in body["results"]] == ["s1", "s0"] and body["q"] == q
    for res in body["results"]:
        got = {b["bucket_start"]: b["values"] for b in res["buckets"]}
        assert set(got) == {b for k, b in want if k == res["key"]}
        for b, values in got.items():
            assert truth.check("iot_temperature", values, want[(res["key"], b)], q) == []


@pytest.mark.parametrize(
    ("path", "params", "status", "message"),
    [
        ("/views/nope", {}, 404, "unknown view 'nope'"),
        ("/views/nope/top", {"by": "x"}, 404, "unknown view 'nope'"),
        ("/views/nope/keys", {}, 404, "unknown view 'nope'"),
        ("/views/web_pageviews/top", RANGE, 400, "no aggregation to rank by"),
        ("/views/web_pageviews/top", {"by": "clicks", **RANGE}, 400, "no aggregation 'clicks'"),
        ("/views/web_pageviews/top", {"by": "pageviews", "limit": "0"}, 400, "limit=0"),
        ("/views/web_pageviews/top", {"by": "pageviews", "limit": "10001"}, 400, "limit=10001"),
        ("/views/web_pageviews/top", {"by": "pageviews", "limit": "ten"}, 422, "limit"),
        ("/views/web_pageviews/top", {"by": "pageviews", "q": "2"}, 400, "q=2.0 is out of range"),
        ("/views/web_pageviews/top", {"by": "pageviews", "from": "nan"}, 400, "from='nan'"),
        ("/views/web_pageviews/top", {"by": "pageviews", "to": "inf"}, 400, "to='inf'"),
        (
            "/views/web_pageviews/top",
            {"by": "pageviews", "from": "1e20", "to": "0"},
            400,
            "outside the times",
        ),
        (
            "/views/web_pageviews/top",
            {"by": "pageviews", "from": RANGE["to"], "to": RANGE["from"]},
            400,
            "empty time range",
        ),
        (
            "/views/web_pageviews/top",
            {"by": "pageviews", "from": "0", "to": RANGE["to"]},
            400,
            "(serving.max_buckets)",
        ),
        ("/views/web_pageviews/keys", {"prefix": "x" * 1001}, 400, "too long"),
        ("/views/web_pageviews/keys", {"limit": "-1"}, 400, "limit=-1"),
        ("/views/web_pageviews/keys", {"from": "yesterday"}, 400, "from='yesterday'"),
        ("/views/nope/query", {"key": "x"}, 404, "unknown view 'nope'"),
        ("/views/web_pageviews/query", {"key": "/never", **RANGE}, 404, "no data for key"),
        ("/views/web_pageviews/query", {}, 422, "key: Field required"),
        (
            "/views/web_pageviews/query",
            {"key": "/p/1", "from": "yesterday"},
            400,
            "from='yesterday' is not a time",
        ),
        (
            "/views/web_pageviews/query",
            {"key": "/p/1", "from": "2026-11-02", "to": "2026-11-01"},
            400,
            "empty time range",
        ),
        (
            "/views/web_pageviews/query",
            {"key": "/p/1", "granularity": "fortnight"},
            400,
            "bad time bucket",
        ),
        (
            "/views/web_pageviews/query",
            {"key": "/p/1", "granularity": "minute"},
            400,
            "not a whole number of view 'web_pageviews'",
        ),
        (
            "/views/web_pageviews/query",
            {"key": "/p/1", "granularity": "90m"},
            400,
            "not a whole number",
        ),
        ("/views/web_pageviews/query", {"key": "/p/1", "q": "2"}, 422, "q: Input should be"),
        ("/views/web_pageviews/query", {"key": "/p/1", "q": "high"}, 422, "q: Input should be"),
        (
            "/views/iot_temperature/query",
            {"key": "s1", "from": "0", "to": "2000000000"},
            400,
            "more than the limit",
        ),
        ("/views/cloud_metering/query", {"key": ["a"] * 1001}, 400, "more than the limit"),
        ("/views/web_pageviews/query", {"key": "/p/1", "from": "nan"}, 400, "from='nan' is"),
        ("/views/web_pageviews/query", {"key": "/p/1", "to": "inf"}, 400, "to='inf' is outside"),
        (
            "/views/web_pageviews/query",
            {"key": "/p/1", "from": "1e20", "to": "0"},
            400,
            "from='1e20' is outside the times events can have",
        ),
        (
            "/views/web_pageviews/query",
            {"key": "/p/1", "to": "9999-12-31T23:00:00"},
            400,
            "outside the times",
        ),
        # Keys and range bounded together: each within its own limit, not both at once.
        (
            "/views/web_pageviews/query",
            {"key": [f"/p/{i}" for i in range(100)], "from": "0", "to": str(3600 * 1000)},
            400,
            "100 key(s) x 1000 hour buckets = 100000 cells, more than the limit of 50000 "
            "(serving.max_cells)",
        ),
        (
            "/views/iot_temperature/query",
            {"key": [f"s{i}" for i in range(10)], "from": "0", "to": str(60 * 10_000)},
            400,
            "(serving.max_cells)",
        ),
    ],
)
def test_user_errors_are_4xx_with_a_message(
    client: TestClient, path: str, params: dict[str, Any], status: int, message: str
) -> None:
    r = client.get(path, params=params)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]


def test_duplicate_keys_are_read_once(client: TestClient) -> None:
    """1,000 copies of a key over 10,000 buckets are one key's 10,000 cells: answered once."""
    one = client.get("/views/cloud_metering/query", params={"key": "c1", **RANGE})
    assert one.status_code == 200, one.text
    r = client.get(
        "/views/cloud_metering/query",
        params={
            "key": ["c1"] * 1000,
            "from": str(int(RANGE["to"]) - 9_998 * 3600),  # 10,000 buckets at most
            "to": RANGE["to"],
        },
    )
    assert r.status_code == 200, r.text
    [result] = r.json()["results"]
    assert result["key"] == "c1" and result["buckets"] == one.json()["results"][0]["buckets"]
    both = client.get("/views/cloud_metering/query", params={"key": ["c2", "c1", "c2"], **RANGE})
    assert [x["key"] for x in both.json()["results"]] == ["c2", "c1"]


def test_the_cli_says_the_same_in_one_line(world: dict[str, Any]) -> None:
    s = world["settings"]
    env = {
        "LAMINA_CASSANDRA__KEYSPACE": s.cassandra.keyspace,
        "LAMINA_PIPELINE__MASTER_DIR": str(s.master_dir),
    }
    for args, said in [
        (["--from", "nan"], "from='nan' is outside the times events can have"),
        (["--from", "1e20", "--to", "0"], "from='1e20' is outside"),
        (["--to", "inf"], "to='inf' is outside"),
    ]:
        out = run_lamina(env, "query", "web_pageviews", "/p/1", *args)
        assert out.returncode == 1, (args, out.stdout, out.stderr)
        assert out.stderr.startswith(f"lamina: error: {said}"), (args, out.stderr)
        assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
    # A keyspace never created (nothing published yet): an answer of the store, no traceback.
    fresh = run_lamina(
        {**env, "LAMINA_CASSANDRA__KEYSPACE": "t_never_" + s.cassandra.keyspace[2:]},
        "query",
        "web_pageviews",
        "/p/1",
    )
    try:
        assert fresh.returncode == 1, fresh.stdout
        assert fresh.stderr.startswith("lamina: error: no data for key '/p/1'"), fresh.stderr
        assert len(fresh.stderr.strip().splitlines()) == 1
    finally:
        drop_keyspace(
            s.model_copy(
                update={
                    "cassandra": s.cassandra.model_copy(
                        update={"keyspace": "t_never_" + s.cassandra.keyspace[2:]}
                    )
                }
            )
        )


def test_serve_with_workers_answers_like_the_app(client: TestClient, world: dict[str, Any]) -> None:
    """``lamina serve --workers 2``: worker processes build the app from the same settings
    (file and environment) and answer the same JSON as the in-process app."""
    s = world["settings"]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        "LAMINA_CASSANDRA__KEYSPACE": s.cassandra.keyspace,
        "LAMINA_PIPELINE__MASTER_DIR": str(s.master_dir),
    }
    cmd = [sys.executable, "-m", "lamina.cli", "serve", "--port", str(port), "--workers", "2"]
    proc = subprocess.Popen(
        cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"
    params = {"key": ["c1", "c2"], **RANGE}
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "lamina serve --workers 2 never got healthy"
            time.sleep(0.5)
        want = client.get("/views/cloud_metering/query", params=params).json()
        for _ in range(4):  # whichever worker answers
            r = httpx.get(f"{base}/views/cloud_metering/query", params=params, timeout=30)
            assert r.status_code == 200, r.text
            assert r.headers["content-type"] == "application/json"
            assert r.json() == want
        bad = httpx.get(f"{base}/views/cloud_metering/query", params={"key": "c1", "to": "inf"})
        assert bad.status_code == 400 and "to='inf'" in bad.json()["error"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_openapi_documents_the_query(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    params = {p["name"] for p in spec["paths"]["/views/{view}/query"]["get"]["parameters"]}
    assert {"key", "from", "to", "granularity", "q"} <= params
    assert client.get("/docs").status_code == 200


def test_top_and_keys_read_a_bounded_number_of_index_rows(world: dict[str, Any]) -> None:
    """More key index rows in the range than ``serving.max_index_rows``: a 400 naming it,
    never an unbounded scan; within it, answered."""

    def with_bound(rows: int) -> Any:
        s = world["settings"]
        return s.model_copy(
            update={"serving": s.serving.model_copy(update={"max_index_rows": rows})}
        )

    app = create_app(with_bound(5), world["catalog"])
    with TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False) as c:
        for path, params in (("top", {"by": "pageviews"}), ("keys", {})):
            r = c.get(f"/views/web_pageviews/{path}", params={**params, **RANGE})
            assert r.status_code == 400, r.text
            assert "(serving.max_index_rows)" in r.json()["error"] and r.json()["hint"]
    app = create_app(with_bound(1_000_000), world["catalog"])
    with TestClient(app, base_url="http://127.0.0.1") as c:
        r = c.get("/views/web_pageviews/top", params={"by": "pageviews", **RANGE})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["keys_with_data"] > 5 and len(body["results"]) == min(
            10, body["keys_with_data"]
        )
