"""The pure parts of the metrics: outcome classes, view labels, and the gauges of a snapshot."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path

import pytest
from prometheus_client.metrics_core import Metric

from lamina.settings import Settings
from lamina.streams import QueryStatus
from lamina.views import load_views
from serving.metrics import (
    UNKNOWN_VIEW,
    ServingMetrics,
    Snapshot,
    ViewState,
    deadletter_records,
    families,
    outcome,
    stream_queries,
)
from serving.store import Published

ROOT = Path(__file__).resolve().parents[2]
CATALOG = load_views(ROOT / "conf" / "views.toml")
NOW = 1_795_000_000.0


def samples(snapshot: Snapshot) -> dict[tuple[str, tuple[str, ...]], float]:
    return {
        (s.name, tuple(s.labels.values())): s.value
        for family in families(snapshot, CATALOG)
        for s in family.samples
    }


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (200, "ok"),
        (304, "ok"),
        (400, "client_error"),
        (404, "client_error"),
        (422, "client_error"),
        (500, "server_error"),
        (503, "server_error"),
    ],
)
def test_outcome_of_a_status(status: int, expected: str) -> None:
    assert outcome(status) == expected


def test_unknown_views_share_one_label() -> None:
    m = ServingMetrics(Settings(), CATALOG)
    m.observe("query", "web_pageviews", 200, 0.004)
    m.observe("query", "nope", 404, 0.002)
    m.observe("query", "other-nope", 404, 0.003)
    count = "lamina_query_duration_seconds_count"
    get = m.registry.get_sample_value
    ok = {"endpoint": "query", "view": "web_pageviews", "outcome": "ok"}
    assert get(count, ok) == 1
    assert get(count, {"endpoint": "query", "view": UNKNOWN_VIEW, "outcome": "client_error"}) == 2
    assert get("lamina_query_duration_seconds_bucket", {**ok, "le": "0.005"}) == 1
    assert get("lamina_query_duration_seconds_bucket", {**ok, "le": "0.0025"}) == 0


def test_every_streaming_query_is_watched() -> None:
    queries = stream_queries(CATALOG)
    sources = {v.source.name for v in CATALOG.views.values()}
    assert set(queries) == {f"source-{s}" for s in sources}
    assert queries["source-pageviews"].name == "pageviews"


def test_nothing_read_gives_parts_down_and_only_static_samples() -> None:
    got = samples(Snapshot(NOW))
    assert {k: v for k, v in got.items() if k[0] == "lamina_up"} == {
        ("lamina_up", ("cassandra",)): 0.0,
        ("lamina_up", ("kafka",)): 0.0,
        ("lamina_up", ("streaming",)): 0.0,
    }
    assert {name for name, _ in got} == {"lamina_up", "lamina_view_max_staleness_seconds"}
    assert got[("lamina_view_max_staleness_seconds", ("web_pageviews",))] == (
        CATALOG.view("web_pageviews").max_staleness_s
    )


def test_batch_gauges_of_a_snapshot() -> None:
    pub = Published("web_pageviews", 4, int(NOW) - 600, 10, NOW - 300, "h")
    views = [
        ViewState("web_pageviews", pub, retained=3, building=1),
        ViewState("iot_temperature", None, retained=0, building=0),
    ]
    got = samples(Snapshot(NOW, views=views))
    assert got[("lamina_up", ("cassandra",))] == 1.0
    assert got[("lamina_batch_published_version", ("web_pageviews",))] == 4
    assert got[("lamina_batch_cutoff_age_seconds", ("web_pageviews",))] == 600.0
    assert got[("lamina_batch_retained_versions", ("web_pageviews",))] == 3
    assert got[("lamina_batch_building_versions", ("web_pageviews",))] == 1
    assert got[("lamina_batch_retained_versions", ("iot_temperature",))] == 0
    assert ("lamina_batch_published_version", ("iot_temperature",)) not in got
    assert ("lamina_batch_cutoff_age_seconds", ("iot_temperature",)) not in got


def test_stream_and_deadletter_gauges_of_a_snapshot() -> None:
    streams = [
        QueryStatus(
            query="source-pageviews",
            topic="pageviews",
            batch_id=12,
            last_progress=NOW - 8,
            age_s=8.0,
            input_rows_per_s=40.0,
            processed_rows_per_s=80.0,
            batch_duration_ms=250,
            lag=17,
            epoch_mark_failures=2,
        ),
        QueryStatus(query="source-metering", topic="pageviews", batch_id=3, age_s=2.0),
        QueryStatus(query="source-sensors", topic="sensor-readings"),
    ]
    got = samples(Snapshot(NOW, deadletters={"pageviews": 5}, streams=streams))
    assert got[("lamina_stream_lag_records", ("source-pageviews", "pageviews"))] == 17
    assert got[("lamina_stream_last_batch_duration_seconds", ("source-pageviews",))] == 0.25
    assert got[("lamina_stream_last_batch_id", ("source-pageviews",))] == 12
    assert got[("lamina_stream_input_rows_per_second", ("source-pageviews",))] == 40.0
    assert got[("lamina_stream_processed_rows_per_second", ("source-pageviews",))] == 80.0
    assert got[("lamina_stream_progress_age_seconds", ("source-pageviews",))] == 8.0
    assert got[("lamina_realtime_freshness_seconds", ("web_pageviews",))] == 8.0
    assert got[("lamina_stream_last_batch_id", ("source-metering",))] == 3
    assert got[("lamina_stream_epoch_mark_failures", ("source-pageviews",))] == 2
    assert ("lamina_stream_epoch_mark_failures", ("source-metering",)) not in got
    # Unknown values (no lag, never reported) have no sample rather than a made-up zero.
    assert not [
        k for k in got if k[0] == "lamina_stream_lag_records" and k[1][0] != "source-pageviews"
    ]
    assert not [k for k in got if "source-sensors" in k[1]]
    assert ("lamina_realtime_freshness_seconds", ("iot_temperature",)) not in got
    assert got[("lamina_deadletter_records", ("pageviews", "pageviews.deadletters"))] == 5
    assert got[("lamina_up", ("kafka",))] == 1.0
    assert got[("lamina_up", ("cassandra",))] == 0.0


def test_deadletter_records_count_what_retention_kept() -> None:
    sources = list(CATALOG.sources.values())
    pv = next(s for s in sources if s.name == "pageviews")
    first = {"pageviews.deadletters": {"0": 10, "1": 0}}
    last = {"pageviews.deadletters": {"0": 14, "1": 3}, "pageviews": {"0": 99}}
    counts = deadletter_records(first, last, sources)
    assert counts[pv.name] == 7  # (14 - 10) + (3 - 0): records deleted by retention don't count
    assert all(n == 0 for name, n in counts.items() if name != pv.name)  # no topic yet: 0


OPENMETRICS = "application/openmetrics-text; version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
"""What Prometheus sends when it prefers OpenMetrics."""


class FixedState:
    """Yields the gauges of one snapshot, as the app's state collector does at a scrape."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> list[Metric]:
        return families(self.snapshot, CATALOG)


