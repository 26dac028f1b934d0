"""Views keyed by several fields and by non-string fields, end to end: import, batch, query
by the CLI's and the HTTP API's ``"a,b"`` key syntax, answers equal to a plain-Python truth."""

from __future__ import annotations

import json
import random
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from batch.imports import import_files
from batch.recompute import run_batch
from lamina.settings import Settings
from lamina.views import ViewCatalog, load_views
from serving.api import create_app
from tests import truth
from tests.conftest import isolated
from tests.integration.conftest import drop_keyspace

VIEWS = """
[sources.logins]
topic = "logins-keys-test"
event_id = "id"
event_time = "ts"
event_time_format = "epoch_s"
[sources.logins.fields]
id = "string"
ts = "long"
ok = "boolean"
region = "string"
attempts = "long"
latency_ms = "double"

[views.logins_by_outcome_region]
source = "logins"
keys = ["ok", "region"]
bucket = "hour"
[views.logins_by_outcome_region.aggregations]
logins = { fn = "count" }
attempts = { fn = "sum", field = "attempts" }

[views.logins_by_attempts]
source = "logins"
keys = ["attempts"]
bucket = "day"
[views.logins_by_attempts.aggregations]
logins = { fn = "count" }
slowest = { fn = "max", field = "latency_ms" }

[views.logins_by_region_latency]
source = "logins"
keys = ["region", "latency_ms"]
bucket = "day"
[views.logins_by_region_latency.aggregations]
logins = { fn = "count" }
"""

REGIONS = ("eu", "us", "ap")


def logins(n: int, seed: int = 5) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [
        {
            "id": str(uuid.UUID(int=rng.getrandbits(128))),
            "ts": int(truth.BASE - rng.uniform(0, 2 * 86400)),
            "ok": rng.random() < 0.8,
            "region": rng.choice(REGIONS),
            "attempts": rng.choice([1, 1, 1, 2, 3, -1]),
            "latency_ms": rng.choice([12.5, 40.0, 250.25]),
        }
        for _ in range(n)
    ]


def expected(
    events: list[dict[str, Any]], keys: tuple[str, ...], width: int
) -> dict[tuple[tuple[Any, ...], int], dict[str, Any]]:
    """Plain-Python truth: ``{(key tuple, bucket): {"n", "attempts", "slowest"}}``."""
    out: dict[tuple[tuple[Any, ...], int], dict[str, Any]] = defaultdict(
        lambda: {"n": 0, "attempts": 0, "slowest": None}
    )
    for ev in events:
        cell = out[(tuple(ev[k] for k in keys), ev["ts"] // width * width)]
        cell["n"] += 1
        cell["attempts"] += ev["attempts"]
        cell["slowest"] = max(ev["latency_ms"], cell["slowest"] or ev["latency_ms"])
    return dict(out)


def key_text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


@pytest.fixture(scope="module")
def keyed(
    stack: Settings, tmp_path_factory: pytest.TempPathFactory, spark: Any
) -> Iterator[tuple[Settings, ViewCatalog, list[dict[str, Any]]]]:
    tmp = tmp_path_factory.mktemp("keys")
    views = tmp / "views.toml"
    views.write_text(VIEWS)
    base = isolated(stack, tmp)
    settings = base.model_copy(
        update={"pipeline": base.pipeline.model_copy(update={"views_file": views})}
    )
    catalog = load_views(views)
    events = logins(2000)
    path = tmp / "logins.jsonl"
    path.write_text("".join(json.dumps(ev) + "\n" for ev in events))
    try:
        report = import_files(settings, catalog.sources["logins"], [path])
        assert (report.accepted, report.rejected) == (len(events), 0)
        run_batch(spark, settings, catalog)
        yield settings, catalog, events
    finally:
        drop_keyspace(settings)


RANGE = {"from": str(truth.BASE - 3 * 86400), "to": str(truth.BASE + 3600)}


@pytest.mark.parametrize(
    ("view", "keys", "width"),
    [
        ("logins_by_outcome_region", ("ok", "region"), 3600),
        ("logins_by_attempts", ("attempts",), 86400),
        ("logins_by_region_latency", ("region", "latency_ms"), 86400),
    ],
)
def test_typed_and_composite_keys_answer_exactly(
    keyed: tuple[Settings, ViewCatalog, list[dict[str, Any]]],
    view: str,
    keys: tuple[str, ...],
    width: int,
) -> None:
    settings, catalog, events = keyed
    want = expected(events, keys, width)
    raw_keys = sorted({",".join(key_text(v) for v in k) for k, _ in want})
    assert len(raw_keys) > 3
    with TestClient(create_app(settings, catalog), base_url="http://127.0.0.1") as client:
        r = client.get(f"/views/{view}/query", params={"key": raw_keys, **RANGE})
    assert r.status_code == 200, r.text
    got = {
        (res["key"], b["bucket_start"]): b["values"]
        for res in r.json()["results"]
        for b in res["buckets"]
    }
    assert set(got) == {(",".join(key_text(v) for v in k), b) for k, b in want}
    for (k, b), cell in want.items():
        values = got[(",".join(key_text(v) for v in k), b)]
        assert values["logins"] == cell["n"]
        if "attempts" in values:
            assert values["attempts"] == cell["attempts"]
        if "slowest" in values:
            assert values["slowest"] == cell["slowest"]


@pytest.mark.parametrize(
    ("view", "key", "message"),
    [
        ("logins_by_outcome_region", "true", "has 1 part(s) but view"),
        ("logins_by_outcome_region", "true,eu,x", "has 3 part(s)"),
        ("logins_by_attempts", "two", "key field 'attempts' is long, got 'two'"),
        ("logins_by_region_latency", "eu,fast", "key field 'latency_ms' is double"),
    ],
)
def test_malformed_keys_are_400(
    keyed: tuple[Settings, ViewCatalog, list[dict[str, Any]]], view: str, key: str, message: str
) -> None:
    settings, catalog, _ = keyed
    with TestClient(create_app(settings, catalog), base_url="http://127.0.0.1") as client:
        r = client.get(f"/views/{view}/query", params={"key": key, **RANGE})
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]


def test_a_key_of_another_type_finds_nothing(
    keyed: tuple[Settings, ViewCatalog, list[dict[str, Any]]], tmp_path: Path
) -> None:
    """``false,eu`` and ``true,eu`` are different keys: no value leaks between them."""
    settings, catalog, events = keyed
    with TestClient(create_app(settings, catalog), base_url="http://127.0.0.1") as client:
        r = client.get(
            "/views/logins_by_outcome_region/query",
            params={"key": ["false,eu", "true,eu"], "granularity": "day", **RANGE},
        )
    assert r.status_code == 200, r.text
    totals = {
        res["key"]: sum(b["values"]["logins"] for b in res["buckets"])
        for res in r.json()["results"]
    }
    assert totals == {
        "false,eu": sum(1 for e in events if not e["ok"] and e["region"] == "eu"),
        "true,eu": sum(1 for e in events if e["ok"] and e["region"] == "eu"),
    }
