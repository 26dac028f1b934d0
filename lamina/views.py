"""View and source definitions: immutable, validated data that every engine consumes.

Definitions live in ``conf/views.toml`` (see its header for the format). Loading checks
everything against the source schemas and fails with a message naming the view, the field
and the fix. Nothing here imports an engine.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from lamina.buckets import Bucket
from lamina.errors import ViewDefinitionError
from lamina.monoids import MONOIDS, Monoid
from lamina.schema import DECLARABLE, NUMERIC, FieldType

TimeFormat = Literal["iso8601", "epoch_s", "epoch_ms"]
_IDENT = re.compile(r"^[a-z][a-z0-9_]{0,39}$")

MAX_KEY_BYTES = 65_535
"""The largest partition key Cassandra stores. An event whose key is larger (a 70 kB URL) is
in no view keyed by it: batch and speed layer leave it out alike
(:func:`engine.translate.aggregate`), and each batch counts them (``oversize_keys``)."""


def _ident(kind: str, name: str) -> str:
    if not _IDENT.match(name):
        raise ValueError(
            f"{kind} name {name!r} must be lower-case letters, digits and _ (a CQL identifier),"
            " starting with a letter, at most 40 characters"
        )
    return name


CQL_RESERVED = frozenset(
    # Refused as unquoted column names by Cassandra 5.0.8, tried one by one (words the
    # CQL reference lists but 5.0.8 accepts, such as default or replace, stay allowed).
    {
        "add",
        "allow",
        "alter",
        "and",
        "apply",
        "asc",
        "authorize",
        "batch",
        "begin",
        "by",
        "columnfamily",
        "create",
        "delete",
        "desc",
        "describe",
        "drop",
        "entries",
        "execute",
        "from",
        "full",
        "grant",
        "if",
        "in",
        "index",
        "infinity",
        "insert",
        "into",
        "is",
        "keyspace",
        "limit",
        "materialized",
        "modify",
        "nan",
        "norecursive",
        "not",
        "null",
        "of",
        "on",
        "or",
        "order",
        "primary",
        "rename",
        "revoke",
        "schema",
        "select",
        "set",
        "table",
        "to",
        "token",
        "truncate",
        "unlogged",
        "update",
        "use",
        "using",
        "view",
        "where",
        "with",
    }
)
"""Words a view's Cassandra columns (its key fields and aggregation columns) may not be."""

VIEW_COLUMNS = ("bucket", "ingest_epoch", "applied_batch")
"""Columns every view table has besides its keys and aggregation columns."""


def _declarable(value: Any) -> Any:
    if value not in DECLARABLE:
        raise ValueError(f"type {value!r} is not one of {', '.join(DECLARABLE)}")
    return value


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Source(_Model):
    """A stream of events: a Kafka topic with a typed JSON schema."""

    name: str
    topic: str
    """Kafka topic the events arrive on."""
    fields: dict[str, Annotated[FieldType, BeforeValidator(_declarable)]]
    """Payload fields and their types; other JSON fields are ignored."""
    event_id: str
    """Field holding the unique event id (duplicates are dropped by the batch layer)."""
    event_time: str
    """Field holding the event time."""
    event_time_format: TimeFormat = "iso8601"
    """``iso8601`` strings (UTC if no offset), or ``epoch_s`` / ``epoch_ms`` numbers."""

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _ident("source", v)

    @cached_property
    def parsing(self) -> dict[str, Any]:
        """What parsing an event of this source depends on (what its master dataset's rows
        were made by): fields and types, event id, event time and its format."""
        return self.model_dump(mode="json", exclude={"name", "topic"})

    @cached_property
    def schema_hash(self) -> str:
        """Canonical JSON of :attr:`parsing` with sorted keys, SHA-256, 16 hex digits."""
        return hashlib.sha256(json.dumps(self.parsing, sort_keys=True).encode()).hexdigest()[:16]

    @model_validator(mode="after")
    def _check(self) -> Source:
        for f in self.fields:
            _ident("field", f)
        for role in ("event_id", "event_time"):
            f = getattr(self, role)
            if f not in self.fields:
                raise ValueError(
                    f"{role} field {f!r} is not declared in fields (declared: "
                    f"{', '.join(self.fields)}); add it to [sources.{self.name}.fields]"
                )
        want = "string" if self.event_time_format == "iso8601" else "long or double"
        got = self.fields[self.event_time]
        if got not in want.split(" or "):
            raise ValueError(
                f"event_time field {self.event_time!r} is {got}, but event_time_format "
                f"{self.event_time_format!r} needs {want}"
            )
        return self


