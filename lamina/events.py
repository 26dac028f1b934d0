"""Parsing and validating one raw event against its source: the rules every path shares.

``master import`` and the tests' ground truth call :func:`parse_event`; the streams run the
same rules as Spark expressions (:mod:`engine.kafka`), checked against this reference by a
property test (``tests/spark/test_parser_parity.py``). The rules:

- a record is UTF-8 text holding one JSON value (RFC 8259: no ``NaN``/``Infinity``, no
  duplicate keys at any depth, no lone surrogate escapes, at most :data:`MAX_DEPTH` levels of
  nesting, numbers of at most :data:`MAX_NUMBER_DIGITS` digits); leading JSON whitespace is
  skipped and anything after the value is ignored (as Jackson, the engines' parser, does);
- the value is an object (decided by its first character, before parsing); each declared
  field, when present and not null, has its declared type (``long``: a JSON integer in 64
  bits; ``double``: any finite JSON number; ``string``, ``boolean``: the JSON type); the
  event id and time are present;
- the event time is ``iso8601`` text in the grammar of :data:`ISO_8601` (a naive time is UTC),
  or a number of seconds / milliseconds (``epoch_s`` / ``epoch_ms``), within 1970..2200.

Rows that arrive decoded (CSV, Parquet) follow the same rules: no text with a lone surrogate
anywhere (it has no UTF-8 encoding: CSV bytes that are not UTF-8 arrive so), and text cells
of a CSV are read as their declared type and then checked like JSON values (a ``nan`` or
``inf`` cell is not a finite number, a long must fit 64 bits).

Whatever its bytes, a record is either accepted or rejected with a reason: the validator
never raises (an unexpected error is the rejection ``could not be parsed: <ExceptionType>``),
so no record can stop an import.
"""

from __future__ import annotations

import json
import logging
import math
import re
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from lamina.schema import EVENT_TIME, FieldType
from lamina.views import Source

# Event times outside [1970, 2200) are treated as unusable (mistaken units, garbage).
MIN_EVENT_TIME, MAX_EVENT_TIME = 0.0, 7_258_118_400.0

MAX_DEPTH = 1000
"""Deepest nesting of objects and arrays a record may have (Jackson's default limit)."""
MAX_NUMBER_DIGITS = 1000
"""Most digits in a JSON number, integer, fraction and exponent together (Jackson's default
number-length limit, which counts them so)."""
MAX_KEY_LENGTH = 50_000
"""Longest object key, in characters (Jackson's default name-length limit)."""

ISO_8601 = (
    r"^([0-9]{4})-([0-9]{2})-([0-9]{2})"
    r"(?:[Tt ]([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:[.,]([0-9]{1,9}))?)?"
    r"(?:([Zz])|([+-])([0-9]{2})(?::?([0-9]{2}))?)?)?$"
)
"""Accepted ``iso8601`` event times: ``YYYY-MM-DD``, optionally followed by ``T`` (or ``t`` or
a space) and ``HH:MM[:SS[.fraction]]`` (1-9 fraction digits, ``.`` or ``,``; truncated to
microseconds) and an offset ``Z``, ``+HH``, ``+HH:MM`` or ``+HHMM`` of at most 18 hours
(none: UTC). The whole text must match (``$`` alone would also allow a final newline); the
Spark parser checks text against the same expression, anchored at the very end."""
_ISO = re.compile(ISO_8601)
_JSON_WS = " \t\n\r"
_SHALLOW = 200
"""Records with at most this many brackets cannot nest deep enough to hit the default
recursion limit (1000) from any reasonable call depth."""
_SURROGATE = re.compile("[\ud800-\udfff]")
_SHOWN = 120
"""Longest value repeated in a reason (a 1000-digit number is not worth repeating whole)."""
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rejection:
    """Why an event was not accepted; it goes to the dead letters with this reason."""

    reason: str


def _show(value: Any) -> str:
    """``repr(value)`` for a reason, abbreviated to :data:`_SHOWN` characters."""
    try:
        text = repr(value)
    except (ValueError, RecursionError):  # an int beyond repr's digits, a cyclic/deep row
        text = f"<{type(value).__name__}>"
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


