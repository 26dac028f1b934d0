"""Kafka in Spark: a topic as a streaming source, and its records parsed into events or
dead letters with the shared validator.

The parser is Spark expressions generated from the source definition (JSON into a variant,
per-field type checks on the variant's types, event times by the grammar's regex and a
strict ``try_to_timestamp``): no Python runs per record. It implements the rules of
:mod:`lamina.events` (the reference, which ``master import`` and the tests' ground truth
use); ``tests/spark/test_parser_parity.py`` feeds both the same valid and malformed records
and requires the same decisions and values.
"""

from __future__ import annotations

from pyspark.sql import Column as SparkColumn
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from lamina.events import ISO_8601, MAX_EVENT_TIME, MIN_EVENT_TIME, ROOT_KINDS
from lamina.schema import (
    EVENT_TIME,
    INGEST_EPOCH,
    KAFKA_TIMESTAMP,
    ORIGIN,
    FieldType,
    event_columns,
)
from lamina.settings import Settings
from lamina.streams import EPOCH_MARK_KEY, EPOCH_MARK_REASON, EPOCH_MARK_VALUE
from lamina.views import Source

REASON = "_reason"
RAW = "_raw"
MARK = "_mark"
"""True for an epoch mark (:data:`lamina.streams.EPOCH_MARK_KEY`): not an event, not a dead
letter; only its partition and broker timestamp count (:mod:`speed.completeness`)."""
KAFKA_ORIGIN = [c.name for c in (*ORIGIN, KAFKA_TIMESTAMP)]


def kafka_records(spark: SparkSession, settings: Settings, topic: str) -> DataFrame:
    """``topic`` as a streaming DataFrame of Kafka records, from the earliest offset."""
    reader = (
        spark.readStream.format("kafka")
        .options(**settings.kafka.spark_options())
        .option("subscribe", topic)
        .option("startingOffsets", "earliest")
        # Records deleted before they were read are detected, counted and (by default)
        # refused by the source job itself, with offsets in the message (speed.microbatch).
        .option("failOnDataLoss", "false")
        # Records of aborted transactions are never events, and a record becomes readable
        # only once its transaction commits (epoch completeness follows what was read).
        .option("kafka.isolation.level", "read_committed")
    )
    if settings.pipeline.max_offsets_per_trigger:
        reader = reader.option("maxOffsetsPerTrigger", settings.pipeline.max_offsets_per_trigger)
    return reader.load()


_INT_TYPES = ("TINYINT", "SMALLINT", "INT", "BIGINT")
_NUMBER = r"^(TINYINT|SMALLINT|INT|BIGINT|FLOAT|DOUBLE|DECIMAL\(.*)$"


def _whole(pattern: str) -> str:
    """``pattern`` (``^...$``) for Java's regex (``rlike``), matching only whole texts: Java's
    ``$`` also matches before a final line terminator (``\\n``, ``\\r``, ``\\u2028``, ...),
    ``\\z`` only at the end (the reference uses ``re.fullmatch``)."""
    assert pattern.startswith("^") and pattern.endswith("$"), pattern
    return pattern[:-1] + r"\z"


_ISO_PARSE = "yyyy-MM-dd['T'HH:mm[:ss[.SSSSSSSSS]][XXX]]"
_ISO_CANONICAL = _whole(
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}"  # date, time to the second,
    r"(\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})$"  # fraction, offset
)
"""The spelling almost every producer uses (a subset of :data:`lamina.events.ISO_8601`):
Spark's own string-to-timestamp cast parses it strictly and 5x faster than a pattern (it
would trim a final newline: the pattern must match the whole text)."""
_ISO_WHOLE = _whole(ISO_8601)


def _iso_seconds(text: SparkColumn) -> SparkColumn:
    """``text`` (grammar :data:`lamina.events.ISO_8601`) as float seconds, or null if it is
    not in the grammar or not a real time. The grammar is checked by its regex; the text is
    then brought to one spelling (``T``, ``.``, ``Z``, ``+HH:MM``) and parsed strictly by
    Spark's datetime parser (which rejects day 31 of a 30-day month, second 60, ...)."""
    canon = F.translate(text, "t ,z", "TT.Z")
    with_offset = F.regexp_replace(
        F.regexp_replace(canon, r"([+-][0-9]{2})$", "$1:00"), r"([+-][0-9]{2})([0-9]{2})$", "$1:$2"
    )
    canon = F.when(F.length(text) > 10, with_offset).otherwise(canon)
    micros = F.when(text.rlike(_ISO_CANONICAL), F.unix_micros(F.try_to_timestamp(text))).otherwise(
        F.unix_micros(F.try_to_timestamp(canon, F.lit(_ISO_PARSE)))
    )
    return F.when(text.rlike(_ISO_WHOLE), micros.cast("double") / F.lit(1e6))


