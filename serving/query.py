"""Answering queries: parse and check parameters, read both views, merge, roll up, present.

Shared by the CLI (``lamina query``) and the HTTP API, so both give the same answers and the
same errors (:class:`~lamina.errors.QueryError` -> 400, :class:`~lamina.errors.NotFoundError`
-> 404).
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cassandra import InvalidRequest

from lamina.buckets import Bucket
from lamina.errors import (
    ConfigError,
    LaminaError,
    NotFoundError,
    QueryError,
    ViewNotReadyError,
)
from lamina.events import MAX_EVENT_TIME, MIN_EVENT_TIME, parse_text
from lamina.master import progress
from lamina.settings import Settings
from lamina.streams import ARCHIVER
from lamina.views import View, ViewCatalog
from serving.merge import (
    add_totals,
    fold_aggregation,
    keys_with_data,
    merge,
    plus,
    present,
    rank,
    rollup,
    zero,
)
from serving.store import SNAPSHOT_MAX_AGE_S, Published, RealtimeTable, Store, check_answerable


def parse_time(value: str | float | int | None, name: str) -> float | None:
    """ISO-8601 (UTC unless an offset is given) or epoch seconds -> epoch seconds.

    Only finite times within the event-time range (1970-01-01 up to 2200-01-01, as for
    events) are times: ``nan``, ``inf``, ``1e20`` or a year 9999 get a :class:`QueryError`.
    """
    if value is None or value == "":
        return None
    shown = value
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = None
    if seconds is None:
        try:
            dt = datetime.fromisoformat(str(value))
            dt = dt if dt.tzinfo else dt.replace(tzinfo=UTC)
            seconds = dt.timestamp()
        except (ValueError, OverflowError):
            raise QueryError(
                f"{name}={shown!r} is not a time",
                hint="use ISO-8601 like 2026-11-27T10:00:00Z or epoch seconds",
            ) from None
    if not math.isfinite(seconds) or not MIN_EVENT_TIME <= seconds <= MAX_EVENT_TIME:
        raise QueryError(
            f"{name}={shown!r} is outside the times events can have "
            f"({_iso(MIN_EVENT_TIME)} to {_iso(MAX_EVENT_TIME)})",
            hint="use ISO-8601 like 2026-11-27T10:00:00Z or epoch seconds in that range",
        )
    return seconds


KEY_HINT = (
    "join the values with commas in key order, writing a comma inside a value as \\, and a "
    'backslash as \\\\, or give a JSON array such as ["a,b", 12]'
)


def _split_key(raw: str) -> list[str]:
    """``a,b`` -> ``["a", "b"]``, with ``\\,`` a comma and ``\\\\`` a backslash inside a value
    (any other escaped character stands for itself)."""
    parts: list[str] = []
    cur: list[str] = []
    chars = iter(raw)
    for ch in chars:
        if ch == "\\":
            cur.append(next(chars, "\\"))
        elif ch == ",":
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


def _json_key(view: View, raw: str) -> list[Any]:
    """A multi-field key given as a JSON array: one element per key field."""
    try:
        parts = json.loads(raw)
    except ValueError:
        parts = None
    if not isinstance(parts, list):
        raise QueryError(
            f"key {raw!r} starts with '[' but is not a JSON array",
            hint=KEY_HINT + " (a first value starting with '[' is written \\[)",
        )
    return parts


def parse_key(view: View, raw: str) -> tuple[Any, ...]:
    """The text of a key -> the typed key tuple the tables hold.

    A view keyed by one field takes the text whole (commas included). A view keyed by
    several takes either the values joined by commas in key order, with ``\\,`` for a comma
    and ``\\\\`` for a backslash inside a value, or a JSON array (text starting with ``[``)
    with one element per field: a string, or for long/double/boolean fields a JSON number or
    boolean (or its text). Each value is checked as its field's type by the rule of imports
    (longs within 64 bits, finite doubles, booleans ``true``/``false``); a
    :class:`QueryError` (400) says what is wrong.
    """
    parts: list[Any]
    if len(view.keys) == 1:
        parts = [raw]
    elif raw.startswith("["):
        parts = _json_key(view, raw)
    else:
        parts = _split_key(raw)
    if len(parts) != len(view.keys):
        raise QueryError(
            f"key {raw!r} has {len(parts)} part(s) but view {view.name!r} is keyed by "
            f"{len(view.keys)}: {', '.join(view.keys)}",
            hint=KEY_HINT,
        )
    out: list[Any] = []
    for field, part in zip(view.keys, parts, strict=True):
        ftype = view.source.fields[field]
        out.append(_key_value(field, ftype, part))
    return tuple(out)


def _key_value(field: str, ftype: str, part: Any) -> Any:
    if ftype == "string":
        if isinstance(part, str):
            return part
        raise QueryError(f"key field {field!r} is string, got {json.dumps(part)}")
    if isinstance(part, bool):
        text = "true" if part else "false"
    elif isinstance(part, int | float) and not isinstance(part, bool):
        text = repr(part)
    elif isinstance(part, str):
        text = part
    else:
        raise QueryError(f"key field {field!r} is {ftype}, got {json.dumps(part)}")
    try:
        value = parse_text(field, ftype, text)
        if value is None:  # an empty part is no long, double or boolean
            raise ValueError("empty")
    except ValueError as exc:
        why = str(exc)
        reason = (
            " (does not fit a 64-bit long)"
            if "does not fit" in why
            else " (not a finite number)"
            if "finite" in why
            else ""
        )
        hint = {
            "boolean": "a boolean key is true or false",
            "long": "a long key is an integer from -2**63 to 2**63-1",
            "double": "a double key is a finite number",
        }.get(ftype)
        raise QueryError(
            f"key field {field!r} is {ftype}, got {text!r}{reason}", hint=hint
        ) from None
    return value


def key_text(view: View, key: tuple[Any, ...]) -> str:
    """The text of a typed key, as :func:`parse_key` reads it back (the inverse): a single
    field's value whole; several fields joined by commas, a backslash inside a value
    written as two, a comma as backslash-comma, and a first value's leading ``[`` as
    backslash-``[``. Booleans are ``true``/``false``."""
    parts = []
    for v in key:
        if isinstance(v, bool):
            parts.append("true" if v else "false")
        elif isinstance(v, float):
            parts.append(repr(v))
        else:
            parts.append(str(v))
    if len(parts) == 1:
        return parts[0]
    out = [p.replace("\\", "\\\\").replace(",", "\\,") for p in parts]
    if out[0].startswith("["):
        out[0] = "\\" + out[0]
    return ",".join(out)


MAX_PREFIX = 1000
"""Longest ``prefix`` of a key listing (characters)."""


@dataclass(frozen=True)
class QueryRange:
    start: float
    end: float
    granularity: Bucket


def missing_table(view: View, version: int | None, exc: Exception) -> Exception:
    """The error for a read whose table is still gone after a fresh catalog snapshot: a
    table the catalog names was dropped behind it (by hand, or purges outran the reader).
    Any other :class:`InvalidRequest` is a bug and stays one (a 500 that names it)."""
    text = str(exc)
    if "unconfigured table" not in text and "does not exist" not in text:
        return exc
    return ViewNotReadyError(
        f"view {view.name!r}: a table its published version {version} or its real-time "
        f"cells need is missing ({text.split(':')[-1].strip()[:120]})",
        hint=f"publish it again (lamina batch run --view {view.name}); if a source job "
        "was rebuilding its real-time table, try again in a moment",
    )


class QueryChecks:
    """Every parameter check of a query, top-N or key listing, without I/O (no store): the
    CLI checks before it connects, so a bad parameter is named even with Cassandra down."""

    def __init__(self, catalog: ViewCatalog, settings: Settings) -> None:
        self.catalog = catalog
        self.settings = settings

    def plan_index(
        self,
        name: str,
        start: Any,
        end: Any,
        limit: int | None,
        *,
        by: str | None = None,
        prefix: str | None = None,
        q: float = 0.5,
        top: bool,
    ) -> IndexPlan:
        """Check every parameter of a top-N (``top``: ``by`` required) or key listing,
        without I/O. Raises :class:`QueryError` (400) or :class:`NotFoundError` (404)."""
        view = self.catalog.view(name)
        limits = self.settings.serving
        if top:
            if not by:
                raise QueryError(
                    "no aggregation to rank by",
                    hint=f"pass by= one of {', '.join(view.aggregations)}",
                )
            if by not in view.aggregations:
                raise QueryError(
                    f"view {view.name!r} has no aggregation {by!r}",
                    hint=f"rank by one of {', '.join(view.aggregations)}",
                )
        if limit is None:
            limit = 10 if top else 100
        if not 1 <= limit <= limits.max_limit:
            raise QueryError(
                f"limit={limit} is out of range",
                hint=f"use 1 <= limit <= {limits.max_limit} (serving.max_limit)",
            )
        if not 0.0 <= q <= 1.0:
            raise QueryError(f"q={q} is out of range", hint="use 0 <= q <= 1, e.g. 0.95")
        if prefix is not None and len(prefix) > MAX_PREFIX:
            raise QueryError(
                f"prefix of {len(prefix)} characters is too long",
                hint=f"a prefix is at most {MAX_PREFIX} characters",
            )
        if prefix is not None and not prefix.isprintable():
            raise QueryError(
                f"prefix {prefix!r} holds control characters",
                hint="a prefix is the start of a key's text, as the listing shows keys",
            )
        rng = self.resolve_range(view, start, end, None)
        return IndexPlan(view, rng, limit, by, prefix or "", q)

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
                f"empty time range: from ({_iso(t_start)}) must be before to ({_iso(t_end)})",
                hint="swap from and to, or widen the range",
            )
        # Whole granularity buckets: the range is widened to bucket boundaries.
        b_start = gran.bucket_of(t_start)
        b_end = gran.bucket_of(t_end - 1e-3) + gran.seconds
        n = (b_end - b_start) // view.bucket.seconds
        if n > self.settings.serving.max_buckets:
            raise QueryError(
                f"the range spans {n} {view.bucket.label} buckets, more than the limit of "
                f"{self.settings.serving.max_buckets} (serving.max_buckets)",
                hint="narrow from/to or raise serving.max_buckets",
            )
        return QueryRange(b_start, b_end, gran)

    def plan(
        self,
        name: str,
        keys: list[str],
        start: Any = None,
        end: Any = None,
        granularity: str | None = None,
        q: float = 0.5,
    ) -> QueryPlan:
        """Check every parameter of a query, without I/O: the view, the keys (typed, each
        distinct key once, the first spelling naming it), the range and the limits. Raises
        :class:`QueryError` (400) or :class:`NotFoundError` (404)."""
        view = self.catalog.view(name)
        limits = self.settings.serving
        if not keys:
            raise QueryError("no key given", hint=f"pass one or more values of {view.keys}")
        if len(keys) > limits.max_keys:
            raise QueryError(
                f"{len(keys)} keys, more than the limit of {limits.max_keys} (serving.max_keys)",
                hint="ask for fewer keys per request or raise serving.max_keys",
            )
        if not 0.0 <= q <= 1.0:
            raise QueryError(f"q={q} is out of range", hint="use 0 <= q <= 1, e.g. 0.95")
        # Each distinct key once (the first spelling names it): "true" and "True" are one key.
        distinct: dict[tuple[Any, ...], str] = {}
        for raw in keys:
            distinct.setdefault(parse_key(view, raw), raw)
        rng = self.resolve_range(view, start, end, granularity)
        n_buckets = int((rng.end - rng.start) // view.bucket.seconds)
        cells = len(distinct) * n_buckets
        if cells > limits.max_cells:
            raise QueryError(
                f"{len(distinct)} key(s) x {n_buckets} {view.bucket.label} buckets = {cells} "
                f"cells, more than the limit of {limits.max_cells} (serving.max_cells)",
                hint="ask for fewer keys or a narrower from/to, or raise serving.max_cells",
            )
        return QueryPlan(view, list(distinct.items()), rng, q)


class QueryService(QueryChecks):
    """Answers merged queries for the views of ``catalog`` from ``store``."""

    def __init__(self, store: Store, catalog: ViewCatalog, settings: Settings) -> None:
        super().__init__(catalog, settings)
        self.store = store
        self._job_views_cache: dict[str, tuple[float, list[str] | None]] = {}
        self._snapshots: dict[str, Snapshot] = {}
        self._reading: dict[str, tuple[asyncio.AbstractEventLoop, float, asyncio.Task[Snapshot]]]
        self._reading = {}
        self.snapshot_reads = 0
        """How many times :meth:`snapshot` read the catalog (the others reused one)."""
        self.batch_folds = BatchFolds(settings.serving.index_cache_keys, store.ks)

    # -- top-N and key listings: the key indexes, merged like a point query -------------

    async def _read_index(
        self,
        plan: IndexPlan,
        columns: list[str],
        fold_batch: Callable[[list[tuple[Any, ...]]], Any],
    ) -> tuple[Snapshot, bool, Any, list[tuple[Any, ...]]]:
        """One snapshot, then the key index rows of ``plan``'s range that a merge under its
        cutoff takes, with value ``columns`` (:meth:`Store.read_index`); also whether the
        real-time view was read (:func:`check_answerable`).

        The published version's rows come folded: ``fold_batch(rows)``, from the cache of
        batch folds when this version and range were folded before (:class:`BatchFolds`: a
        version's key index never changes once published, so its fold is reused exactly);
        ``None`` when nothing is published. The real-time rows are read each time."""
        view = plan.view
        snap = await self.snapshot(view)
        max_rows = self.settings.serving.max_index_rows
        for attempt in range(2):
            read_realtime = check_answerable(
                view, snap.published, snap.realtime, self._job_views(view)
            )
            pub = snap.published
            fold_key = None if pub is None else self.batch_folds.key(pub, plan)
            cached = None if fold_key is None else self.batch_folds.get(fold_key)
            try:
                got = await self.store.read_index(
                    view,
                    None if pub is None or cached is not None else pub.version,
                    int(plan.range.start),
                    int(plan.range.end),
                    realtime=read_realtime,
                    cutoff=None if pub is None else pub.cutoff,
                    columns=columns,
                    max_rows=max_rows - (0 if cached is None else cached.rows),
                )
                break
            except InvalidRequest:
                # As for point queries: a table collected or rebuilt since the snapshot.
                if attempt:
                    raise ViewNotReadyError(
                        f"view {view.name!r}: the key index of its published version "
                        f"{None if pub is None else pub.version} or of its real-time view is "
                        "missing (built by an older Lamina, or dropped)",
                        hint=f"run `lamina batch run --view {view.name}` to publish a version "
                        "with its index; restart the source job if the real-time one is missing",
                    ) from None
                snap = await self.snapshot(view, fresh=True)
        if got is None:
            raise QueryError(
                f"the range holds more than {max_rows} key index rows (serving.max_index_rows)",
                hint="narrow from/to or raise serving.max_index_rows",
            )
        batch_rows, rt_rows = got
        if fold_key is None:
            folded = None
        elif cached is not None:
            folded = cached.value
        else:
            folded = fold_batch(batch_rows)
            self.batch_folds.put(fold_key, BatchFold(folded, len(batch_rows), len(folded)))
        return snap, read_realtime, folded, rt_rows

    def _index_answer(self, plan: IndexPlan, snap: Snapshot) -> dict[str, Any]:
        pub = snap.published
        return {
            "view": plan.view.name,
            "from": _iso(plan.range.start),
            "to": _iso(plan.range.end),
            "limit": plan.limit,
            "provenance": {
                "version": pub.version if pub else None,
                "cutoff": pub.cutoff if pub else None,
                "cutoff_iso": _iso(pub.cutoff) if pub else None,
            },
        }

    async def top_async(
        self,
        name: str,
        by: str | None,
        start: Any = None,
        end: Any = None,
        limit: int | None = None,
        q: float = 0.5,
    ) -> dict[str, Any]:
        """The ``limit`` keys with the largest merged value of aggregation ``by`` over the
        range (for sketches their estimate; a quantile's at ``q``), with every aggregation's
        value: each key's rows merged as a point query merges them (the published version's
        key index, the real-time one's epochs at or after its cutoff), then ranked
        (:func:`serving.merge.rank`). Parameters as for :meth:`query_async` (default range:
        the 24 view buckets up to now).

        Two steps: the index rows carry only ``by``'s columns (:func:`fold_aggregation`
        ranks every key); the winners' other values come from their point reads
        (:meth:`Store.read_slices`) under the same snapshot, merged as a point query merges.
        A micro-batch being written meanwhile may show in one step and not yet in the other,
        as it may in one key of a point query and not yet in another."""
        plan = self.plan_index(name, start, end, limit, by=by, q=q, top=True)
        assert plan.by is not None
        view = plan.view
        columns = [
            c
            for n, _, i, j in view.value_layout
            if n == plan.by
            for c, _ in view.value_columns[i:j]
        ]
        by = plan.by
        snap, read_realtime, batch, realtime = await self._read_index(
            plan, columns, lambda rows: fold_aggregation(view, by, rows, [], None)
        )
        pub = snap.published
        cutoff = pub.cutoff if pub else None
        totals = fold_aggregation(view, by, [], realtime, cutoff)
        if batch is not None:
            totals = add_totals(view, by, batch, totals)
        ranked = rank(view, totals, plan.by, plan.limit, q=plan.q)
        slices = await self.store.read_slices(
            view,
            None if pub is None else pub.version,
            [key for key, _ in ranked],
            int(plan.range.start),
            int(plan.range.end),
            realtime=read_realtime,
        )
        results = []
        for i, ((key, value), (b_rows, rt_rows)) in enumerate(zip(ranked, slices, strict=True)):
            merged = merge(
                view,
                [(r[0], r[1:]) for r in b_rows],
                [(r[0], r[1], r[2:]) for r in rt_rows],
                cutoff,
            )
            states = zero(view)
            for m in merged.values():
                states = plus(view, states, m.states)
            values = present(view, states, q=plan.q)
            values[plan.by] = value  # the ranked value (the same, but for writes in flight)
            results.append(
                {"rank": i + 1, "key": key_text(view, key), "value": value, "values": values}
            )
        return self._index_answer(plan, snap) | {
            "by": plan.by,
            "q": plan.q,
            "keys_with_data": len(totals),
            "results": results,
        }

    async def keys_async(
        self,
        name: str,
        start: Any = None,
        end: Any = None,
        prefix: str | None = None,
        limit: int | None = None,
    ) -> dict[str, Any]:
        """The keys with data in the range (the keys a point query answers with at least one
        bucket), whose text (:func:`key_text`) starts with ``prefix``: the first ``limit`` in
        key order, with how many matched."""
        plan = self.plan_index(name, start, end, limit, prefix=prefix, top=False)
        view = plan.view
        snap, _, batch, realtime = await self._read_index(
            plan, [], lambda rows: frozenset(keys_with_data(view, rows, [], None))
        )
        cutoff = snap.published.cutoff if snap.published else None
        found = sorted(keys_with_data(view, [], realtime, cutoff) | (batch or frozenset()))
        texts = [t for t in (key_text(view, k) for k in found) if t.startswith(plan.prefix)]
        return self._index_answer(plan, snap) | {
            "prefix": plan.prefix,
            "matched": len(texts),
            "truncated": len(texts) > plan.limit,
            "keys": texts[: plan.limit],
        }

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

    # -- the query: one code path for the CLI (query) and the API (query_async) ----------

    async def snapshot(self, view: View, *, fresh: bool = False) -> Snapshot:
        """The catalog row and real-time record of ``view`` that a query merges against: read
        at most :data:`~serving.store.SNAPSHOT_MAX_AGE_S` ago (else, or with ``fresh``, read
        now). A query takes it once and uses nothing else, so its answer is of one published
        version whatever publishes meanwhile."""
        snap = self._snapshots.get(view.name)
        now = time.monotonic()
        if not fresh and snap is not None and now - snap.read_at < SNAPSHOT_MAX_AGE_S:
            return snap
        # One read in flight per view and event loop: the requests that find the snapshot
        # old meanwhile wait for it rather than each reading the catalog (a read started
        # less than SNAPSHOT_MAX_AGE_S before this request is young enough for it).
        loop = asyncio.get_running_loop()
        pending = self._reading.get(view.name)
        if (
            not fresh
            and pending is not None
            and pending[0] is loop
            and now - pending[1] < SNAPSHOT_MAX_AGE_S
        ):
            return await asyncio.shield(pending[2])
        task = loop.create_task(self._read_snapshot(view))
        self._reading[view.name] = (loop, now, task)
        try:
            return await asyncio.shield(task)
        finally:
            if self._reading.get(view.name, (None, None, None))[2] is task and task.done():
                del self._reading[view.name]

    async def _read_snapshot(self, view: View) -> Snapshot:
        started = time.monotonic()
        self.snapshot_reads += 1
        pub, rec = await self.store.snapshot(view)
        snap = Snapshot(pub, rec, started)  # its age counts from before the read
        current = self._snapshots.get(view.name)
        if current is None or current.read_at <= started:
            self._snapshots[view.name] = snap
        return snap

    async def query_async(
        self,
        name: str,
        keys: list[str],
        start: Any = None,
        end: Any = None,
        granularity: str | None = None,
        q: float = 0.5,
    ) -> dict[str, Any]:
        """Merged answer per bucket for each key, with provenance (see :mod:`serving.merge`).

        Every parameter is checked before any read (:meth:`plan`). Then one snapshot of the
        catalog (:meth:`snapshot`), and the batch and real-time slices of every key read at
        once (:meth:`Store.read_slices`). A batch version garbage-collected since the
        snapshot (two publishes within its age) is answered from a fresh snapshot.
        """
        plan = self.plan(name, keys, start, end, granularity, q)
        view = plan.view
        snap = await self.snapshot(view)
        for attempt in range(2):
            read_realtime = check_answerable(
                view, snap.published, snap.realtime, self._job_views(view)
            )
            version = None if snap.published is None else snap.published.version
            try:
                slices = await self.store.read_slices(
                    view,
                    version,
                    [k for k, _ in plan.keys],
                    int(plan.range.start),
                    int(plan.range.end),
                    realtime=read_realtime,
                )
                break
            except InvalidRequest as exc:
                # The version's table or the real-time table is gone: a later publish
                # collected the one, a rebuild dropped the other. Once more, from the catalog.
                if attempt:
                    raise missing_table(view, version, exc) from None
                snap = await self.snapshot(view, fresh=True)
        latest = self._snapshots.get(view.name)
        if (
            latest is not None
            and latest.realtime != snap.realtime
            and latest.read_at > snap.read_at
        ):
            raise ViewNotReadyError(
                f"view {view.name!r}: its real-time table changed while it was read (its "
                "source job began rebuilding it)",
                hint="try again in a moment",
            )
        return self.answer(plan, snap, slices)

    def query(
        self,
        name: str,
        keys: list[str],
        start: Any = None,
        end: Any = None,
        granularity: str | None = None,
        q: float = 0.5,
    ) -> dict[str, Any]:
        """:meth:`query_async` run to its end, for callers without an event loop (the CLI,
        scripts, tests): the same code, hence the same answers and errors."""
        return asyncio.run(self.query_async(name, keys, start, end, granularity, q))

    def answer(
        self,
        plan: QueryPlan,
        snap: Snapshot,
        slices: list[tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]],
    ) -> dict[str, Any]:
        """Merge, roll up and present the rows read for ``plan`` (pure: no I/O)."""
        view, rng, q = plan.view, plan.range, plan.q
        pub = snap.published
        cutoff = pub.cutoff if pub else None
        answers = []
        for (_, raw), (batch_rows, rt_rows) in zip(plan.keys, slices, strict=True):
            batch = [(r[0], r[1:]) for r in batch_rows]
            realtime = [(r[0], r[1], r[2:]) for r in rt_rows]
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
        if all(not a["buckets"] for a in answers) and len(answers) == 1:
            raise NotFoundError(
                f"no data for key {answers[0]['key']!r} of view {view.name!r} between "
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


@dataclass(frozen=True)
class QueryPlan:
    """A query whose parameters were checked (:meth:`QueryService.plan`)."""

    view: View
    keys: list[tuple[tuple[Any, ...], str]]
    """``(typed key, its text as first given)`` per distinct key, in request order."""
    range: QueryRange
    q: float


@dataclass(frozen=True)
class IndexPlan:
    """A top-N or key listing whose parameters were checked (:meth:`QueryService.plan_index`)."""

    view: View
    range: QueryRange
    limit: int
    by: str | None
    prefix: str
    q: float


@dataclass(frozen=True)
class BatchFold:
    """The published version's key index rows of one range, folded (a top-N's
    :func:`fold_aggregation` of its aggregation, or a listing's set of keys)."""

    value: Any
    rows: int
    """Index rows read to fold it (they count against ``serving.max_index_rows``)."""
    keys: int
    """Keys it holds (its size in the cache)."""


class BatchFolds:
    """Per process, the latest folds of batch key index ranges (least recently used out),
    at most ``max_keys`` keys in all (0: nothing kept).

    Exact because what is folded never changes: an entry is keyed by the published
    version as the request's snapshot names it (keyspace, view, version, cutoff, rows and
    definition hash: a version's tables are written once, before it is published, and a
    recreated keyspace's version of the same number differs in its cutoff), by the
    aggregation and by the range. A request takes one snapshot, so it uses the fold of
    exactly the version it merges with: after a publish, the next snapshot names the new
    version, whose fold is not in the cache yet. The real-time part is never cached."""

    def __init__(self, max_keys: int, keyspace: str) -> None:
        self.max_keys = max_keys
        self.keyspace = keyspace
        self._entries: OrderedDict[Hashable, BatchFold] = OrderedDict()
        self._keys = 0
        self.hits = 0
        self.misses = 0

    def key(self, pub: Published, plan: IndexPlan) -> Hashable:
        return (
            self.keyspace,
            pub.view,
            pub.version,
            pub.cutoff,
            pub.rows,
            pub.definition_hash,
            plan.by,
            plan.range.start,
            plan.range.end,
        )

    def get(self, key: Hashable) -> BatchFold | None:
        fold = self._entries.get(key)
        if fold is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(key)
        return fold

    def put(self, key: Hashable, fold: BatchFold) -> None:
        if not self.max_keys or fold.keys > self.max_keys or key in self._entries:
            return
        self._entries[key] = fold
        self._keys += fold.keys
        while self._keys > self.max_keys and self._entries:
            _, old = self._entries.popitem(last=False)
            self._keys -= old.keys

    def __len__(self) -> int:
        return len(self._entries)


@dataclass(frozen=True)
class Snapshot:
    """One read of a view's catalog row and real-time record (:meth:`QueryService.snapshot`)."""

    published: Published | None
    realtime: RealtimeTable | None
    read_at: float
    """``time.monotonic()`` just before the read."""


@functools.lru_cache(maxsize=1 << 16)
def _iso(t: float) -> str:
    """Epoch seconds as ISO-8601 UTC (``...Z``); cached: answers repeat the same buckets."""
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")