def _from_text(ftype: str, text: str) -> Any:
    """A text cell as ``ftype``'s Python type, or ``None`` if it does not read as one."""
    try:
        if ftype == "long":
            return int(text)
        if ftype == "double":
            return float(text)
    except ValueError:  # not a number (or an integer beyond int()'s 4300 digits)
        return None
    if ftype == "boolean" and text.lower() in ("true", "false"):
        return text.lower() == "true"
    return None


def _typed(field: str, ftype: str, value: Any, coerce: bool) -> Any:
    """``value`` as ``ftype`` or raise ValueError with the reason. ``None`` stays ``None``.

    With ``coerce``, a string is a text cell (CSV): ``""`` is ``None``, other text is read
    as ``ftype`` and then checked like a JSON value (so ``nan``, ``inf`` and numbers beyond
    64 bits are rejected by the same rules and with the same reasons).
    """
    if value is None or (coerce and value == ""):
        return None
    if ftype == FieldType.STRING:
        if isinstance(value, str):
            return value
    elif coerce and isinstance(value, str):
        typed = _from_text(ftype, value)
        if typed is None:
            raise ValueError(f"field {field!r} should be {ftype}, got {_show(value)}")
        value = typed
    if ftype == FieldType.LONG:
        if isinstance(value, int) and not isinstance(value, bool):
            if not -(2**63) <= value < 2**63:
                raise ValueError(f"field {field!r} does not fit a 64-bit long: {_show(value)}")
            return value
    elif ftype == FieldType.DOUBLE:
        if isinstance(value, int | float) and not isinstance(value, bool):
            try:
                value = float(value)
            except OverflowError:  # an integer beyond the double range
                value = math.inf if value > 0 else -math.inf
            if not math.isfinite(value):
                raise ValueError(f"field {field!r} is not a finite number: {value!r}")
            return value
    elif ftype == FieldType.BOOLEAN and isinstance(value, bool):
        return value
    got = f"{type(value).__name__} {_show(value)}"
    raise ValueError(f"field {field!r} should be {ftype}, got {got}")


def parse_text(field: str, ftype: str, text: str) -> Any:
    """``text`` from a text format (a CSV cell, a query key) as ``ftype``, by the same rule as
    imports (``nan``/``inf`` and longs beyond 64 bits are refused); ``""`` is ``None``.
    Raises ``ValueError`` with the reason."""
    return _typed(field, ftype, text, coerce=True)


def event_time_seconds(value: Any, fmt: str) -> float:
    """Event time as float seconds since the epoch (UTC); raise ValueError if unusable."""
    if fmt == "iso8601":
        if not isinstance(value, str):
            raise ValueError(f"event time {value!r} is not an ISO-8601 string")
        seconds = _iso_seconds(value)
    else:
        seconds = float(value) / (1000.0 if fmt == "epoch_ms" else 1.0)
    if not math.isfinite(seconds) or not MIN_EVENT_TIME <= seconds < MAX_EVENT_TIME:
        raise ValueError(f"event time {value!r} ({fmt}) is outside 1970..2200")
    return seconds


def _iso_seconds(text: str) -> float:
    m = _ISO.fullmatch(text)
    try:
        if m is None:
            raise ValueError
        y, mo, d, h, mi, sec, frac, _zulu, sign, oh, om = m.groups()
        tz = UTC
        if sign:
            if int(om or 0) > 59 or int(oh) * 60 + int(om or 0) > 18 * 60:
                raise ValueError
            offset = timedelta(hours=int(oh), minutes=int(om or 0))
            tz = timezone(offset if sign == "+" else -offset)
        micros = int((frac or "").ljust(6, "0")[:6])
        dt = datetime(int(y), int(mo), int(d), int(h or 0), int(mi or 0), int(sec or 0), micros, tz)
    except ValueError:
        raise ValueError(f"event time {_show(text)} is not ISO-8601") from None
    return dt.timestamp()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _int(text: str) -> int:
    if len(text) > MAX_NUMBER_DIGITS and len(text.lstrip("-")) > MAX_NUMBER_DIGITS:
        raise ValueError(f"a number of more than {MAX_NUMBER_DIGITS} digits")
    return int(text)


