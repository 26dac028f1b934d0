"""``GET /metrics`` against the real stack: latency by view and outcome, batch gauges as the
store has them, streaming lag and dead letters from the real Kafka, and scrapes that survive a
part being down."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from kafka import KafkaAdminClient, KafkaProducer
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from lamina.settings import Settings
from lamina.streams import deadletter_topic, end_offsets, source_query, write_status
from lamina.views import ViewCatalog, load_views
from serving.api import create_app
from serving.metrics import StateCollector
from serving.store import open_store
from tests.conftest import ROOT
from tests.integration.streams import private_views
from tests.integration.test_api import RANGE

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition: (sample name, labels) -> value."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def scrape(client: TestClient) -> Samples:
    r = client.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(r.text)


def get(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def with_checkpoints(settings: Settings, path: Path) -> Settings:
    """``settings`` whose streaming status files live under ``path`` (no other query's)."""
    return settings.model_copy(
        update={"spark": settings.spark.model_copy(update={"checkpoint_dir": path})}
    )


def produce(settings: Settings, topic: str, n: int) -> None:
    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers)
    try:
        for i in range(n):
            producer.send(topic, key=f"k{i}".encode(), value=f'{{"n": {i}}}'.encode())
        producer.flush()
    finally:
        producer.close()


def speed_status(offsets: dict[str, dict[str, int]], written_at: float) -> dict[str, Any]:
    """A status file as :class:`speed.queries.ProgressRecorder` writes it."""
    return {
        "batch_id": 7,
        "input_rows": 30,
        "input_rows_per_s": 12.5,
        "processed_rows_per_s": 25.0,
        "durations_ms": {"triggerExecution": 1500, "addBatch": 1200},
        "end_offsets": offsets,
        "latest_offsets": offsets,
        "written_at": written_at,
    }


def delete_private_topics(settings: Settings, catalog: ViewCatalog) -> None:
    """Delete the topics of ``catalog``'s sources and their dead-letter topics; a shared
    topic (one of conf/views.toml) is never deleted."""
    shared = load_views(ROOT / "conf" / "views.toml").sources.values()
    mine = {t for src in catalog.sources.values() for t in (src.topic, deadletter_topic(src))}
    assert not mine & {t for src in shared for t in (src.topic, deadletter_topic(src))}
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers)
    try:
        existing = sorted(mine & set(admin.list_topics()))
        if existing:
            admin.delete_topics(existing, timeout_ms=60_000)
    finally:
        admin.close()


