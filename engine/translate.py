"""The one place a view becomes Spark: filter, bucket, and aggregate into monoid states.

Batch (:mod:`batch.recompute`) and speed (:mod:`speed`) both call :func:`aggregate`, so the two
engines cannot diverge. The output columns are exactly ``view.keys``, ``bucket``, any extra
group columns, then ``view.value_columns`` — the states :mod:`lamina.monoids` merges.
:func:`merge_states` merges such rows per cell in Spark with each monoid's ``plus``
(incremental batch builds, :mod:`batch.incremental`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from lamina.schema import EVENT_TIME, FieldType
from lamina.views import MAX_KEY_BYTES, Aggregation, Condition, View


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


def _distinct(col: Column, view: View, agg: Aggregation, name: str) -> list[Column]:
    lg_k = view.monoids[name].params.get("lg_k", 12)
    ftype = view.source.fields[agg.field or ""]
    # hll_sketch_agg takes strings, ints, longs and binary; doubles/booleans go as text.
    arg = col if ftype in (FieldType.STRING, FieldType.LONG) else col.cast("string")
    return [F.hll_sketch_agg(arg, lg_k).alias(name)]


def _quantiles(col: Column, view: View, agg: Aggregation, name: str) -> list[Column]:
    k = view.monoids[name].params.get("k", 200)
    return [F.kll_sketch_agg_double(col.cast("double"), k).alias(name)]


def _sum(col: Column, view: View, agg: Aggregation, name: str) -> list[Column]:
    # Longs are summed exactly and without overflow (a varint state; see lamina.monoids.Sum).
    if view.source.fields[agg.field or ""] == FieldType.LONG:
        col = col.cast("decimal(38,0)")
    return [F.sum(col).alias(name)]


_Translation = Callable[[Column, View, Aggregation, str], list[Column]]

AGGREGATIONS: dict[str, _Translation] = {
    "count": lambda col, view, agg, name: [F.count(col).alias(name)],
    "sum": _sum,
    "min": lambda col, view, agg, name: [F.min(col).alias(name)],
    "max": lambda col, view, agg, name: [F.max(col).alias(name)],
    "mean": lambda col, view, agg, name: [
        F.sum(col.cast("double")).alias(f"{name}_sum"),
        F.count(col).alias(f"{name}_count"),
    ],
    "distinct": _distinct,
    "quantiles": _quantiles,
}
"""Each monoid's Spark aggregation: the state columns of ``Monoid.columns(name)``, in order
(``tests/spark/test_parity.py`` checks every monoid of :data:`lamina.monoids.MONOIDS` has one)."""


def _agg_exprs(view: View) -> list[Column]:
    exprs: list[Column] = []
    for name, agg in view.aggregations.items():
        col = F.col(agg.field) if agg.field else F.lit(1)
        exprs.extend(AGGREGATIONS[agg.fn](col, view, agg, name))
    return exprs


def key_fits(view: View) -> Column:
    """Whether a row's key fits a Cassandra partition key (:meth:`View.key_bytes` <=
    :data:`MAX_KEY_BYTES`; null for a null key)."""
    sizes = [
        F.octet_length(F.col(k)) if view.source.fields[k] == FieldType.STRING else F.lit(8)
        for k in view.keys
    ]
    total = sizes[0] if len(sizes) == 1 else sum((s + F.lit(3) for s in sizes), F.lit(0))
    return total <= F.lit(MAX_KEY_BYTES)


def aggregate(events: DataFrame, view: View, extra_groups: Sequence[str] = ()) -> DataFrame:
    """Aggregate parsed events of ``view.source`` into per-(key, bucket[, extras]) states.

    ``events`` has the source's typed fields and ``_event_time`` (float seconds). Rows whose
    key fields are null are dropped (a key must be addressable), and rows whose key is too
    large for Cassandra (:func:`key_fits`; the batch counts them). Works on batch and
    streaming DataFrames alike.
    """
    df = events
    for c in view.filter:
        df = df.where(condition(c))
    for k in view.keys:
        df = df.where(F.col(k).isNotNull())
    df = df.where(key_fits(view))
    df = df.withColumn("bucket", bucket_column(view))
    groups = [*view.keys, "bucket", *extra_groups]
    return df.groupBy(*groups).agg(*_agg_exprs(view))


_Merge = Callable[[View, str], list[Column]]

MERGES: dict[str, _Merge] = {
    "count": lambda view, name: [F.sum(name).alias(name)],
    "sum": lambda view, name: [F.sum(name).alias(name)],
    "min": lambda view, name: [F.min(name).alias(name)],
    "max": lambda view, name: [F.max(name).alias(name)],
    "mean": lambda view, name: [
        F.sum(f"{name}_sum").alias(f"{name}_sum"),
        F.sum(f"{name}_count").alias(f"{name}_count"),
    ],
    "distinct": lambda view, name: [F.hll_union_agg(name, False).alias(name)],
    "quantiles": lambda view, name: [
        F.kll_merge_agg_double(name, view.monoids[name].params.get("k", 200)).alias(name)
    ],
}
"""Each monoid's ``plus`` over its state columns (:data:`AGGREGATIONS`' output) as a Spark
aggregation: sums of counts, sums (``decimal(38,0)`` stays exact) and of a mean's (sum,
count), min of mins, max of maxes, the DataSketches union of HLL sketches (same ``lg_k``,
as :meth:`lamina.monoids.Distinct.combine`) and the merge of KLL sketches (the view's
``k``, as :meth:`lamina.monoids.Quantiles.combine`). SQL nulls are the identity, as
``None`` is in :meth:`lamina.monoids.Monoid.plus`. A monoid without an entry here cannot be
merged in Spark: views using it are always recomputed in full."""


def mergeable(view: View) -> list[str]:
    """The aggregations of ``view`` that :func:`merge_states` cannot merge (empty: all can)."""
    return [name for name, agg in view.aggregations.items() if agg.fn not in MERGES]


def merge_states(states: DataFrame, view: View) -> DataFrame:
    """Merge rows of :func:`aggregate`'s output (``view.keys``, ``bucket``, the value
    columns; several rows per cell allowed) into one row per (key, bucket) with the
    monoids' ``plus`` (:data:`MERGES`), in the same column order. Raises ``KeyError`` for
    an aggregation without a merge (check :func:`mergeable` first)."""
    exprs = [e for name, agg in view.aggregations.items() for e in MERGES[agg.fn](view, name)]
    return states.groupBy(*view.keys, "bucket").agg(*exprs)