def full_metrics() -> ServingMetrics:
    m = ServingMetrics(Settings(), CATALOG)
    m.observe("query", "web_pageviews", 200, 0.004)
    m.observe("describe", "nope", 404, 0.002)
    pub = Published("web_pageviews", 4, int(NOW) - 600, 10, NOW - 300, "h")
    streams = [
        QueryStatus(query="source-pageviews", topic="pageviews", batch_id=12, age_s=8.0, lag=17)
    ]
    snapshot = Snapshot(
        NOW,
        views=[ViewState("web_pageviews", pub, retained=3, building=1)],
        deadletters={"pageviews": 5},
        streams=streams,
    )
    m.registry.register(FixedState(snapshot))
    return m


def by_name(parsed: Iterable[Metric]) -> dict[str, Metric]:
    return {f.name: f for f in parsed}


def test_openmetrics_when_the_scraper_asks_for_it() -> None:
    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    response = asyncio.run(full_metrics().render(OPENMETRICS))
    assert response.headers["content-type"].startswith("application/openmetrics-text; version=1")
    body = bytes(response.body).decode()
    assert body.endswith("\n# EOF\n")
    parsed = by_name(text_string_to_metric_families(body))  # strict: raises on bad exposition
    assert parsed["lamina_query_duration_seconds"].type == "histogram"
    latency = {
        (s.name, s.labels.get("view"), s.labels.get("le")): s.value
        for s in parsed["lamina_query_duration_seconds"].samples
    }
    assert latency[("lamina_query_duration_seconds_count", "web_pageviews", None)] == 1
    assert latency[("lamina_query_duration_seconds_bucket", "web_pageviews", "0.005")] == 1
    assert latency[("lamina_query_duration_seconds_bucket", UNKNOWN_VIEW, "+Inf")] == 1

    def gauge(name: str, **labels: str) -> float:
        assert parsed[name].type == "gauge"
        (value,) = [s.value for s in parsed[name].samples if s.labels == labels]
        return value

    assert gauge("lamina_up", part="cassandra") == 1.0
    assert gauge("lamina_batch_published_version", view="web_pageviews") == 4
    assert gauge("lamina_batch_cutoff_age_seconds", view="web_pageviews") == 600.0
    assert (
        gauge("lamina_deadletter_records", source="pageviews", topic="pageviews.deadletters") == 5
    )
    assert gauge("lamina_stream_lag_records", query="source-pageviews", topic="pageviews") == 17
    assert gauge("lamina_realtime_freshness_seconds", view="web_pageviews") == 8.0