def _field(
    fv: SparkColumn, kind: SparkColumn, name: str, ftype: FieldType
) -> tuple[SparkColumn, SparkColumn]:
    """The typed value of field ``name`` (its variant ``fv`` and that variant's type ``kind``;
    null when absent or JSON null), and the reason it is unusable (null when fine), by the
    rules of :func:`lamina.events._typed`."""
    present = fv.isNotNull() & ~F.is_variant_null(fv)
    wrong = F.concat(F.lit(f"field {name!r} should be {ftype}, got "), F.lower(kind))
    if ftype == FieldType.STRING:
        ok, value = kind == "STRING", F.try_variant_get(fv, "$", "string")
    elif ftype == FieldType.LONG:
        ok, value = kind.isin(*_INT_TYPES), F.try_variant_get(fv, "$", "bigint")
    elif ftype == FieldType.BOOLEAN:
        ok, value = kind == "BOOLEAN", F.try_variant_get(fv, "$", "boolean")
    else:  # double: any JSON number, by its decimal text (correctly rounded, as float())
        ok = kind.rlike(_NUMBER)
        value = F.when(
            kind.isin("DOUBLE", "FLOAT"), F.try_variant_get(fv, "$", "double")
        ).otherwise(F.try_variant_get(fv, "$", "string").try_cast("double"))
        finite = ~F.isnan(value) & (F.abs(value) != F.lit(float("inf")))
        shown = F.when(F.isnan(value), "nan").when(value > 0, "inf").otherwise("-inf")  # repr
        bad = F.when(present & ~ok, wrong).when(
            present & ~finite, F.concat(F.lit(f"field {name!r} is not a finite number: "), shown)
        )
        return F.when(present & ok & finite, value), bad
    return F.when(present & ok, value), F.when(present & ~ok, wrong)


def _first_char(text: SparkColumn) -> SparkColumn:
    """The first character of ``text`` after JSON whitespace ("" if none): trimmed from a
    64-character prefix, the whole text only when that prefix is all whitespace."""
    head = F.regexp_extract(F.substring(text, 1, 64), r"^[ \t\n\r]*([^ \t\n\r])", 1)
    whole = F.substring(F.regexp_replace(text, r"^[ \t\n\r]+", ""), 1, 1)
    return F.when(head != "", head).otherwise(whole)


def _root_kind(first: SparkColumn) -> SparkColumn:
    """:data:`lamina.events.ROOT_KINDS` (digits and ``-``: a number; else null)."""
    kind = F.lit(None).cast("string")
    for ch, name in ROOT_KINDS.items():
        kind = F.when(first == ch, F.lit(name)).otherwise(kind)
    return F.when(first.rlike("^[-0-9]$"), F.lit("number")).otherwise(kind)


