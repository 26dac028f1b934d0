"""Kafka in Spark: a topic as a streaming source, and its records parsed into events or
dead letters with the shared validator.

One Arrow-batched Python pass (``mapInArrow``) calls :func:`lamina.events.parse_event` on
every record, so the stream accepts and rejects exactly what ``master import`` and the
tests' ground truth do. Valid rows carry the typed fields, ``_event_time``, the record's
``ingest_epoch`` and its origin; rejected rows carry the reason and the raw bytes.
"""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from engine.schema import spark_schema
from lamina.events import Rejection, parse_event
from lamina.schema import (
    EVENT_TIME,
    INGEST_EPOCH,
    KAFKA_TIMESTAMP,
    ORIGIN,
    Column,
    FieldType,
    event_columns,
)
from lamina.settings import Settings
from lamina.views import Source

REASON = "_reason"
RAW = "_raw"
KAFKA_ORIGIN = [c.name for c in (*ORIGIN, KAFKA_TIMESTAMP)]


def kafka_records(spark: SparkSession, settings: Settings, topic: str) -> DataFrame:
    """``topic`` as a streaming DataFrame of Kafka records, from the earliest offset."""
    reader = (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", settings.kafka.bootstrap_servers)
        .option("subscribe", topic)
        .option("startingOffsets", "earliest")
        .option("failOnDataLoss", "false")
    )
    if settings.pipeline.max_offsets_per_trigger:
        reader = reader.option("maxOffsetsPerTrigger", settings.pipeline.max_offsets_per_trigger)
    return reader.load()


def parsed_schema(source: Source) -> T.StructType:
    """A parsed record: the event's columns (all null if rejected), why it was rejected and
    its raw bytes (null if valid), and where it came from."""
    return spark_schema(
        [
            *event_columns(source, time_nullable=True),
            Column(REASON, FieldType.STRING),
            Column(RAW, FieldType.BINARY),
            *ORIGIN,
            KAFKA_TIMESTAMP,
        ]
    )


def _parser(source: Source, schema: pa.Schema):  # type: ignore[no-untyped-def]
    names = list(source.fields)

    def parse(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            cols: dict[str, list[object]] = {n: [] for n in schema.names}
            values = batch.column("value").to_pylist()
            origin = {c: batch.column(c).to_pylist() for c in KAFKA_ORIGIN}
            for i, raw in enumerate(values):
                ev = parse_event(raw if raw is not None else b"", source)
                if isinstance(ev, Rejection):
                    for n in names:
                        cols[n].append(None)
                    cols[EVENT_TIME].append(None)
                    cols[REASON].append(ev.reason)
                    cols[RAW].append(raw)
                else:
                    for n in names:
                        cols[n].append(ev[n])
                    cols[EVENT_TIME].append(ev[EVENT_TIME])
                    cols[REASON].append(None)
                    cols[RAW].append(None)
                for c in KAFKA_ORIGIN:
                    cols[c].append(origin[c][i])
            yield pa.RecordBatch.from_pydict(cols, schema=schema)

    return parse


def parse_records(records: DataFrame, source: Source, epoch_seconds: int) -> DataFrame:
    """Parse a Kafka source DataFrame (batch or streaming) of ``source``'s topic.

    Adds ``ingest_epoch``: the broker timestamp floored to ``epoch_seconds`` (the same rule
    as :func:`lamina.buckets.ingest_epoch`), as epoch seconds.
    """
    from pyspark.sql.pandas.types import to_arrow_schema

    schema = parsed_schema(source)
    arrow = to_arrow_schema(schema, timezone="UTC")
    # Arrow carries Spark timestamps as UTC microseconds; keep that exact type.
    parsed = records.select("value", *KAFKA_ORIGIN).mapInArrow(_parser(source, arrow), schema)
    millis = F.floor(F.unix_micros(F.col("timestamp")) / 1000).cast("long")
    return parsed.withColumn(
        INGEST_EPOCH,
        (F.floor(millis / F.lit(epoch_seconds * 1000)) * F.lit(epoch_seconds)).cast("long"),
    )


def valid(parsed: DataFrame) -> DataFrame:
    return parsed.where(F.col(REASON).isNull())


def rejected(parsed: DataFrame) -> DataFrame:
    return parsed.where(F.col(REASON).isNotNull())
