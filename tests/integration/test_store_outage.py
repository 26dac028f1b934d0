"""The serving API through a Cassandra outage, against the real Cassandra, stopped and started
again by the stack manager.

While Cassandra is down, every endpoint that needs the store answers 503 with the API's JSON
error (naming Cassandra and its address), never a 500 or a traceback; ``/health`` says the
store is down (503); ``/metrics`` still answers, with ``lamina_up{part="cassandra"} 0``; an API
started during the outage starts and says the same. Once Cassandra is back, both APIs answer
again without being restarted.

The test stops the Cassandra of the session's stack (the one ``stack`` started or reused) and
always starts it again, also when an assertion fails.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from httpx import Response

from lamina.settings import Settings
from lamina.stack.manager import Stack
from lamina.views import ViewCatalog, load_views
from serving.api import create_app
from tests.conftest import ROOT, isolated, run_lamina
from tests.integration.conftest import drop_keyspace

VIEW = "web_pageviews"
STORE_PATHS = (
    f"/views/{VIEW}",
    f"/views/{VIEW}/query?key=/p/1",
    f"/views/{VIEW}/top?by=pageviews",
    f"/views/{VIEW}/keys",
)
"""Endpoints whose answer comes from Cassandra."""
LOCAL = "http://127.0.0.1"
"""The API answers loopback hosts only (serving.allowed_hosts), not TestClient's "testserver"."""

RECOVERY_S = 60.0
"""How long the API may take to answer again once Cassandra is back (it needs a few s)."""


@pytest.fixture
def outage_settings(stack: Settings, tmp_path: Path) -> Iterator[Settings]:
    """A private keyspace, dropped at the end (Cassandra is up again by then)."""
    settings = isolated(stack, tmp_path)
    yield settings
    drop_keyspace(settings)


def statuses(client: TestClient) -> dict[str, int]:
    return {path: client.get(path).status_code for path in (*STORE_PATHS, "/health", "/views")}