def parse(df: DataFrame, source: Source, value: str = "value") -> DataFrame:
    """``df`` plus ``source``'s typed fields, :data:`EVENT_TIME` and :data:`REASON` (null if
    the event is valid; fields and time are null if not), parsed from the binary column
    ``value`` by the rules of :mod:`lamina.events`, natively (no Python per record; each
    step is its own projection so the JSON is parsed once, not once per use).
    """
    keep = [F.col(c) for c in df.columns]
    text = F.col(value).cast("string")
    df = df.select("*", F.try_parse_json(text).alias("__v"))
    v = F.col("__v")
    df = df.select(
        "*",
        # The first character of a JSON text says its type (a whole-object schema would not
        # be cheap): '{' object, '[' array, '"' string, t/f boolean, n null, else a number.
        _first_char(text).alias("__top"),
        *(F.try_variant_get(v, f"$.{f}", "variant").alias(f"__f_{f}") for f in source.fields),
    )
    df = df.select(
        "*",
        *(F.schema_of_variant(F.col(f"__f_{f}")).alias(f"__k_{f}") for f in source.fields),
        # The time field's text whatever its type (for messages and the iso8601 grammar).
        F.try_variant_get(F.col(f"__f_{source.event_time}"), "$", "string").alias("__t"),
    )
    parsed = {
        f: _field(F.col(f"__f_{f}"), F.col(f"__k_{f}"), f, t) for f, t in source.fields.items()
    }
    df = df.select(
        "*",
        *(val.alias(f"__val_{f}") for f, (val, _) in parsed.items()),
        *(bad.alias(f"__bad_{f}") for f, (_, bad) in parsed.items()),
    )
    t_text = F.col("__t")
    if source.event_time_format == "iso8601":
        seconds = _iso_seconds(t_text)
        time_bad = F.when(
            F.col("__seconds").isNull(),
            F.concat(F.lit("event time '"), t_text, F.lit("' is not ISO-8601")),
        )
    else:
        per = 1000.0 if source.event_time_format == "epoch_ms" else 1.0
        seconds = F.col(f"__val_{source.event_time}").cast("double") / F.lit(per)
        time_bad = F.lit(None).cast("string")
    df = df.select("*", seconds.alias("__seconds"))
    df = df.select("*", time_bad.alias("__time_bad"))
    seconds = F.col("__seconds")
    in_range = (seconds >= F.lit(MIN_EVENT_TIME)) & (seconds < F.lit(MAX_EVENT_TIME))
    top = F.col("__top")
    reason = F.coalesce(
        F.when(F.col(value).isNull(), F.lit("not valid JSON: an empty record")),
        F.when(~F.is_valid_utf8(text), F.lit("not valid JSON: not valid UTF-8")),
        F.when(top == "", F.lit("not valid JSON: an empty record")),
        F.when(
            top != "{",
            F.coalesce(
                F.concat(F.lit("not a JSON object but "), _root_kind(top)),
                F.lit("not valid JSON"),
            ),
        ),
        F.when(v.isNull(), F.lit("not valid JSON")),
        *(F.col(f"__bad_{f}") for f in source.fields),
        *(
            F.when(F.col(f"__val_{role}").isNull(), F.lit(f"missing field {role!r}"))
            for role in (source.event_id, source.event_time)
        ),
        F.col("__time_bad"),
        F.when(
            ~in_range,
            F.concat(
                F.lit("event time "),
                t_text,
                F.lit(f" ({source.event_time_format}) is outside 1970..2200"),
            ),
        ),
    )
    df = df.select("*", reason.alias(REASON))
    ok = F.col(REASON).isNull()
    return df.select(
        *keep,
        *(F.when(ok, F.col(f"__val_{f}")).alias(f) for f in source.fields),
        F.when(ok, seconds).alias(EVENT_TIME),
        F.col(REASON),
    )


def parse_records(records: DataFrame, source: Source, epoch_seconds: int) -> DataFrame:
    """Parse a Kafka source DataFrame (batch or streaming) of ``source``'s topic.

    Valid rows carry the typed fields, ``_event_time``, their origin and ``ingest_epoch``:
    the broker timestamp floored to ``epoch_seconds`` (the rule of
    :func:`lamina.buckets.ingest_epoch`), as epoch seconds; rejected rows carry the reason
    and the raw bytes. A record can only be accepted or rejected: nothing in it can make the
    expressions fail.

    Epoch marks (:data:`MARK` true) are neither: they carry only their origin, epoch and a
    reason saying what they are, and :func:`valid` and :func:`rejected` leave them out.
    """
    # Null-safe: a record without key or value (a tombstone) is no mark, never a null here.
    mark = F.col("key").eqNullSafe(F.lit(EPOCH_MARK_KEY)) & F.col("value").eqNullSafe(
        F.lit(EPOCH_MARK_VALUE)
    )
    parsed = parse(records.select("value", mark.alias(MARK), *KAFKA_ORIGIN), source)
    millis = F.floor(F.unix_micros(F.col("timestamp")) / 1000).cast("long")
    return parsed.select(
        *(F.when(~F.col(MARK), F.col(c.name)).alias(c.name) for c in event_columns(source)),
        F.when(F.col(MARK), F.lit(EPOCH_MARK_REASON)).otherwise(F.col(REASON)).alias(REASON),
        F.when(F.col(REASON).isNotNull() & ~F.col(MARK), F.col("value")).alias(RAW),
        MARK,
        *KAFKA_ORIGIN,
        (F.floor(millis / F.lit(epoch_seconds * 1000)) * F.lit(epoch_seconds))
        .cast("long")
        .alias(INGEST_EPOCH),
    )


def valid(parsed: DataFrame) -> DataFrame:
    return parsed.where(F.col(REASON).isNull())


def rejected(parsed: DataFrame) -> DataFrame:
    return parsed.where(F.col(REASON).isNotNull() & ~F.col(MARK))