class Condition(_Model):
    """One filter term; a view's filter is the AND of its terms. Null never matches."""

    field: str
    op: Literal["==", "!=", "<", "<=", ">", ">=", "in", "not_in", "is_null", "not_null"]
    value: Any = None

    def matches(self, value: Any) -> bool:
        """The term evaluated on one event's field value, with SQL null semantics."""
        if self.op == "is_null":
            return value is None
        if self.op == "not_null":
            return value is not None
        if value is None:
            return False
        op, ref = self.op, self.value
        if op == "in":
            return value in ref
        if op == "not_in":
            return value not in ref
        return bool(
            {
                "==": value == ref,
                "!=": value != ref,
                "<": value < ref,
                "<=": value <= ref,
                ">": value > ref,
                ">=": value >= ref,
            }[op]
        )


class Aggregation(_Model):
    """A named aggregation: ``fn`` over ``field`` (count may omit the field)."""

    fn: str
    field: str | None = None
    lg_k: int | None = Field(default=None, ge=4, le=21)
    """distinct: log2 of the HLL sketch's K (default 12: about 1.6% standard error)."""
    k: int | None = Field(default=None, ge=8, le=65535)
    """quantiles: the KLL sketch's k (default 200: about 1.3% rank error)."""


class View(_Model):
    """A view: per key and time bucket, the named aggregations of one source's events."""

    name: str
    source: Source
    keys: tuple[str, ...]
    bucket: Bucket
    filter: tuple[Condition, ...] = ()
    aggregations: dict[str, Aggregation]
    retain_versions: int = Field(default=3, ge=1)
    """Published batch versions kept for rollback; older ones are garbage-collected."""
    schedule: str = "@hourly"
    """Airflow schedule of the batch recompute."""
    max_staleness_s: int = Field(default=3 * 3600, gt=0)
    """Alert when the published cutoff is older than this, in seconds."""

    @cached_property
    def monoids(self) -> dict[str, Monoid]:
        """Each aggregation's monoid, configured with its field type and parameters."""
        out: dict[str, Monoid] = {}
        for name, agg in self.aggregations.items():
            ftype = self.source.fields.get(agg.field) if agg.field else None
            params = {k: v for k, v in (("lg_k", agg.lg_k), ("k", agg.k)) if v is not None}
            out[name] = MONOIDS[agg.fn](ftype, field=agg.field, **params)
        return out

    @cached_property
    def value_layout(self) -> list[tuple[str, Monoid, int, int]]:
        """``(aggregation, monoid, start, end)``: the aggregation's stored columns are
        ``value_columns[start:end]`` (for decoding a row without recomputing the widths)."""
        out: list[tuple[str, Monoid, int, int]] = []
        i = 0
        for name, m in self.monoids.items():
            width = len(m.columns(name))
            out.append((name, m, i, i + width))
            i += width
        return out

    @cached_property
    def value_columns(self) -> list[tuple[str, str]]:
        """Stored ``(column, cql_type)`` of all aggregations, in definition order."""
        return [c for name, m in self.monoids.items() for c in m.columns(name)]

    def _hash(self, exclude: dict[str, Any]) -> str:
        payload = self.model_dump(mode="json", exclude=exclude)
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    @cached_property
    def definition_hash(self) -> str:
        """Hash of everything that decides a batch row's or a real-time cell's content: the
        view's name, keys (in order: they make the Cassandra key), bucket, filter (in order)
        and aggregations with their parameters, and its source's name (its master dataset),
        fields and types (they decide which events are valid), event id and event time with
        its format. Not: the source's Kafka topic (where new events are read from, not what
        they count for) nor ``retain_versions``, ``schedule``, ``max_staleness_s``.

        Canonical JSON with sorted keys, SHA-256: the same in every process and release; the
        order of a table's keys in ``views.toml`` does not matter. Recorded with each batch
        version and real-time table; queries refuse to merge anything recorded under another
        (:func:`serving.store.check_answerable`)."""
        return self._hash(
            {
                "retain_versions": True,
                "schedule": True,
                "max_staleness_s": True,
                "source": {"topic"},
            }
        )

    @cached_property
    def legacy_definition_hash(self) -> str:
        """:attr:`definition_hash` as Lamina computed it before issue #12 (with the source's
        topic): batch versions built then recorded it."""
        return self._hash({"retain_versions": True, "schedule": True, "max_staleness_s": True})

    def built_under(self, recorded: str) -> bool:
        """Whether something recorded with definition hash ``recorded`` was built under this
        definition: the current hash, the hash an older Lamina recorded for it, or none
        (versions of a Lamina that recorded no hash count as matching: the upgrade path)."""
        return recorded in ("", self.definition_hash, self.legacy_definition_hash)

    def accepts(self, event: dict[str, Any]) -> bool:
        """The view's filter on one parsed event."""
        return all(c.matches(event.get(c.field)) for c in self.filter)

    def key_bytes(self, event: dict[str, Any]) -> int:
        """The size of ``event``'s key as Cassandra stores it (:data:`MAX_KEY_BYTES`): a
        string's UTF-8 bytes, 8 for any other type; with several keys, 3 bytes more per key
        (length and end-of-component)."""
        sizes = [
            len(str(event.get(k)).encode()) if self.source.fields[k] == FieldType.STRING else 8
            for k in self.keys
        ]
        return sizes[0] if len(sizes) == 1 else sum(s + 3 for s in sizes)


