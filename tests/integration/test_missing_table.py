"""A published version whose table is gone (dropped by hand, or collected by purges faster
than a reader could follow) is a 503 with a hint, never a 500 or a traceback."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from serving.api import create_app
from serving.cassandra import session
from serving.schema import batch_table
from tests import truth
from tests.integration.conftest import drop_world, make_world


@pytest.fixture(scope="module")
def lone_world(stack: Any, tmp_path_factory: pytest.TempPathFactory, spark: Any) -> Any:
    w = make_world(stack, tmp_path_factory.mktemp("missing"), spark, n=300, views=["web_pageviews"])
    yield w
    drop_world(w)


def test_a_published_table_dropped_behind_the_catalog_is_a_503(lone_world: Any) -> None:
    settings, catalog = lone_world["settings"], lone_world["catalog"]
    app = create_app(settings, catalog)
    view = catalog.views["web_pageviews"]
    params = {"key": "/p/3", "from": str(truth.BASE - 4 * 86400), "to": str(truth.BASE + 3600)}
    with TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False) as client:
        ok = client.get("/views/web_pageviews/query", params=params)
        assert ok.status_code == 200, ok.text
        version = ok.json()["provenance"]["version"]
        ks = settings.cassandra.keyspace
        with session(settings.cassandra) as s:
            s.execute(f"DROP TABLE {ks}.{batch_table(view, version)}", timeout=120)
        r = client.get("/views/web_pageviews/query", params=params)
    assert r.status_code == 503, r.text
    body = r.json()
    assert "web_pageviews" in body["error"] and body.get("hint")