@pytest.mark.parametrize("accept", ["", "text/plain", "*/*"])
def test_prometheus_text_by_default(accept: str) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    response = asyncio.run(full_metrics().render(accept))
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    body = bytes(response.body).decode()
    assert "# EOF" not in body
    parsed = by_name(text_string_to_metric_families(body))
    assert parsed["lamina_batch_published_version"].samples[0].value == 4
    assert parsed["lamina_query_duration_seconds"].type == "histogram"


def test_the_endpoint_negotiates_the_format() -> None:
    """``GET /metrics`` passes the scraper's Accept header on (no Cassandra: the app's
    lifespan is not started, so only the latency histogram is exposed)."""
    from fastapi.testclient import TestClient

    from serving.api import create_app

    client = TestClient(create_app(Settings(), CATALOG), base_url="http://127.0.0.1")
    om = client.get("/metrics", headers={"Accept": OPENMETRICS})
    assert om.status_code == 200
    assert om.headers["content-type"].startswith("application/openmetrics-text")
    assert om.text.endswith("# EOF\n")
    text = client.get("/metrics", headers={"Accept": "text/plain"})
    assert text.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert "lamina_query_duration_seconds" in text.text and "# EOF" not in text.text


def test_source_job_counters_are_counters_by_outcome() -> None:
    report = {
        "counters": {"records": 10, "duplicates": 3, "beyond_horizon": 1, "reordered": 0},
        "dedup_index": {"ids": 7, "bytes": 168},
    }
    got = samples(Snapshot(NOW, sources={"pageviews": report}))
    assert got[("lamina_speed_records_total", ("pageviews", "beyond_horizon"))] == 1
    assert got[("lamina_speed_records_total", ("pageviews", "duplicates"))] == 3
    assert got[("lamina_speed_records_total", ("pageviews", "reordered"))] == 0
    assert got[("lamina_speed_dedup_index_ids", ("pageviews",))] == 7
    # No report (the job never ran a micro-batch): no samples, not zeros.
    assert not [k for k in samples(Snapshot(NOW)) if k[0].startswith("lamina_speed_")]


def test_job_restarts_come_from_the_supervisor() -> None:
    report = {"job": "pageviews-1", "restarts": 2, "last_exit": "exit code 1", "gave_up": False}
    got = samples(Snapshot(NOW, supervision={"pageviews": report}))
    assert got[("lamina_speed_job_restarts_total", ("pageviews",))] == 2
    # Not submitted (lamina stream run, or never): no sample.
    assert not [k for k in samples(Snapshot(NOW)) if k[0].startswith("lamina_speed_job_r")]