@pytest.fixture(scope="module")
def metrics_settings(world: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The world's settings with a private checkpoint directory."""
    return with_checkpoints(world["settings"], tmp_path_factory.mktemp("checkpoints"))


@pytest.fixture(scope="module")
def catalog(
    metrics_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ViewCatalog]:
    """The example views on private topics (deleted at the end): the tests produce junk
    records, which must not land in the shared topics (`lamina deadletters`, the demo and
    other tests read them)."""
    private = load_views(private_views(tmp_path_factory.mktemp("views")))
    yield private
    delete_private_topics(metrics_settings, private)


@pytest.fixture(scope="module")
def client(metrics_settings: Settings, catalog: ViewCatalog) -> Iterator[TestClient]:
    with TestClient(
        create_app(metrics_settings, catalog),
        base_url="http://127.0.0.1",
        raise_server_exceptions=False,
    ) as c:
        yield c


def test_latency_counts_each_request_by_view_and_outcome(client: TestClient) -> None:
    before = scrape(client)
    requests = [
        ("/views/web_pageviews/query", {"key": "/p/3", **RANGE}, 200),
        ("/views/web_pageviews/query", {"key": "/p/4", **RANGE}, 200),
        ("/views/web_pageviews/query", {"key": ["/p/1", "/p/2"], **RANGE}, 200),
        ("/views/web_pageviews/query", {"key": "/never", **RANGE}, 404),
        ("/views/web_pageviews/query", {"key": "/p/1", "from": "yesterday"}, 400),
        ("/views/web_pageviews/query", {}, 422),
        ("/views/nope/query", {"key": "x"}, 404),
        ("/views/iot_temperature", {}, 200),
        ("/views", {}, 200),  # not a per-view endpoint: not timed
    ]
    for path, params, status in requests:
        assert client.get(path, params=params).status_code == status
    after = scrape(client)

    def grew(endpoint: str, view: str, outcome: str) -> float:
        labels = {"endpoint": endpoint, "view": view, "outcome": outcome}
        count = "lamina_query_duration_seconds_count"
        return (get(after, count, **labels) or 0) - (get(before, count, **labels) or 0)

    assert grew("query", "web_pageviews", "ok") == 3
    assert grew("query", "web_pageviews", "client_error") == 3
    assert grew("query", "_unknown", "client_error") == 1
    assert grew("describe", "iot_temperature", "ok") == 1
    total = sum(
        v - before.get(k, 0)
        for k, v in after.items()
        if k[0] == "lamina_query_duration_seconds_count"
    )
    assert total == 8
    ok = {"endpoint": "query", "view": "web_pageviews", "outcome": "ok"}
    inf = get(after, "lamina_query_duration_seconds_bucket", le="+Inf", **ok)
    assert inf == get(after, "lamina_query_duration_seconds_count", **ok)
    assert (get(after, "lamina_query_duration_seconds_sum", **ok) or 0) > 0


def test_batch_gauges_match_the_store(client: TestClient, world: dict[str, Any]) -> None:
    t0 = time.time()
    samples = scrape(client)
    t1 = time.time()
    assert get(samples, "lamina_up", part="cassandra") == 1
    catalog: ViewCatalog = world["catalog"]
    with open_store(world["settings"].cassandra) as store:
        for view in catalog.views.values():
            pub = store.published(view)
            assert pub is not None
            states = [v.state for v in store.versions(view)]
            assert get(samples, "lamina_batch_published_version", view=view.name) == pub.version
            age = get(samples, "lamina_batch_cutoff_age_seconds", view=view.name)
            assert age is not None and t0 - pub.cutoff <= age <= t1 - pub.cutoff
            retained = sum(s in ("ready", "published", "superseded") for s in states)
            assert retained >= 1
            assert get(samples, "lamina_batch_retained_versions", view=view.name) == retained
            assert get(samples, "lamina_batch_building_versions", view=view.name) == states.count(
                "building"
            )
            assert (
                get(samples, "lamina_view_max_staleness_seconds", view=view.name)
                == view.max_staleness_s
            )


def test_stream_gauges_and_lag(
    client: TestClient, metrics_settings: Settings, catalog: ViewCatalog
) -> None:
    view = catalog.view("web_pageviews")
    topic, query = view.source.topic, source_query(view.source)
    produce(metrics_settings, topic, 20)  # the topic exists, with records on its partitions
    processed = end_offsets(metrics_settings, {topic})
    assert processed[topic]
    written_at = time.time() - 42
    write_status(metrics_settings, query, speed_status(processed, written_at))
    produce(metrics_settings, topic, 15)
    latest = end_offsets(metrics_settings, {topic})[topic]
    t0 = time.time()
    samples = scrape(client)
    t1 = time.time()

    expected = sum(end - processed[topic].get(p, 0) for p, end in latest.items())
    assert expected >= 15
    assert get(samples, "lamina_stream_lag_records", query=query, topic=topic) == expected
    assert get(samples, "lamina_stream_last_batch_id", query=query) == 7
    assert get(samples, "lamina_stream_last_batch_duration_seconds", query=query) == 1.5
    assert get(samples, "lamina_stream_input_rows_per_second", query=query) == 12.5
    assert get(samples, "lamina_stream_processed_rows_per_second", query=query) == 25.0
    for age in (
        get(samples, "lamina_stream_progress_age_seconds", query=query),
        get(samples, "lamina_realtime_freshness_seconds", view=view.name),
    ):
        assert age is not None and t0 - written_at - 0.01 <= age <= t1 - written_at + 0.01
    # Queries that never reported progress have no samples.
    other = source_query(catalog.view("iot_temperature").source)
    assert get(samples, "lamina_stream_last_batch_id", query=other) is None
    assert not [k for k in samples if k[0].startswith("lamina_stream") and ("query", other) in k[1]]


def test_deadletter_count_grows_by_the_records_produced(
    client: TestClient, metrics_settings: Settings, catalog: ViewCatalog
) -> None:
    source = catalog.sources["pageviews"]
    labels = {"source": source.name, "topic": deadletter_topic(source)}
    before = get(scrape(client), "lamina_deadletter_records", **labels)
    assert before is not None
    produce(metrics_settings, deadletter_topic(source), 6)
    after = get(scrape(client), "lamina_deadletter_records", **labels)
    assert after == before + 6


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A port bound here for the test's duration without listening: connecting to it is
    refused, and no other process can start listening on it meanwhile."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


def test_scrape_with_kafka_down_reports_the_rest(
    metrics_settings: Settings, world: dict[str, Any], tmp_path: Path, refused_port: int
) -> None:
    down = with_checkpoints(metrics_settings, tmp_path).model_copy(
        update={"kafka": metrics_settings.kafka.model_copy(update={"port": refused_port})}
    )
    query = source_query(world["catalog"].view("web_pageviews").source)
    write_status(down, query, speed_status({"pageviews": {"0": 0}}, time.time()))
    with TestClient(create_app(down, world["catalog"]), base_url="http://127.0.0.1") as c:
        started = time.perf_counter()
        samples = scrape(c)
        took = time.perf_counter() - started
    assert took < 10, f"a scrape with Kafka down took {took:.1f}s (Prometheus times out at 10s)"
    assert get(samples, "lamina_up", part="kafka") == 0
    assert get(samples, "lamina_up", part="cassandra") == 1
    assert get(samples, "lamina_up", part="streaming") == 1
    assert get(samples, "lamina_batch_published_version", view="web_pageviews") is not None
    assert get(samples, "lamina_stream_last_batch_id", query=query) == 7
    assert not [
        k for k in samples if k[0] in ("lamina_stream_lag_records", "lamina_deadletter_records")
    ]


def test_collector_with_cassandra_down_reports_the_rest(
    metrics_settings: Settings, world: dict[str, Any]
) -> None:
    with open_store(metrics_settings.cassandra) as store:
        pass  # the session is shut down on exit: every read now fails
    registry = CollectorRegistry()
    registry.register(StateCollector(metrics_settings, world["catalog"], store))
    samples = parse(generate_latest(registry).decode())
    assert get(samples, "lamina_up", part="cassandra") == 0
    assert get(samples, "lamina_up", part="kafka") == 1
    assert not [k for k in samples if k[0].startswith("lamina_batch_")]
    view = world["catalog"].view("web_pageviews")
    staleness = get(samples, "lamina_view_max_staleness_seconds", view=view.name)
    assert staleness == view.max_staleness_s
    labels = {"source": view.source.name, "topic": deadletter_topic(view.source)}
    assert get(samples, "lamina_deadletter_records", **labels) is not None
