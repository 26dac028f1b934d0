"""Event validation: the one set of rules the stream, the import and the tests share."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lamina import events
from lamina.events import Rejection, parse_event, parse_text
from lamina.master import ARROW_TYPES
from lamina.schema import EVENT_TIME, FieldType
from lamina.views import Source, load_views

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


# --- Poison records (issue #12): every record is accepted or rejected with a reason, never
# raises. ---

METER = CAT.sources["metering"]
HEAD = b'{"event_id":"e","ts":"2026-11-27T10:00:00Z",'


def _with(field: str, value: bytes) -> bytes:
    return HEAD + b'"' + field.encode() + b'":' + value + b"}"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        # Deep nesting (the parser's recursion): decided before parsing, at any size.
        (b"[" * 50_000, "not a JSON object but list"),
        (_with("deep", b"[" * 50_000), "not valid JSON: nested more than 1000 levels deep"),
        (b'{"a":' * 50_000, "not valid JSON: nested more than 1000 levels deep"),
        (_with("deep", b"[" * 1000 + b"]" * 1000), "nested more than 1000 levels deep"),
        # Huge numbers: beyond the double range, beyond 64 bits, beyond 1000 digits.
        (_with("load_ms", b"1" + b"0" * 400), "field 'load_ms' is not a finite number: inf"),
        (_with("load_ms", b"-1" + b"0" * 400), "field 'load_ms' is not a finite number: -inf"),
        (_with("load_ms", b"-1e400"), "field 'load_ms' is not a finite number: -inf"),
        (_with("load_ms", b"1" + b"0" * 400 + b".5"), "is not a finite number: inf"),
        (_with("status", b"1" + b"0" * 400), "field 'status' does not fit a 64-bit long"),
        (_with("status", b"-1" + b"0" * 400), "field 'status' does not fit a 64-bit long"),
        (_with("status", b"9223372036854775808"), "field 'status' does not fit a 64-bit long"),
        (_with("status", b"-9223372036854775809"), "field 'status' does not fit a 64-bit long"),
        (_with("status", b"1" * 1001), "not valid JSON: a number of more than 1000 digits"),
        (_with("other", b"-" + b"1" * 1001), "not valid JSON: a number of more than 1000 digits"),
        # Jackson (the streams' parser) counts every digit of a number, fraction and exponent
        # too: the reference must reject what the streams reject.
        (_with("load_ms", b"1." + b"0" * 1000), "a number of more than 1000 digits"),
        (_with("load_ms", b"1e-" + b"0" * 1000), "a number of more than 1000 digits"),
        (_with("other", b"1" * 500 + b"." + b"1" * 300 + b"e" + b"1" * 201), "1000 digits"),
        # Lone surrogates (text that has no UTF-8 encoding), in a used field or anywhere.
        (_with("url", b'"\\ud800"'), "not valid JSON: a lone surrogate escape"),
        (_with("url", b'"a\\udfff\\ud800"'), "not valid JSON: a lone surrogate escape"),
        (_with("other", b'["\\udc00"]'), "not valid JSON: a lone surrogate escape"),
        (_with("\\ud800", b"1"), "not valid JSON: a lone surrogate escape"),
        # Bytes that are not UTF-8 (a CESU-8 surrogate, a stray byte, a truncated sequence).
        (_with("url", b'"\xed\xa0\x80"'), "not valid JSON: not valid UTF-8"),
        (_with("url", b'"\xff"'), "not valid JSON: not valid UTF-8"),
        (HEAD[:-1] + b"}\xc3", "not valid JSON: not valid UTF-8"),
        # Non-finite number tokens are not JSON, in whatever field.
        (_with("load_ms", b"NaN"), "not valid JSON: NaN is not JSON"),
        (_with("load_ms", b"Infinity"), "not valid JSON: Infinity is not JSON"),
        (_with("load_ms", b"-Infinity"), "not valid JSON: -Infinity is not JSON"),
        (_with("status", b"NaN"), "not valid JSON: NaN is not JSON"),
        (_with("load_ms", b"nan"), "not valid JSON"),
        (_with("load_ms", b'"NaN"'), "field 'load_ms' should be double, got str 'NaN'"),
    ],
)
def test_poison_records_are_rejected_with_a_reason(raw: bytes, reason: str) -> None:
    r = parse_event(raw, PV)
    assert isinstance(r, Rejection), r
    assert reason in r.reason, r.reason
    # Text in, the same decision (the reference also takes decoded text).
    if b"\xed" not in raw and b"\xff" not in raw and b"\xc3" not in raw:
        assert parse_event(raw.decode(), PV) == r


@pytest.mark.parametrize(
    "raw",
    [
        # Anything after the object is ignored (as by Jackson), however deep it would nest.
        HEAD[:-1] + b"}" + b"[" * 50_000,
        HEAD[:-1] + b"}\n" + b'{"a":' * 5000,
        HEAD[:-1] + b"} x" + b"]" * 3000 + b"[" * 3000,
        # 1000 levels (the root object and 999 arrays) is the limit, not over it.
        _with("deep", b"[" * 999 + b"]" * 999),
        # 1000 digits is the limit, not over it; a valid surrogate pair is one character.
        _with("other", b"1" * 1000),
        _with("load_ms", b"1." + b"0" * 999),
        _with("url", b'"\\ud83d\\ude00"'),
        _with("status", b"-9223372036854775808"),
    ],
)
def test_records_at_the_limits_are_accepted(raw: bytes) -> None:
    ev = parse_event(raw, PV)
    assert not isinstance(ev, Rejection), ev
    assert ev[EVENT_TIME] == 1_795_773_600.0


@pytest.mark.parametrize(
    "ts",
    ["2026-11-27T10:00:00Z\n", "2026-11-27\n", "2026-11-27T10:00\n", "2026-11-27T10:00:00Z\r"],
)
def test_event_time_text_ends_where_the_grammar_ends(ts: str) -> None:
    """``$`` in a Python regex also matches before a final newline: the grammar does not."""
    r = parse_event(json.dumps({**GOOD, "ts": ts}), PV)
    assert isinstance(r, Rejection) and "is not ISO-8601" in r.reason, r


def test_lone_surrogates_in_decoded_rows_are_rejected() -> None:
    """Rows arrive decoded from CSV and Parquet: text with a lone surrogate (CSV bytes that
    were not UTF-8, decoded with ``surrogateescape``) has no UTF-8 encoding, so the master
    dataset could not store it; the row is rejected, as a JSON record with one is."""
    r = parse_event({**GOOD, "url": "/a\ud800"}, PV)
    assert isinstance(r, Rejection) and r.reason.startswith("field 'url' is not valid UTF-8"), r
    r = parse_event({**GOOD, "event_id": "e\udcff"}, PV, coerce=True)
    assert isinstance(r, Rejection) and r.reason.startswith("field 'event_id' is not valid"), r
    r = parse_event({**GOOD, "unused": "\udcff"}, PV, coerce=True)
    assert isinstance(r, Rejection) and "'unused' is not valid UTF-8" in r.reason, r
    r = parse_event({**GOOD, "\udcff": "x"}, PV, coerce=True)
    assert isinstance(r, Rejection) and "not valid UTF-8" in r.reason, r
    r = parse_event({**GOOD, "unused": {"a": ["\ud800"]}}, PV)  # nested (a Parquet struct)
    assert isinstance(r, Rejection) and "not valid UTF-8" in r.reason, r


def test_huge_values_in_decoded_rows_are_rejected() -> None:
    r = parse_event({**GOOD, "status": 10**5000}, PV)
    assert isinstance(r, Rejection) and "field 'status' does not fit a 64-bit long" in r.reason
    assert len(r.reason) < 300  # the value is shown abbreviated
    r = parse_event({**GOOD, "load_ms": -(10**400)}, PV)
    assert isinstance(r, Rejection) and r.reason == "field 'load_ms' is not a finite number: -inf"
    r = parse_event({**GOOD, "load_ms": float("nan")}, PV)
    assert isinstance(r, Rejection) and r.reason == "field 'load_ms' is not a finite number: nan"


def _depth_now() -> int:
    frame, n = sys._getframe(), 0
    while frame is not None:
        frame, n = frame.f_back, n + 1
    return n


def _at_depth(n: int, f: Callable[[], object]) -> object:
    return f() if n <= 0 else _at_depth(n - 1, f)


def test_a_deep_call_stack_does_not_decide_a_record() -> None:
    """A record nested 150 levels is valid whether the caller's stack is shallow or nearly
    at the recursion limit (the decoder recurses once per level)."""
    raw = _with("deep", b"[" * 150 + b"]" * 150)
    limit = sys.getrecursionlimit()
    got = _at_depth(limit - _depth_now() - 40, lambda: parse_event(raw, PV))
    assert not isinstance(got, Rejection), got
    assert sys.getrecursionlimit() == limit


def test_an_unexpected_error_is_a_rejection_not_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    class Exploding(dict[str, Any]):
        def get(self, *_: Any) -> Any:
            raise RuntimeError("boom")

    assert parse_event(Exploding(GOOD), PV) == Rejection("could not be parsed: RuntimeError")

    def fail(_: str) -> Any:
        raise MemoryError

    monkeypatch.setattr(events, "_decode", fail)
    assert parse_event(json.dumps(GOOD), PV) == Rejection("could not be parsed: MemoryError")


# --- Text formats (CSV): one rule with JSON for numbers. ---


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("nan", "nan"),
        ("NaN", "nan"),
        ("-nan", "nan"),
        ("inf", "inf"),
        ("-inf", "-inf"),
        ("Infinity", "inf"),
        ("-Infinity", "-inf"),
        ("1e400", "inf"),
        ("-1" + "0" * 400, "-inf"),
    ],
)
def test_csv_doubles_must_be_finite_as_in_json(text: str, shown: str) -> None:
    row = {**{k: str(v) for k, v in GOOD.items()}, "load_ms": text}
    r = parse_event(row, PV, coerce=True)
    assert r == Rejection(f"field 'load_ms' is not a finite number: {shown}")
    with pytest.raises(ValueError, match="not a finite number"):
        parse_text("load_ms", "double", text)
    # An epoch-seconds event time (a double) by the same rule, before its range.
    r = parse_event({"usage_id": "u", "ts": text}, METER, coerce=True)
    assert r == Rejection(f"field 'ts' is not a finite number: {shown}")


def test_csv_longs_must_fit_64_bits_as_in_json() -> None:
    row = {**{k: str(v) for k, v in GOOD.items()}, "status": str(2**63)}
    r = parse_event(row, PV, coerce=True)
    assert isinstance(r, Rejection) and "field 'status' does not fit a 64-bit long" in r.reason
    r = parse_event({**row, "status": str(-(2**63) - 1)}, PV, coerce=True)
    assert isinstance(r, Rejection) and "does not fit a 64-bit long" in r.reason
    r = parse_event({**row, "status": "9" * 5000}, PV, coerce=True)  # beyond int()'s limit
    assert isinstance(r, Rejection) and "field 'status'" in r.reason and len(r.reason) < 300
    ev = parse_event({**row, "status": str(-(2**63))}, PV, coerce=True)
    assert not isinstance(ev, Rejection) and ev["status"] == -(2**63)
    with pytest.raises(ValueError, match="does not fit a 64-bit long"):
        parse_text("status", "long", str(2**63))


# --- Properties: whatever the input, a decision (never an exception). ---

_TOKENS = [
    "{", "}", "[", "]", ":", ",", '"', "\\", " ", "\n", "\t", "\x00", "\x7f",
    '"event_id"', '"ts"', '"url"', '"status"', '"load_ms"', '"x"', '"2026-11-27T10:00:00Z"',
    "0", "1", "-", ".", "e", "E", "+", "1e400", "-1e400", "9" * 30, "1" * 1001, "0." + "0" * 999,
    "NaN", "Infinity", "-Infinity", "nan", "inf", "true", "false", "null", "tru",
    "\\ud800", "\\udc00", "\\ud83d\\ude00", "\\u0000", "\\x", "\ud800", "\udcff", "é", "\U0001f600",
]  # fmt: skip

jsonish = st.builds(
    lambda pre, body, post: pre + body + post,
    st.sampled_from(["", "{", '{"event_id":"e","ts":"2026-11-27T10:00:00Z","d":'])
    | st.integers(0, 3000).map(lambda n: "[" * n)
    | st.integers(0, 1500).map(lambda n: '{"a":' * n),
    st.lists(st.sampled_from(_TOKENS), max_size=40).map("".join),
    st.sampled_from(["", "}", "]" * 1200, "[" * 1200, "\n", "\ud800"]),
)


def _decided(raw: Any, source: Source, coerce: bool = False) -> None:
    out = parse_event(raw, source, coerce=coerce)
    if isinstance(out, Rejection):
        assert out.reason and isinstance(out.reason, str)
        # The catch-all is a backstop: no input known to the rules should need it.
        assert not out.reason.startswith("could not be parsed"), (raw, out)
        out.reason.encode("utf-8")  # a reason can always be written out
        return
    assert isinstance(out, dict) and set(out) == {*source.fields, EVENT_TIME}
    # What is accepted can be stored: the master dataset's columns take every value.
    for name, ftype in source.fields.items():
        pa.array([out[name]], type=ARROW_TYPES[FieldType(ftype)])
        assert ftype != "double" or out[name] is None or math.isfinite(out[name])
    assert math.isfinite(out[EVENT_TIME])


_PROPERTY = settings(max_examples=300, deadline=None, database=None, derandomize=True)


@_PROPERTY
@given(st.binary(max_size=200))
def test_any_bytes_are_accepted_or_rejected(raw: bytes) -> None:
    for source in (PV, SENS, METER):
        _decided(raw, source)


@_PROPERTY
@given(jsonish, st.booleans())
def test_any_json_like_text_is_accepted_or_rejected(text: str, as_bytes: bool) -> None:
    raw: bytes | str = text.encode("utf-8", "surrogatepass") if as_bytes else text
    for source in (PV, SENS, METER):
        _decided(raw, source)


_ANY_TEXT = st.text(
    st.characters(codec=None, categories=None) | st.sampled_from(["\ud800", "\udcff"]),
    max_size=12,
)
_EDGES = [math.nan, math.inf, -math.inf, 2**63, -(2**63) - 1, 10**400, -(10**400), "\ud800"]
_ANY_VALUE = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | _ANY_TEXT
    | st.sampled_from([*_EDGES, *map(str, _EDGES), "Infinity", "-Infinity", "NaN", "1e400"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_ANY_TEXT, inner, max_size=3),
    max_leaves=6,
)


_VALID_ROWS: list[tuple[Source, dict[str, Any]]] = [
    (PV, GOOD),
    (SENS, {"reading_id": "r", "ts_ms": 1_795_773_600_000, "sensor": "s", "temperature": 1.5}),
    (METER, {"usage_id": "u", "ts": 1_795_773_600.0, "instance_seconds": 60}),
]


@_PROPERTY
@given(
    st.dictionaries(
        st.sampled_from(sorted({f for s, _ in _VALID_ROWS for f in s.fields})) | _ANY_TEXT,
        _ANY_VALUE,
        max_size=3,
    ),
)
def test_any_decoded_row_is_accepted_or_rejected(changes: dict[str, Any]) -> None:
    """A valid row with a few values replaced by anything: as decoded (Parquet) and as
    text (CSV gives every value as a string)."""
    for source, valid in _VALID_ROWS:
        row = {**valid, **changes}
        _decided(row, source)
        _decided({k: v if v is None else str(v) for k, v in row.items()}, source, coerce=True)


def _rejected(**changes: Any) -> str:
    raw = json.dumps({**GOOD, **changes}) if changes else "{"
    out = parse_event(raw, PV)
    assert isinstance(out, Rejection), out
    return out.reason


def test_a_reason_kind_drops_the_value_and_keeps_the_problem() -> None:
    """Dead-letter summaries count rejections by kind: the same problem with other values
    is one kind; a different field or type is another."""
    kind = events.reason_kind
    assert kind(_rejected(load_ms="abc")) == kind(_rejected(load_ms="x y: z"))
    assert kind(_rejected(load_ms="abc")) == "field 'load_ms' should be double, got str"
    assert kind(_rejected(load_ms=True)) == "field 'load_ms' should be double, got bool"
    assert kind(_rejected(status=2**70)) == "field 'status' does not fit a 64-bit long"
    assert kind(_rejected(ts="yesterday")) == kind(_rejected(ts="2026-13-45"))
    assert (
        kind(_rejected(ts="3026-01-01T00:00:00Z")) == "event time (iso8601) is outside 1970..2200"
    )
    assert kind(_rejected()) == kind("not valid JSON: a duplicate key") == "not valid JSON"
    assert kind(_rejected(event_id=None)) == "missing field 'event_id'"
    assert kind("could not be parsed: RecursionError") == "could not be parsed: RecursionError"
