"""View definitions: the shipped examples load; every mistake gets a message with the fix."""

from __future__ import annotations

import copy
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from lamina.errors import NotFoundError, ViewDefinitionError
from lamina.views import load_views, parse_views

ROOT = Path(__file__).resolve().parents[2]
DOC = tomllib.loads((ROOT / "conf" / "views.toml").read_text())


def test_examples_load() -> None:
    cat = load_views(ROOT / "conf" / "views.toml")
    assert set(cat.views) == {"web_pageviews", "iot_temperature", "cloud_metering"}
    web = cat.view("web_pageviews")
    assert web.keys == ("url",)
    assert web.bucket.seconds == 3600
    assert web.value_columns == [
        ("pageviews", "bigint"),
        ("visitors", "blob"),
        ("load_ms_mean_sum", "double"),
        ("load_ms_mean_count", "bigint"),
    ]
    assert web.accepts({"status": 200}) and not web.accepts({"status": 404})
    assert not web.accepts({"status": None})  # null never matches


def test_definition_hash_tracks_semantics_only() -> None:
    a = parse_views(DOC).view("cloud_metering")
    doc = copy.deepcopy(DOC)
    doc["views"]["cloud_metering"]["retain_versions"] = 9
    assert parse_views(doc).view("cloud_metering").definition_hash == a.definition_hash
    doc["views"]["cloud_metering"]["bucket"] = "day"
    assert parse_views(doc).view("cloud_metering").definition_hash != a.definition_hash


def _hash(doc: dict[str, Any], view: str = "web_pageviews") -> str:
    return parse_views(doc).view(view).definition_hash


PINNED_HASHES = {
    "cloud_metering": "eb66bd0efded5825",
    "iot_temperature": "56123b4a8e784035",
    "web_pageviews": "71220afee9dfafc6",
}
"""The example views' hashes: batch versions and real-time tables record them, so a change of
the hash function itself would make every deployment rebuild (and answer 503 meanwhile)."""

LEGACY_HASHES = {
    "cloud_metering": "fc02742c294c4a15",
    "iot_temperature": "dcecba433f1365a2",
    "web_pageviews": "8f570cc82ebbfcba",
}
"""The hashes Lamina recorded with batch versions before issue #12 (with the topic): still
accepted as the same definition."""


def test_definition_hash_is_stable_across_processes() -> None:
    import subprocess
    import sys

    code = (
        "from lamina.views import load_views; import sys; "
        "c = load_views(sys.argv[1]); "
        "print(' '.join(c.view(v).definition_hash + ':' + c.view(v).legacy_definition_hash "
        "for v in sorted(c.views)))"
    )
    runs = {
        subprocess.run(
            [sys.executable, "-c", code, str(ROOT / "conf" / "views.toml")],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
        ).stdout
        for seed in ("1", "2", "3")
    }
    assert len(runs) == 1
    hashes = [h.split(":") for h in runs.pop().split()]
    assert dict(zip(sorted(PINNED_HASHES), (h for h, _ in hashes), strict=True)) == PINNED_HASHES
    assert dict(zip(sorted(LEGACY_HASHES), (h for _, h in hashes), strict=True)) == LEGACY_HASHES
    web = parse_views(DOC).view("web_pageviews")
    assert web.built_under(LEGACY_HASHES["web_pageviews"]) and web.built_under("")
    assert not web.built_under(LEGACY_HASHES["cloud_metering"])


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (["views", "web_pageviews", "source"], "metering"),
        (["views", "web_pageviews", "keys"], ["url", "visitor"]),
        (["views", "web_pageviews", "keys"], ["visitor"]),
        (["views", "web_pageviews", "bucket"], "15m"),
        (["views", "web_pageviews", "filter"], [{"field": "status", "op": "<", "value": 500}]),
        (["views", "web_pageviews", "filter"], []),
        (["views", "web_pageviews", "aggregations", "slowest"], {"fn": "max", "field": "load_ms"}),
        (["views", "web_pageviews", "aggregations", "visitors", "lg_k"], 14),
        (["views", "web_pageviews", "aggregations", "pageviews", "field"], "visitor"),
        (["sources", "pageviews", "event_time_format"], "epoch_ms"),
        (["sources", "pageviews", "event_id"], "visitor"),
        (["sources", "pageviews", "fields", "status"], "double"),
    ],
)
def test_definition_hash_changes_with_what_decides_a_cell(path: list[str], value: Any) -> None:
    doc = copy.deepcopy(DOC)
    if path[-1] == "event_time_format":  # epoch_ms needs a numeric time field
        doc["sources"]["pageviews"]["fields"]["ts"] = "long"
    if path == ["views", "web_pageviews", "source"]:
        doc["views"]["web_pageviews"] = {
            "source": "metering",
            "keys": ["customer"],
            "bucket": "hour",
            "aggregations": {"pageviews": {"fn": "count"}},
        }
    node = doc
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    assert _hash(doc) != _hash(DOC)


