"""Field types and the columns of an event row: defined once, mapped by each engine.

A source declares its fields with the four :data:`DECLARABLE` types. Every event row Lamina
stores or streams is a list of :class:`Column` built here: the source's fields, the parsed
event time (:data:`EVENT_TIME`) and, for rows read from Kafka, the record's origin
(:data:`ORIGIN`). Each engine maps :class:`FieldType` to its own types in one table
(``engine.schema.SPARK_TYPES``, ``lamina.master.ARROW_TYPES``, ``serving.schema.CQL_TYPES``),
so a new type or column is added in one place. Nothing here imports an engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lamina.views import Source


class FieldType(StrEnum):
    """The type of a column. A member compares equal to its name (``FieldType.LONG == "long"``)."""

    STRING = "string"
    LONG = "long"
    DOUBLE = "double"
    BOOLEAN = "boolean"
    # Internal columns only (a Kafka record's origin, a dead letter's raw bytes).
    INT = "int"
    TIMESTAMP = "timestamp"
    BINARY = "binary"


DECLARABLE: tuple[FieldType, ...] = (
    FieldType.STRING,
    FieldType.LONG,
    FieldType.DOUBLE,
    FieldType.BOOLEAN,
)
"""The types a source may give its fields."""

NUMERIC = frozenset({FieldType.LONG, FieldType.DOUBLE})

EVENT_TIME = "_event_time"
"""The parsed event time: float seconds since the epoch (UTC)."""

INGEST_EPOCH = "ingest_epoch"
"""The broker-time epoch a record arrived in (a partition directory of the master dataset)."""


@dataclass(frozen=True)
class Column:
    name: str
    type: FieldType
    nullable: bool = True


ORIGIN: tuple[Column, ...] = (
    Column("topic", FieldType.STRING),
    Column("partition", FieldType.INT),
    Column("offset", FieldType.LONG),
)
"""Where a stored event came from (null for imported files)."""

KAFKA_TIMESTAMP = Column("timestamp", FieldType.TIMESTAMP)
"""The broker timestamp of a Kafka record (the ingest epoch is derived from it)."""


def event_columns(source: Source) -> list[Column]:
    """A parsed event of ``source``: its declared fields, then :data:`EVENT_TIME`."""
    return [Column(f, t) for f, t in source.fields.items()] + [
        Column(EVENT_TIME, FieldType.DOUBLE, nullable=False)
    ]


def master_columns(source: Source) -> list[Column]:
    """A master-dataset file of ``source``: the parsed event plus its :data:`ORIGIN`
    (``ingest_epoch`` lives in the file's directory name)."""
    return [*event_columns(source), *ORIGIN]
