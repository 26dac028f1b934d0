"""Answering queries: parse and check parameters, read both views, merge, roll up, present.

Shared by the CLI (``lamina query``) and the HTTP API, so both give the same answers and the
same errors (:class:`~lamina.errors.QueryError` -> 400, :class:`~lamina.errors.NotFoundError`
-> 404).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from lamina.buckets import Bucket
from lamina.errors import (
    ConfigError,
    LaminaError,
    NotFoundError,
    QueryError,
    ViewNotReadyError,
)
from lamina.events import parse_text
from lamina.master import progress
from lamina.settings import Settings
from lamina.streams import ARCHIVER
from lamina.views import View, ViewCatalog
from serving.merge import merge, present, rollup
from serving.store import Published, Store, check_answerable


def parse_time(value: str | float | int | None, name: str) -> float | None:
    """ISO-8601 (UTC unless an offset is given) or epoch seconds -> epoch seconds."""
    if value is None or value == "":
        return None
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(value)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise QueryError(
            f"{name}={value!r} is not a time",
            hint="use ISO-8601 like 2026-11-27T10:00:00Z or epoch seconds",
        ) from None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def parse_key(view: View, raw: str) -> tuple[Any, ...]:
    """``"a"`` or ``"a,b"`` (one value per key field, in order) -> typed key tuple."""
    parts = raw.split(",") if len(view.keys) > 1 else [raw]
    if len(parts) != len(view.keys):
        raise QueryError(
            f"key {raw!r} has {len(parts)} part(s) but view {view.name!r} is keyed by "
            f"{len(view.keys)}: {', '.join(view.keys)}",
            hint="join the values with commas in that order",
        )
    out: list[Any] = []
    for field, text in zip(view.keys, parts, strict=True):
        ftype = view.source.fields[field]
        try:
            value = text if ftype == "string" else parse_text(field, ftype, text)
            if value is None:  # an empty part is no long, double or boolean
                raise ValueError(text)
        except ValueError:
            raise QueryError(f"key field {field!r} is {ftype}, got {text!r}") from None
        out.append(value)
    return tuple(out)


@dataclass(frozen=True)
class QueryRange:
    start: float
    end: float
    granularity: Bucket


class QueryService:
    """Answers merged queries for the views of ``catalog`` from ``store``."""

    def __init__(self, store: Store, catalog: ViewCatalog, settings: Settings) -> None:
        self.store = store
        self.catalog = catalog
        self.settings = settings
        self._job_views_cache: dict[str, tuple[float, list[str] | None]] = {}

    def describe(self, name: str) -> dict[str, Any]:
        view = self.catalog.view(name)
        pub = self.store.published(view)
        rec = self.store.realtime_record(view)
        age = 0.0 if pub is None else pub.cutoff_age_s(time.time())
        try:
            check_answerable(view, pub, rec, self._job_views(view))
            not_ready = None
        except ViewNotReadyError as exc:
            not_ready = {"error": exc.message, "hint": exc.hint}
        return {
            "view": view.name,
            "source": view.source.name,
            "topic": view.source.topic,
            "keys": list(view.keys),
            "bucket": view.bucket.label,
            "bucket_seconds": view.bucket.seconds,
            "filter": [c.model_dump() for c in view.filter],
            "aggregations": {
                n: a.model_dump(exclude_none=True) for n, a in view.aggregations.items()
            },
            "definition_hash": view.definition_hash,
            "published": None
            if pub is None
            else {
                "version": pub.version,
                "cutoff": pub.cutoff,
                "cutoff_iso": _iso(pub.cutoff),
                "rows": pub.rows,
                "published_at": _iso(pub.published_at),
                "cutoff_age_s": round(age, 1),
                "stale": age > view.max_staleness_s,
                "definition_matches": view.built_under(pub.definition_hash),
            },
            "realtime": None
            if rec is None
            else {
                "state": rec.state,
                "definition_matches": rec.definition_hash == view.definition_hash,
                "covers_from": rec.covers_from,
            },
            "not_ready": not_ready,
        }

    def resolve_range(
        self, view: View, start: Any, end: Any, granularity: str | None
    ) -> QueryRange:
        gran = view.bucket
        if granularity:
            try:
                gran = Bucket.parse(granularity)
            except ConfigError as e:
                raise QueryError(f"granularity: {e.message}", hint=e.hint) from None
            if not view.bucket.divides(gran):
                raise QueryError(
                    f"granularity {gran.label} is not a whole number of view {view.name!r}'s "
                    f"{view.bucket.label} buckets",
                    hint=f"use {view.bucket.label} or a multiple of it",
                )
        t_end = parse_time(end, "to")
        t_start = parse_time(start, "from")
        if t_end is None:
            t_end = time.time() if t_start is None else t_start + 24 * gran.seconds
        if t_start is None:
            t_start = t_end - 24 * gran.seconds
        if t_end <= t_start:
            raise QueryError(
                f"empty time range: from ({_iso(t_start)}) must be before to ({_iso(t_end)})"
            )
        # Whole granularity buckets: the range is widened to bucket boundaries.
        b_start = gran.bucket_of(t_start)
        b_end = gran.bucket_of(t_end - 1e-3) + gran.seconds
        n = (b_end - b_start) // view.bucket.seconds
        if n > self.settings.serving.max_buckets:
            raise QueryError(
                f"the range spans {n} {view.bucket.label} buckets, more than the limit of "
                f"{self.settings.serving.max_buckets}",
                hint="narrow from/to or raise serving.max_buckets",
            )
        return QueryRange(b_start, b_end, gran)

    def _job_views(self, view: View) -> list[str] | None:
        """The views the source job of ``view``'s source last recorded keeping (its progress
        file in the master dataset; ``None`` when not recorded or not readable from here),
        read at most every 2 s per source."""
        src = view.source
        now = time.monotonic()
        hit = self._job_views_cache.get(src.name)
        if hit is not None and now - hit[0] < 2.0:
            return hit[1]
        try:
            found = progress(self.settings, src).get(ARCHIVER, {}).get("views")
        except (LaminaError, OSError):
            found = None
        views = None if found is None else [str(v) for v in found]
        self._job_views_cache[src.name] = (now, views)
        return views

    def query(
        self,
        name: str,
        keys: list[str],
        start: Any = None,
        end: Any = None,
        granularity: str | None = None,
        q: float = 0.5,
    ) -> dict[str, Any]:
        """Merged answer per bucket for each key, with provenance (see :mod:`serving.merge`)."""
        view = self.catalog.view(name)
        if not keys:
            raise QueryError("no key given", hint=f"pass one or more values of {view.keys}")
        if len(keys) > self.settings.serving.max_keys:
            raise QueryError(
                f"{len(keys)} keys, more than the limit of {self.settings.serving.max_keys}"
            )
        if not 0.0 <= q <= 1.0:
            raise QueryError(f"q={q} is out of range", hint="use 0 <= q <= 1, e.g. 0.95")
        rng = self.resolve_range(view, start, end, granularity)
        pub: Published | None = self.store.published(view)
        # Read the real-time table's record before and after the rows: a rebuild that began
        # in between (it drops the table) is answered as one, never with the rows it left.
        rec = self.store.realtime_record(view)
        read_realtime = check_answerable(view, pub, rec, self._job_views(view))
        cutoff = pub.cutoff if pub else None
        b0, b1 = int(rng.start), int(rng.end)
        answers = []
        for raw in keys:
            key = parse_key(view, raw)
            batch = (
                []
                if pub is None
                else [
                    (r[0], tuple(r[1:]))
                    for r in self.store.read_batch(view, pub.version, key, b0, b1)
                ]
            )
            realtime = (
                [(r[0], r[1], tuple(r[2:])) for r in self.store.read_realtime(view, key, b0, b1)]
                if read_realtime
                else []
            )
            merged = merge(view, batch, realtime, cutoff)
            if rng.granularity != view.bucket:
                merged = rollup(view, merged, rng.granularity)
            answers.append(
                {
                    "key": raw,
                    "buckets": [
                        {
                            "bucket": _iso(b),
                            "bucket_start": b,
                            "values": present(view, m.states, q=q),
                            "from_batch": m.from_batch,
                            "realtime_epochs": sorted(m.realtime_epochs),
                        }
                        for b, m in sorted(merged.items())
                    ],
                }
            )
        if self.store.realtime_record(view) != rec:
            raise ViewNotReadyError(
                f"view {view.name!r}: its real-time table changed while it was read (its "
                "source job began rebuilding it)",
                hint="try again in a moment",
            )
        if all(not a["buckets"] for a in answers) and len(keys) == 1:
            raise NotFoundError(
                f"no data for key {keys[0]!r} of view {view.name!r} between "
                f"{_iso(rng.start)} and {_iso(rng.end)}",
                hint="check the key's spelling and the time range",
            )
        return {
            "view": view.name,
            "granularity": rng.granularity.label,
            "from": _iso(rng.start),
            "to": _iso(rng.end),
            "q": q,
            "provenance": {
                "version": pub.version if pub else None,
                "cutoff": cutoff,
                "cutoff_iso": _iso(cutoff) if cutoff is not None else None,
            },
            "results": answers,
        }


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")