def test_definition_hash_ignores_order_and_operational_settings() -> None:
    doc = copy.deepcopy(DOC)
    view = doc["views"]["web_pageviews"]
    view["aggregations"] = dict(reversed(view["aggregations"].items()))
    fields = doc["sources"]["pageviews"]["fields"]
    doc["sources"]["pageviews"]["fields"] = dict(reversed(fields.items()))
    view["retain_versions"], view["schedule"], view["max_staleness_s"] = 7, "@daily", 60
    view["bucket"] = "1h"  # the same bucket, spelt otherwise
    doc["sources"]["pageviews"]["topic"] = "pageviews-v2"  # where events come from, not what
    assert _hash(doc) == _hash(DOC)


def test_unknown_view_is_not_found() -> None:
    with pytest.raises(NotFoundError, match="known views: web_pageviews"):
        parse_views(DOC).view("nope")


def mutate(path: list[str], value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(DOC)
    node = doc
    for p in path[:-1]:
        node = node[p]
    if value is None:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return doc


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (
            ["views", "web_pageviews", "keys"],
            ["uri"],
            r"view 'web_pageviews': key field 'uri' is not a field of source 'pageviews'",
        ),
        (
            ["views", "web_pageviews", "bucket"],
            "fortnight",
            r"bad time bucket 'fortnight'.*use minute, hour or day",
        ),
        (
            ["views", "web_pageviews", "aggregations", "pageviews"],
            {"fn": "median"},
            r"aggregation 'pageviews': unknown fn 'median'; use one of count, sum",
        ),
        (
            ["views", "web_pageviews", "aggregations", "pageviews"],
            {"fn": "sum", "field": "url"},
            r"sum needs a numeric field \(long or double\), but 'url' is string",
        ),
        (
            ["views", "web_pageviews", "aggregations", "pageviews"],
            {"fn": "max"},
            r"aggregation 'pageviews': max needs a field",
        ),
        (
            ["views", "web_pageviews", "aggregations", "pageviews"],
            {"fn": "sum", "field": "lod"},
            r"field 'lod' is not a field of source 'pageviews'",
        ),
        (
            ["views", "web_pageviews", "source"],
            "clicks",
            r"unknown source 'clicks'; declared sources: pageviews, sensors, metering",
        ),
        (["views", "web_pageviews", "keys"], [], r"needs at least one key field"),
        (["views", "web_pageviews", "retain_versions"], 0, r"retain_versions"),
        (["views", "web_pageviews", "colour"], "red", r"colour: Extra inputs are not permitted"),
        (
            ["views", "web_pageviews", "filter"],
            [{"field": "stat", "op": "==", "value": 1}],
            r"filter field 'stat'",
        ),
        (
            ["sources", "pageviews", "event_time"],
            "when",
            r"source 'pageviews': event_time field 'when' is not declared in fields",
        ),
        (
            ["sources", "sensors", "event_time_format"],
            "iso8601",
            r"event_time field 'ts_ms' is long, but event_time_format 'iso8601' needs string",
        ),
        (["sources", "pageviews", "fields", "url"], "text", r"source 'pageviews': fields.url"),
    ],
)
def test_mistakes_name_view_field_and_fix(path: list[str], value: Any, message: str) -> None:
    with pytest.raises(ViewDefinitionError, match=message):
        parse_views(mutate(path, value))


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ViewDefinitionError, match="does not exist"):
        load_views(tmp_path / "none.toml")
    bad = tmp_path / "v.toml"
    bad.write_text("[views.x]\nsource = 'nope'\n")
    with pytest.raises(ViewDefinitionError, match=rf"{bad}: view 'x': unknown source 'nope'"):
        load_views(bad)