def assert_unavailable(response: Response, settings: Settings) -> None:
    """A 503 with the API's JSON error naming Cassandra at its configured address."""
    address = f"{settings.cassandra.host}:{settings.cassandra.port}"
    where = f"{response.request.method} {response.request.url}"
    assert response.status_code == 503, (where, response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json"), (where, response.text)
    assert "Traceback" not in response.text, (where, response.text)
    body = response.json()
    assert body["error"] and body["hint"], (where, body)
    said = f"{body['error']} {body['hint']}"
    assert "Cassandra" in said and address in said, (where, body)


def wait_answering(client: TestClient, settings: Settings, want: dict[str, int]) -> None:
    """Poll until ``client`` answers as before the outage; meanwhile, only 503s as above."""
    started = time.monotonic()
    deadline = started + RECOVERY_S
    got: dict[str, int] = {}
    while time.monotonic() < deadline:
        health = client.get("/health")
        if health.status_code == 200:
            got = statuses(client)
            if got == want:
                print(f"[outage] answering again after {time.monotonic() - started:.1f}s")
                return
        else:
            assert_unavailable(health, settings)
            for path in STORE_PATHS:
                r = client.get(path)
                if r.status_code != want[path]:
                    assert_unavailable(r, settings)
        time.sleep(0.5)
    pytest.fail(f"the API did not answer again within {RECOVERY_S:.0f}s: {got or health.text}")


def test_cassandra_outage_is_503_json_and_the_api_recovers(outage_settings: Settings) -> None:
    settings = outage_settings
    catalog: ViewCatalog = load_views(ROOT / "conf" / "views.toml")
    cassandra = Stack(settings, ["cassandra"])
    with contextlib.ExitStack() as apis:
        client = apis.enter_context(
            TestClient(create_app(settings, catalog), base_url=LOCAL, raise_server_exceptions=False)
        )
        before = statuses(client)
        # Up: described (200), no data for the key (404), healthy, the views listed.
        # Up: described (200), no data for the key (404), no top keys and no keys (200),
        # healthy, the views listed.
        assert before == {
            STORE_PATHS[0]: 200,
            STORE_PATHS[1]: 404,
            STORE_PATHS[2]: 200,
            STORE_PATHS[3]: 200,
            "/health": 200,
            "/views": 200,
        }
        try:
            cassandra.down(progress=lambda m: print(f"[outage] {m}"))
            for path in STORE_PATHS:
                for _ in range(2):  # the first failure and the ones after it alike
                    assert_unavailable(client.get(path), settings)
            health = client.get("/health")
            assert_unavailable(health, settings)
            assert health.json()["store"] == "down"
            assert client.get("/views").status_code == 200  # needs no store
            metrics = client.get("/metrics")
            assert metrics.status_code == 200
            assert 'lamina_up{part="cassandra"} 0.0' in metrics.text

            # The CLI: one line naming Cassandra, exit 1, no traceback.
            cli = run_lamina(
                {"LAMINA_CASSANDRA__KEYSPACE": settings.cassandra.keyspace},
                "query",
                VIEW,
                "/p/1",
            )
            assert cli.returncode == 1, (cli.stdout, cli.stderr)
            assert cli.stderr.startswith("lamina: error: the store is unavailable: Cassandra at ")
            assert len(cli.stderr.strip().splitlines()) == 1, cli.stderr
            assert "Traceback" not in cli.stdout + cli.stderr
            for args in (("keys", VIEW), ("query", VIEW, "--top", "pageviews")):
                cli = run_lamina({"LAMINA_CASSANDRA__KEYSPACE": settings.cassandra.keyspace}, *args)
                assert cli.returncode == 1, (args, cli.stdout, cli.stderr)
                assert cli.stderr.startswith("lamina: error: the store is unavailable: ")
                assert len(cli.stderr.strip().splitlines()) == 1, cli.stderr

            # An API started during the outage starts, and answers the same.
            late = apis.enter_context(
                TestClient(
                    create_app(settings, catalog), base_url=LOCAL, raise_server_exceptions=False
                )
            )
            for path in (*STORE_PATHS, "/health"):
                assert_unavailable(late.get(path), settings)
        finally:
            cassandra.up(progress=lambda m: print(f"[outage] {m}"))
        wait_answering(client, settings, before)
        wait_answering(late, settings, before)
        assert client.get("/health").json()["store"] == "up"


def test_a_cassandra_that_does_not_answer_is_503_json_and_the_api_recovers(
    outage_settings: Settings,
) -> None:
    """A hung node (its process stopped with SIGSTOP: connections stay open, nothing answers)
    is answered within ``serving.timeout_s`` with the 503 "did not answer in time", never
    hangs the API nor gives a 500; once the node runs again, the API answers by itself."""
    settings = outage_settings.model_copy(
        update={"serving": outage_settings.serving.model_copy(update={"timeout_s": 2.0})}
    )
    catalog: ViewCatalog = load_views(ROOT / "conf" / "views.toml")
    [cassandra] = [s for s in Stack(settings, ["cassandra"]).status() if s.name == "cassandra"]
    assert cassandra.pid is not None
    with TestClient(
        create_app(settings, catalog), base_url=LOCAL, raise_server_exceptions=False
    ) as client:
        before = statuses(client)
        assert before[STORE_PATHS[1]] == 404
        os.kill(cassandra.pid, signal.SIGSTOP)
        try:
            for _ in range(2):
                started = time.monotonic()
                r = client.get(STORE_PATHS[1])
                took = time.monotonic() - started
                assert_unavailable(r, settings)
                assert took < 15, took
                print(f"[hung] {r.json()['error']} after {took:.1f}s")
            assert "did not answer in time" in r.json()["error"] or (
                "cannot be reached" in r.json()["error"]
            )
        finally:
            os.kill(cassandra.pid, signal.SIGCONT)
        wait_answering(client, settings, before)