def _float(text: str) -> float:
    """A JSON number with a fraction or an exponent; beyond the double range it is ``inf``
    (rejected where a double is declared). Its digits count against the limit as in Jackson:
    integer part, fraction and exponent together (no sign, point or ``e``)."""
    if len(text) > MAX_NUMBER_DIGITS and sum(map(str.isdigit, text)) > MAX_NUMBER_DIGITS:
        raise ValueError(f"a number of more than {MAX_NUMBER_DIGITS} digits")
    return float(text)


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("a duplicate key")
    if any(len(k) > MAX_KEY_LENGTH for k in out):
        raise ValueError(f"a key of more than {MAX_KEY_LENGTH} characters")
    return out


_DECODER = json.JSONDecoder(
    parse_int=_int, parse_float=_float, parse_constant=_reject_constant, object_pairs_hook=_object
)


def _depth(text: str) -> int:
    """Deepest nesting of the JSON value ``text`` starts with (brackets inside strings do not
    count, nor anything after the value: it is ignored)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
            if depth <= 0:
                break
    return deepest


def _lone_surrogate(obj: Any) -> bool:
    """Whether any text in ``obj`` (nested dicts, their keys, lists, tuples) holds a lone
    surrogate: a code point that is not Unicode text and has no UTF-8 encoding. Iterative:
    no recursion however deep ``obj`` nests."""
    stack = [obj]
    while stack:
        x = stack.pop()
        if isinstance(x, str):
            if _SURROGATE.search(x):
                return True
        elif isinstance(x, dict):
            stack.extend(x.keys())
            stack.extend(x.values())
        elif isinstance(x, list | tuple):
            stack.extend(x)
    return False


def _not_text(row: dict[Any, Any]) -> str | None:
    """Why a decoded row holds text that is not Unicode (``None`` if it holds none)."""
    for key, value in row.items():
        if isinstance(key, str) and _SURROGATE.search(key):
            return "a field name is not valid UTF-8 text (a lone surrogate)"
        if (
            _SURROGATE.search(value)
            if isinstance(value, str)
            else isinstance(value, dict | list | tuple) and _lone_surrogate(value)
        ):
            return f"field {_show(key)} is not valid UTF-8 text (a lone surrogate)"
    return None


ROOT_KINDS = {"[": "list", '"': "str", "t": "bool", "f": "bool", "n": "null"}
"""What a record that does not start with ``{`` holds, by its first character (digits and
``-``: a number); any other first character is not JSON. Both parsers decide "not an object"
from the first character alone, before parsing."""


def _json_text(raw: bytes | str) -> str:
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"not valid UTF-8: {e.reason} at byte {e.start}") from None
    return raw.lstrip(_JSON_WS)


def _decode_with_headroom(text: str) -> Any:
    """``_DECODER.raw_decode(text)``'s value, with room for :data:`MAX_DEPTH` levels: the C
    scanner counts nesting against the (process-wide) recursion limit, so it is raised above
    the current depth for the call (only for records that could need it)."""
    limit = sys.getrecursionlimit()
    try:
        sys.setrecursionlimit(limit + MAX_DEPTH + 100)
        value, _ = _DECODER.raw_decode(text)
    finally:
        sys.setrecursionlimit(limit)
    return value


def _decode(text: str) -> Any:
    """The JSON value at the start of ``text`` (from :func:`_json_text`), by the rules of the
    module docstring; raises ``ValueError`` with the reason."""
    brackets = text.count("[") + text.count("{")
    if brackets > MAX_DEPTH and _depth(text) > MAX_DEPTH:
        raise ValueError(f"nested more than {MAX_DEPTH} levels deep")
    if brackets > _SHALLOW:
        value = _decode_with_headroom(text)
    else:
        try:
            value, _ = _DECODER.raw_decode(text)
        except RecursionError:  # the caller's stack is deep: decide by the record alone
            value = _decode_with_headroom(text)
    if _lone_surrogate(value):
        raise ValueError("a lone surrogate escape (not Unicode text)")
    return value


_KINDS = [
    (re.compile(r"^(not valid JSON)(?:: .*)?$", re.S), r"\1"),
    (re.compile(r"^(field '.*' should be \w+, got \w+)\b.*$", re.S), r"\1"),
    (
        re.compile(
            r"^(field '.*' (?:does not fit a 64-bit long|is not a finite number)): .*$", re.S
        ),
        r"\1",
    ),
    (re.compile(r"^event time .* (\([^()]*\) is outside .*)$", re.S), r"event time \1"),
    (re.compile(r"^event time .* (is not (?:an )?ISO-8601(?: string)?)$", re.S), r"event time \1"),
    (re.compile(r"^(.*) at byte \d+$", re.S), r"\1"),
]


def reason_kind(reason: str) -> str:
    """The kind of problem a rejection reason names, without the value that caused it:
    ``field 'load_ms' should be double, got str 'abc'`` and ``... got str 'x'`` are one kind,
    ``field 'load_ms' should be double, got str``; reasons that name no value are their own
    kind. Dead-letter summaries count by kind and show the full reasons as examples."""
    for pattern, repl in _KINDS:
        kind, n = pattern.subn(repl, reason)
        if n:
            return kind
    return reason


def parse_event(
    raw: bytes | str | dict[str, Any], source: Source, *, coerce: bool = False
) -> dict[str, Any] | Rejection:
    """Parse one event of ``source``; never raises, whatever ``raw`` holds.

    ``raw`` is JSON text/bytes (Kafka, JSON lines) or an already decoded row (CSV, Parquet;
    with ``coerce=True`` string values are converted to the declared types). Returns the
    declared fields (absent ones as ``None``) plus :data:`EVENT_TIME`, or a
    :class:`Rejection` saying why: not JSON (incl. not UTF-8, too deep, a number too long,
    ``NaN``), not an object, text that is not Unicode, a missing event id or time, a value
    of the wrong type (a double that is not finite, a long beyond 64 bits), or an unusable
    event time; any other error is ``could not be parsed: <ExceptionType>``. Unknown fields
    are ignored, except that they too must be Unicode text. What is accepted can be stored
    in the master dataset's columns.
    """
    try:
        return _parse_event(raw, source, coerce)
    except Exception as e:  # the contract: one record never stops ingestion
        log.debug("event of %s could not be parsed", source.name, exc_info=True)
        return Rejection(f"could not be parsed: {type(e).__name__}")


def _parse_event(
    raw: bytes | str | dict[str, Any], source: Source, coerce: bool
) -> dict[str, Any] | Rejection:
    """:func:`parse_event`, which turns any exception of this into a rejection."""
    if isinstance(raw, bytes | str):
        try:
            text = _json_text(raw)
            if not text:
                return Rejection("not valid JSON: an empty record")
            if text[0] != "{":
                kind = ROOT_KINDS.get(text[0], "number" if text[0] in "-0123456789" else "")
                return Rejection(f"not a JSON object but {kind}" if kind else "not valid JSON")
            obj = _decode(text)
        except ValueError as e:
            return Rejection(f"not valid JSON: {e}")
    else:
        obj = raw
    if not isinstance(obj, dict):
        return Rejection(f"not a JSON object but {type(obj).__name__}")
    if raw is obj and (bad := _not_text(obj)) is not None:
        return Rejection(bad)
    out: dict[str, Any] = {}
    try:
        for field, ftype in source.fields.items():
            out[field] = _typed(field, ftype, obj.get(field), coerce)
        for role in (source.event_id, source.event_time):
            if out[role] is None:
                return Rejection(f"missing field {role!r}")
        out[EVENT_TIME] = event_time_seconds(out[source.event_time], source.event_time_format)
    except ValueError as e:
        return Rejection(str(e))
    return out
