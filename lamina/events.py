"""Parsing and validating one raw event against its source: the rules every path shares.

The speed layer, the archiver, ``master import`` and the tests' ground truth all call
:func:`parse_event`, so an event is valid (or rejected, with the same reason) everywhere.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from lamina.schema import EVENT_TIME, FieldType
from lamina.views import Source

# Event times outside [1970, 2200) are treated as unusable (mistaken units, garbage).
_MIN_TIME, _MAX_TIME = 0.0, 7_258_118_400.0


@dataclass(frozen=True)
class Rejection:
    """Why an event was not accepted; it goes to the dead letters with this reason."""

    reason: str


def _typed(field: str, ftype: str, value: Any, coerce: bool) -> Any:
    """``value`` as ``ftype`` or raise ValueError with the reason. ``None`` stays ``None``."""
    if value is None:
        return None
    if coerce and isinstance(value, str):
        # Text formats (CSV) carry every value as a string.
        if value == "":
            return None
        try:
            if ftype == "long":
                return int(value)
            if ftype == "double":
                return float(value)
            if ftype == "boolean" and value.lower() in ("true", "false"):
                return value.lower() == "true"
        except ValueError:
            pass
        if ftype == "string":
            return value
        raise ValueError(f"field {field!r} should be {ftype}, got {value!r}")
    ok = {
        FieldType.STRING: isinstance(value, str),
        FieldType.LONG: isinstance(value, int) and not isinstance(value, bool),
        FieldType.DOUBLE: isinstance(value, int | float) and not isinstance(value, bool),
        FieldType.BOOLEAN: isinstance(value, bool),
    }[FieldType(ftype)]
    if not ok:
        raise ValueError(f"field {field!r} should be {ftype}, got {type(value).__name__} {value!r}")
    if ftype == "double":
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"field {field!r} is not a finite number: {value!r}")
    if ftype == "long" and not -(2**63) <= value < 2**63:
        raise ValueError(f"field {field!r} does not fit a 64-bit long: {value!r}")
    return value


def parse_text(field: str, ftype: str, text: str) -> Any:
    """``text`` from a text format (a CSV cell, a query key) as ``ftype``, by the same rule as
    imports; ``""`` is ``None``. Raises ``ValueError`` with the reason."""
    return _typed(field, ftype, text, coerce=True)


def event_time_seconds(value: Any, fmt: str) -> float:
    """Event time as float seconds since the epoch (UTC); raise ValueError if unusable."""
    if fmt == "iso8601":
        if not isinstance(value, str):
            raise ValueError(f"event time {value!r} is not an ISO-8601 string")
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"event time {value!r} is not ISO-8601") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        seconds = dt.timestamp()
    else:
        seconds = float(value) / (1000.0 if fmt == "epoch_ms" else 1.0)
    if not math.isfinite(seconds) or not _MIN_TIME <= seconds < _MAX_TIME:
        raise ValueError(f"event time {value!r} ({fmt}) is outside 1970..2200")
    return seconds


def parse_event(
    raw: bytes | str | dict[str, Any], source: Source, *, coerce: bool = False
) -> dict[str, Any] | Rejection:
    """Parse one event of ``source``.

    ``raw`` is JSON text/bytes (Kafka, JSON lines) or an already decoded row (CSV, Parquet;
    with ``coerce=True`` string values are converted to the declared types). Returns the
    declared fields (absent ones as ``None``) plus :data:`EVENT_TIME`, or a
    :class:`Rejection` saying why: not JSON, not an object, a missing event id or time,
    a value of the wrong type, or an unusable event time. Unknown fields are ignored.
    """
    if isinstance(raw, bytes | str):
        try:
            obj = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            return Rejection(f"not valid JSON: {e}")
    else:
        obj = raw
    if not isinstance(obj, dict):
        return Rejection(f"not a JSON object but {type(obj).__name__}")
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
