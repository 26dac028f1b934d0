"""The one place a view becomes Spark: filter, bucket, and aggregate into monoid states.

Batch (:mod:`batch.run`) and speed (:mod:`speed`) both call :func:`aggregate`, so the two
engines cannot diverge. The output columns are exactly ``view.keys``, ``bucket``, any extra
group columns, then ``view.value_columns`` — the states :mod:`lamina.monoids` merges.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from lamina.events import EVENT_TIME
from lamina.views import Condition, View

SPARK_TYPES: dict[str, T.DataType] = {
    "string": T.StringType(),
    "long": T.LongType(),
    "double": T.DoubleType(),
    "boolean": T.BooleanType(),
}


def condition(c: Condition) -> Column:
    """A filter term as a Spark predicate; SQL nulls never match (as in ``Condition.matches``)."""
    col = F.col(c.field)
    ops: dict[str, Callable[[], Column]] = {
        "==": lambda: col == F.lit(c.value),
        "!=": lambda: col != F.lit(c.value),
        "<": lambda: col < F.lit(c.value),
        "<=": lambda: col <= F.lit(c.value),
        ">": lambda: col > F.lit(c.value),
        ">=": lambda: col >= F.lit(c.value),
        "in": lambda: col.isin(list(c.value)),
        "not_in": lambda: ~col.isin(list(c.value)),
        "is_null": lambda: col.isNull(),
        "not_null": lambda: col.isNotNull(),
    }
    pred = ops[c.op]()
    return pred if c.op == "is_null" else F.coalesce(pred, F.lit(False))


def bucket_column(view: View) -> Column:
    """Event-time bucket start in epoch seconds, floored at millisecond precision."""
    width_ms = view.bucket.seconds * 1000
    millis = F.floor(F.col(EVENT_TIME) * 1000).cast("long")
    return (F.floor(millis / F.lit(width_ms)) * F.lit(view.bucket.seconds)).cast("long")


def _agg_exprs(view: View) -> list[Column]:
    exprs: list[Column] = []
    for name, agg in view.aggregations.items():
        m = view.monoids[name]
        col = F.col(agg.field) if agg.field else F.lit(1)
        if agg.fn == "count":
            exprs.append(F.count(col).alias(name))
        elif agg.fn == "sum":
            exprs.append(F.sum(col).alias(name))
        elif agg.fn == "min":
            exprs.append(F.min(col).alias(name))
        elif agg.fn == "max":
            exprs.append(F.max(col).alias(name))
        elif agg.fn == "mean":
            exprs.append(F.sum(col.cast("double")).alias(f"{name}_sum"))
            exprs.append(F.count(col).alias(f"{name}_count"))
        elif agg.fn == "distinct":
            lg_k = m.params.get("lg_k", 12)
            ftype = view.source.fields[agg.field or ""]
            # hll_sketch_agg takes strings, ints, longs and binary; doubles/booleans go as text.
            arg = col if ftype in ("string", "long") else col.cast("string")
            exprs.append(F.hll_sketch_agg(arg, lg_k).alias(name))
        elif agg.fn == "quantiles":
            k = m.params.get("k", 200)
            exprs.append(F.kll_sketch_agg_double(col.cast("double"), k).alias(name))
        else:  # pragma: no cover - views are validated against MONOIDS
            raise ValueError(f"no Spark translation for aggregation {agg.fn!r}")
    return exprs


def aggregate(events: DataFrame, view: View, extra_groups: Sequence[str] = ()) -> DataFrame:
    """Aggregate parsed events of ``view.source`` into per-(key, bucket[, extras]) states.

    ``events`` has the source's typed fields and ``_event_time`` (float seconds). Rows whose
    key fields are null are dropped (a key must be addressable). Works on batch and
    streaming DataFrames alike.
    """
    df = events
    for c in view.filter:
        df = df.where(condition(c))
    for k in view.keys:
        df = df.where(F.col(k).isNotNull())
    df = df.withColumn("bucket", bucket_column(view))
    groups = [*view.keys, "bucket", *extra_groups]
    return df.groupBy(*groups).agg(*_agg_exprs(view))


def event_schema(view_or_fields: View | dict[str, str]) -> T.StructType:
    """Spark schema of parsed events: the source's typed fields plus ``_event_time``."""
    fields = view_or_fields.source.fields if isinstance(view_or_fields, View) else view_or_fields
    return T.StructType(
        [T.StructField(f, SPARK_TYPES[t], True) for f, t in fields.items()]
        + [T.StructField(EVENT_TIME, T.DoubleType(), False)]
    )