NOT_CQL_IDENTIFIERS = [
    "Web",
    "1web",
    "_web",
    "web-views",
    "web views",
    "web;drop",
    'w"b',
    "wéb",
    "",
]
NOT_CQL_IDENTIFIERS += ["w" * 41]
CQL_RULE = r"must be lower-case letters, digits and _ \(a CQL identifier\), starting with a letter"


def renamed(section: str, old: str, new: str) -> dict[str, Any]:
    doc = copy.deepcopy(DOC)
    doc[section][new] = doc[section].pop(old)
    if section == "sources":
        for view in doc["views"].values():
            if view["source"] == old:
                view["source"] = new
    return doc


@pytest.mark.parametrize("name", NOT_CQL_IDENTIFIERS)
def test_view_name_must_be_a_cql_identifier(name: str) -> None:
    """View names become Cassandra table names (``b_<view>_v<n>``, ``rt_<view>``)."""
    with pytest.raises(ViewDefinitionError, match=rf"view {re.escape(repr(name))}: .*{CQL_RULE}"):
        parse_views(renamed("views", "web_pageviews", name))


@pytest.mark.parametrize("name", NOT_CQL_IDENTIFIERS)
def test_source_name_must_be_a_cql_identifier(name: str) -> None:
    with pytest.raises(ViewDefinitionError, match=rf"source {re.escape(repr(name))}: .*{CQL_RULE}"):
        parse_views(renamed("sources", "pageviews", name))


@pytest.mark.parametrize("name", ["Url", "url-path", "select *"])
def test_field_and_aggregation_names_must_be_cql_identifiers(name: str) -> None:
    """Key fields and aggregation names become column names."""
    doc = copy.deepcopy(DOC)
    doc["sources"]["pageviews"]["fields"][name] = "string"
    with pytest.raises(ViewDefinitionError, match=rf"source 'pageviews': .*field name.*{CQL_RULE}"):
        parse_views(doc)
    doc = copy.deepcopy(DOC)
    doc["views"]["web_pageviews"]["aggregations"][name] = {"fn": "count"}
    with pytest.raises(
        ViewDefinitionError, match=rf"view 'web_pageviews': aggregation name.*{CQL_RULE}"
    ):
        parse_views(doc)


def test_longest_allowed_names_load() -> None:
    view, source = "v" + "_9" * 19 + "x", "s" * 40
    assert len(view) == 40
    doc = renamed("sources", "pageviews", source)
    doc["views"][view] = doc["views"].pop("web_pageviews")
    cat = parse_views(doc)
    assert cat.view(view).source.name == source


@pytest.mark.parametrize(
    ("key", "aggregations", "message"),
    [
        ("from", {"n": {"fn": "count"}}, r"key field 'from': column 'from' is a CQL reserved"),
        ("url", {"order": {"fn": "count"}}, r"aggregation 'order': column 'order' is a CQL"),
        ("bucket", {"n": {"fn": "count"}}, r"column 'bucket' is already a column every view"),
        ("url", {"applied_batch": {"fn": "count"}}, r"'applied_batch' is already a column"),
        ("url", {"url": {"fn": "count"}}, r"aggregation 'url': column 'url' is already taken"),
        (
            "url",
            {"x": {"fn": "mean", "field": "load_ms"}, "x_sum": {"fn": "sum", "field": "load_ms"}},
            r"aggregation 'x_sum': column 'x_sum' is already taken by aggregation 'x'",
        ),
    ],
)
def test_view_columns_are_distinct_cql_identifiers(
    key: str, aggregations: dict[str, Any], message: str
) -> None:
    """A view's Cassandra columns: no reserved word, no collision (a mean ``x`` stores
    ``x_sum`` and ``x_count``)."""
    doc = copy.deepcopy(DOC)
    doc["sources"]["pageviews"]["fields"].update({"from": "string", "bucket": "string"})
    doc["views"]["web_pageviews"]["keys"] = [key]
    doc["views"]["web_pageviews"]["aggregations"] = aggregations
    with pytest.raises(ViewDefinitionError, match=message):
        parse_views(doc)
    # A field named like a reserved word is fine as long as no view stores it as a column.
    doc["views"]["web_pageviews"]["keys"] = ["url"]
    doc["views"]["web_pageviews"]["aggregations"] = {"n": {"fn": "count", "field": "from"}}
    parse_views(doc)
