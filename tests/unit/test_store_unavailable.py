"""The serving API without a reachable Cassandra (a refused port, no services): it starts,
answers 503 with a JSON error naming Cassandra's address on every store endpoint and on
``/health``, and what needs no store still works. (The real outage and the recovery are in
``tests/integration/test_store_outage.py``.)"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from cassandra import InvalidRequest, OperationTimedOut, ReadTimeout, Unavailable
from cassandra.cluster import NoHostAvailable
from fastapi.testclient import TestClient

from lamina.errors import StoreUnavailableError
from lamina.settings import CassandraSettings, Settings
from lamina.views import load_views
from serving.api import create_app
from serving.cassandra import unavailable

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A port that is bound but not listening: connections are refused, and no other
    process can start listening on it meanwhile."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


@pytest.mark.parametrize(
    ("exc", "what"),
    [
        (NoHostAvailable("Unable to connect to any servers", {}), "cannot be reached"),
        (OperationTimedOut("timed out"), "did not answer in time"),
        (ReadTimeout("timed out"), "did not answer in time"),
        (Unavailable("not enough replicas"), "has too few live replicas"),
    ],
)
def test_outages_are_store_unavailable(exc: Exception, what: str) -> None:
    err = unavailable(CassandraSettings(host="db1", port=9142), exc)
    assert isinstance(err, StoreUnavailableError) and err.http_status == 503
    assert err.message.startswith(f"the store is unavailable: Cassandra at db1:9142 {what}")
    assert err.hint is not None and "db1:9142" in err.hint


def test_a_rejected_statement_is_no_outage() -> None:
    assert unavailable(CassandraSettings(), InvalidRequest("unconfigured table")) is None
    assert unavailable(CassandraSettings(), ValueError("a bug")) is None


def test_the_api_starts_and_answers_503_without_cassandra(refused_port: int) -> None:
    base = Settings()
    settings = base.model_copy(
        update={"cassandra": base.cassandra.model_copy(update={"port": refused_port})}
    )
    catalog = load_views(ROOT / "conf" / "views.toml")
    address = f"127.0.0.1:{refused_port}"
    with TestClient(
        create_app(settings, catalog), base_url="http://127.0.0.1", raise_server_exceptions=False
    ) as client:
        for path in ("/views/web_pageviews", "/views/web_pageviews/query?key=/p/1", "/health"):
            r = client.get(path)
            assert r.status_code == 503, (path, r.text)
            assert r.headers["content-type"] == "application/json"
            assert r.headers["retry-after"] == "5"
            body = r.json()
            assert "Cassandra" in body["error"] and address in body["error"], body
            assert address in body["hint"], body
        assert client.get("/health").json()["store"] == "down"
        assert client.get("/views").status_code == 200
        metrics = client.get("/metrics")
        assert metrics.status_code == 200
        assert 'lamina_up{part="cassandra"} 0.0' in metrics.text


def test_a_bug_is_a_json_500_without_traceback() -> None:
    from fastapi import APIRouter

    router = APIRouter()

    @router.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internals")

    client = TestClient(
        create_app(Settings(), load_views(ROOT / "conf" / "views.toml"), routers=[router]),
        base_url="http://127.0.0.1",
        raise_server_exceptions=False,
    )
    r = client.get("/boom")
    assert r.status_code == 500
    assert r.json() == {"error": "internal error (RuntimeError)", "hint": "see the server's log"}