def _view_error(view: str, msg: str) -> ViewDefinitionError:
    return ViewDefinitionError(f"view {view!r}: {msg}")


def _build_view(name: str, raw: dict[str, Any], sources: dict[str, Source]) -> View:
    try:
        _ident("view", name)
    except ValueError as e:
        raise _view_error(name, str(e)) from None
    raw = dict(raw)
    src_name = raw.get("source")
    if src_name not in sources:
        raise _view_error(
            name, f"unknown source {src_name!r}; declared sources: {', '.join(sources) or 'none'}"
        )
    source = sources[src_name]
    raw["source"] = source
    declared = ", ".join(source.fields)
    keys = raw.get("keys")
    if isinstance(keys, str):
        keys = [keys]
    if not keys:
        raise _view_error(name, 'needs at least one key field: keys = ["field", ...]')
    for k in keys:
        if k not in source.fields:
            raise _view_error(
                name, f"key field {k!r} is not a field of source {src_name!r} (fields: {declared})"
            )
    raw["keys"] = tuple(keys)
    try:
        raw["bucket"] = Bucket.parse(raw.get("bucket", ""))
    except ViewDefinitionError:
        raise
    except Exception as e:
        raise _view_error(name, f"bucket: {e}") from None
    aggs = raw.get("aggregations") or {}
    if not aggs:
        raise _view_error(name, "declares no aggregations; add [views.NAME.aggregations]")
    for agg_name, agg in aggs.items():
        try:
            _ident("aggregation", agg_name)
        except ValueError as e:
            raise _view_error(name, str(e)) from None
        fn = agg.get("fn") if isinstance(agg, dict) else None
        if fn not in MONOIDS:
            raise _view_error(
                name,
                f"aggregation {agg_name!r}: unknown fn {fn!r}; use one of {', '.join(MONOIDS)}",
            )
        monoid = MONOIDS[fn]
        field = agg.get("field")
        if field is None and monoid.needs_field:
            raise _view_error(name, f'aggregation {agg_name!r}: {fn} needs a field = "..."')
        if field is not None and field not in source.fields:
            raise _view_error(
                name,
                f"aggregation {agg_name!r}: field {field!r} is not a field of source "
                f"{src_name!r} (fields: {declared})",
            )
        if field is not None and monoid.numeric_only and source.fields[field] not in NUMERIC:
            raise _view_error(
                name,
                f"aggregation {agg_name!r}: {fn} needs a numeric field (long or double), but "
                f"{field!r} is {source.fields[field]}; use count or distinct for it",
            )
    for cond in raw.get("filter") or []:
        f = cond.get("field") if isinstance(cond, dict) else None
        if f not in source.fields:
            raise _view_error(name, f"filter field {f!r} is not a field of source {src_name!r}")
    raw["filter"] = tuple(raw.get("filter") or ())
    try:
        view = View(name=name, **raw)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise _view_error(name, f"{where}: {err['msg']}") from None
    _check_columns(view)
    return view


