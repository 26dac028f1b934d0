"""Event validation: the one set of rules the stream, the import and the tests share."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lamina.events import Rejection, parse_event
from lamina.schema import EVENT_TIME
from lamina.views import load_views

ROOT = Path(__file__).resolve().parents[2]
CAT = load_views(ROOT / "conf" / "views.toml")
PV, SENS = CAT.sources["pageviews"], CAT.sources["sensors"]
GOOD = {
    "event_id": "e1",
    "ts": "2026-11-27T10:00:00Z",
    "url": "/a",
    "visitor": "v",
    "status": 200,
    "load_ms": 12,
}


def test_good_event_is_typed() -> None:
    ev = parse_event(json.dumps(GOOD).encode(), PV)
    assert not isinstance(ev, Rejection)
    assert ev["load_ms"] == 12.0 and isinstance(ev["load_ms"], float)
    assert ev[EVENT_TIME] == 1_795_773_600.0


def test_offsets_and_naive_times() -> None:
    a = parse_event({**GOOD, "ts": "2026-11-27T11:00:00+01:00"}, PV)
    b = parse_event({**GOOD, "ts": "2026-11-27T10:00:00"}, PV)  # naive = UTC
    assert not isinstance(a, Rejection) and not isinstance(b, Rejection)
    assert a[EVENT_TIME] == b[EVENT_TIME] == 1_795_773_600.0


def test_missing_optional_fields_are_null_extra_fields_ignored() -> None:
    ev = parse_event({"event_id": "e", "ts": "2026-11-27T10:00:00Z", "other": 1}, PV)
    assert not isinstance(ev, Rejection)
    assert ev["url"] is None and "other" not in ev


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[1]", "not a JSON object but list"),
        (json.dumps({**GOOD, "event_id": None}), "missing field 'event_id'"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "ts"}), "missing field 'ts'"),
        (json.dumps({**GOOD, "status": "ok"}), "field 'status' should be long, got str 'ok'"),
        (json.dumps({**GOOD, "status": 2.5}), "field 'status' should be long"),
        (json.dumps({**GOOD, "status": True}), "field 'status' should be long"),
        (json.dumps({**GOOD, "url": 5}), "field 'url' should be string"),
        (json.dumps({**GOOD, "ts": "yesterday"}), "event time 'yesterday' is not ISO-8601"),
        (json.dumps({**GOOD, "ts": "1850-01-01T00:00:00Z"}), "outside 1970..2200"),
    ],
)
def test_rejections_say_why(raw: bytes | str, reason: str) -> None:
    r = parse_event(raw, PV)
    assert isinstance(r, Rejection)
    assert reason in r.reason


def test_epoch_millis_and_units() -> None:
    ev = parse_event({"reading_id": "r", "ts_ms": 1_795_773_600_000, "sensor": "s"}, SENS)
    assert not isinstance(ev, Rejection) and ev[EVENT_TIME] == 1_795_773_600.0
    # Seconds sent where millis are expected land in 1970: accepted, it is a valid instant.
    bad = parse_event({"reading_id": "r", "ts_ms": 1e30, "sensor": "s"}, SENS)
    assert isinstance(bad, Rejection)


def test_csv_values_are_coerced() -> None:
    row = {
        "event_id": "e",
        "ts": "2026-11-27T10:00:00Z",
        "url": "/a",
        "visitor": "",
        "status": "404",
        "load_ms": "1.5",
    }
    ev = parse_event(row, PV, coerce=True)
    assert not isinstance(ev, Rejection)
    assert (ev["status"], ev["load_ms"], ev["visitor"]) == (404, 1.5, None)
    r = parse_event({**row, "status": "x"}, PV, coerce=True)
    assert isinstance(r, Rejection) and "should be long" in r.reason
