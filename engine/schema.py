"""Spark schemas of Lamina's rows, from the one column list in :mod:`lamina.schema`."""

from __future__ import annotations

from collections.abc import Iterable

from pyspark.sql import types as T

from lamina.schema import INGEST_EPOCH, Column, FieldType, event_columns, master_columns
from lamina.views import Source

SPARK_TYPES: dict[FieldType, T.DataType] = {
    FieldType.STRING: T.StringType(),
    FieldType.LONG: T.LongType(),
    FieldType.DOUBLE: T.DoubleType(),
    FieldType.BOOLEAN: T.BooleanType(),
    FieldType.INT: T.IntegerType(),
    FieldType.TIMESTAMP: T.TimestampType(),
    FieldType.BINARY: T.BinaryType(),
}


def spark_schema(columns: Iterable[Column]) -> T.StructType:
    return T.StructType([T.StructField(c.name, SPARK_TYPES[c.type], c.nullable) for c in columns])


def event_schema(source: Source) -> T.StructType:
    """Parsed events of ``source``: its typed fields plus ``_event_time``."""
    return spark_schema(event_columns(source))


def master_schema(source: Source) -> T.StructType:
    """The master dataset of ``source`` as Spark reads it: a file's columns plus the
    ``ingest_epoch`` partition column."""
    return spark_schema([*master_columns(source), Column(INGEST_EPOCH, FieldType.LONG)])