def _check_columns(view: View) -> None:
    """The view's Cassandra columns (keys, :data:`VIEW_COLUMNS`, each aggregation's stored
    columns) are distinct and none is a CQL reserved word."""
    owner: dict[str, str] = {c: "a column every view has" for c in VIEW_COLUMNS}
    # (column, what stores it, the fix for a reserved word, the fix for a collision)
    named = [
        (
            k,
            f"key field {k!r}",
            "key on another field (or rename the field in the source)",
            "rename the field",
        )
        for k in view.keys
    ]
    for agg, monoid in view.monoids.items():
        rename = "rename the aggregation"
        named += [(c, f"aggregation {agg!r}", rename, rename) for c, _ in monoid.columns(agg)]
    for column, what, reserved_fix, taken_fix in named:
        if column in CQL_RESERVED:
            raise _view_error(
                view.name, f"{what}: column {column!r} is a CQL reserved word; {reserved_fix}"
            )
        if column in owner:
            raise _view_error(
                view.name, f"{what}: column {column!r} is already {owner[column]}; {taken_fix}"
            )
        owner[column] = f"taken by {what}"


class ViewCatalog(_Model):
    """All sources and views of a deployment."""

    sources: dict[str, Source]
    views: dict[str, View]

    def view(self, name: str) -> View:
        from lamina.errors import NotFoundError

        try:
            return self.views[name]
        except KeyError:
            raise NotFoundError(
                f"unknown view {name!r}", hint=f"known views: {', '.join(self.views) or 'none'}"
            ) from None


def parse_views(data: dict[str, Any]) -> ViewCatalog:
    """Validate a parsed ``views.toml`` document. Raises :class:`ViewDefinitionError`."""
    unknown = set(data) - {"sources", "views"}
    if unknown:
        raise ViewDefinitionError(
            f"unknown section(s) {', '.join(sorted(unknown))}; only [sources.*] and [views.*]"
        )
    sources: dict[str, Source] = {}
    for name, raw in (data.get("sources") or {}).items():
        try:
            sources[name] = Source(name=name, **raw)
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            raise ViewDefinitionError(
                f"source {name!r}: {where + ': ' if where else ''}{msg}"
            ) from None
    views = {
        name: _build_view(name, raw, sources) for name, raw in (data.get("views") or {}).items()
    }
    return ViewCatalog(sources=sources, views=views)


def load_views(path: Path | str) -> ViewCatalog:
    """Load and validate view definitions from a TOML file."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ViewDefinitionError(f"view definitions file {path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise ViewDefinitionError(f"{path} is not valid TOML: {e}") from None
    try:
        return parse_views(data)
    except ViewDefinitionError as e:
        raise ViewDefinitionError(f"{path}: {e.message}", hint=e.hint) from None
