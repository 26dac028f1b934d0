"""The aggregation monoids: ``zero``, ``plus`` (associative), ``lift`` and ``present``.

One class per aggregation, picked from :data:`MONOIDS` by name. Batch (Spark), speed (Spark
Structured Streaming) and serving (the merge, rollups) all combine partial aggregates with
these ``plus`` functions, so a value split across batch and real-time parts sums to exactly
what one pass over all events gives.

SQL null semantics: a null input is ignored, never turned into a zero. An aggregate over no
non-null input is ``None`` (presented as null), except ``count`` which is 0.

A state is what is stored: a tuple of column values (see :meth:`Monoid.columns`). Sketches
are Apache DataSketches serialized bytes, the same format Spark's ``hll_sketch_agg`` and
``kll_sketch_agg_double`` write.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from functools import reduce
from typing import Any, ClassVar

from lamina.errors import QueryError
from lamina.schema import FieldType


class Monoid(ABC):
    """An aggregation's algebra. States are tuples matching :meth:`columns`, or ``None``."""

    name: ClassVar[str]
    needs_field: ClassVar[bool] = True
    numeric_only: ClassVar[bool] = False
    exact: ClassVar[bool] = True

    def __init__(self, field_type: str | None = None, **params: Any) -> None:
        self.field_type = field_type
        self.params = params

    @abstractmethod
    def columns(self, prefix: str) -> list[tuple[str, str]]:
        """Stored columns ``(name, cql_type)`` of this aggregation named ``prefix``."""

    def zero(self) -> Any:
        """The identity of :meth:`plus`."""
        return None

    def plus(self, a: Any, b: Any) -> Any:
        """Combine two states; associative, with :meth:`zero` as identity.

        ``None`` (no non-null input yet) is the identity: SQL null semantics live here once.
        """
        if a is None:
            return b
        if b is None:
            return a
        return self.combine(a, b)

    @abstractmethod
    def combine(self, a: Any, b: Any) -> Any:
        """Combine two non-null states."""

    @abstractmethod
    def lift(self, value: Any) -> Any:
        """The state of one event whose field value is ``value`` (``None`` = SQL null)."""

    @abstractmethod
    def present(self, state: Any, **query: Any) -> Any:
        """The user-facing value of a state (JSON-serializable)."""

    def total(self, states: Iterable[Any]) -> Any:
        """``plus`` of all ``states`` from :meth:`zero` (subclasses may fold faster: the
        same value, as the monoid laws give)."""
        return reduce(self.plus, states, self.zero())

    def from_row(self, values: tuple[Any, ...]) -> Any:
        """State from the stored column values (as read back from Cassandra or Spark)."""
        return values[0]

    def to_row(self, state: Any) -> tuple[Any, ...]:
        return (state,)

    def agrees(self, a: Any, b: Any) -> bool:
        """Whether two states of the same events agree, whichever engine built them.

        Exact for integers; floating-point sums may differ in the last bits with the order of
        addition (Spark's partitions vs. a fold of per-epoch states), so floats agree within
        a relative 1e-9. Sketches override this with their stated error.
        """
        return _close(a, b)


def _close(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, tuple):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) or isinstance(b, float):
        return bool(abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b)))
    return bool(a == b)


class Count(Monoid):
    """Count of events, or of non-null values of ``field`` when one is given."""

    name = "count"
    needs_field = False

    def columns(self, prefix: str) -> list[tuple[str, str]]:
        return [(prefix, "bigint")]

    def zero(self) -> int:
        return 0

    def combine(self, a: Any, b: Any) -> int:
        return int(a) + int(b)

    def total(self, states: Iterable[Any]) -> int:
        return sum(int(s) for s in states if s is not None)

    def lift(self, value: Any) -> int:
        return 0 if value is None and self.params.get("field") else 1

    def present(self, state: Any, **query: Any) -> int:
        return int(state or 0)


def _cql_number(field_type: str | None) -> str:
    return "bigint" if field_type == FieldType.LONG else "double"


class Sum(Monoid):
    """A sum of longs is an arbitrary-precision integer (Cassandra ``varint``; Spark sums
    it as ``decimal(38,0)``): two values near 5e18 do not overflow. Doubles sum as doubles."""

    name = "sum"
    numeric_only = True

    def columns(self, prefix: str) -> list[tuple[str, str]]:
        return [(prefix, "varint" if self.field_type == FieldType.LONG else "double")]

    def combine(self, a: Any, b: Any) -> Any:
        return a + b

    def total(self, states: Iterable[Any]) -> Any:
        present = [s for s in states if s is not None]
        return sum(present[1:], present[0]) if present else None

    def lift(self, value: Any) -> Any:
        return value

    def present(self, state: Any, **query: Any) -> Any:
        return state


class Min(Sum):
    name = "min"

    def columns(self, prefix: str) -> list[tuple[str, str]]:
        return [(prefix, _cql_number(self.field_type))]

    def combine(self, a: Any, b: Any) -> Any:
        return min(a, b)

    def total(self, states: Iterable[Any]) -> Any:
        return min((s for s in states if s is not None), default=None)


class Max(Min):
    name = "max"

    def combine(self, a: Any, b: Any) -> Any:
        return max(a, b)

    def total(self, states: Iterable[Any]) -> Any:
        return max((s for s in states if s is not None), default=None)


class Mean(Monoid):
    """Stored as (sum, count) of the non-null values, never as a mean."""

    name = "mean"
    numeric_only = True

    def columns(self, prefix: str) -> list[tuple[str, str]]:
        return [(f"{prefix}_sum", "double"), (f"{prefix}_count", "bigint")]

    def combine(self, a: Any, b: Any) -> Any:
        return (a[0] + b[0], a[1] + b[1])

    def lift(self, value: Any) -> Any:
        return None if value is None else (float(value), 1)

    def from_row(self, values: tuple[Any, ...]) -> Any:
        total, n = values
        return None if not n else (float(total or 0.0), int(n))

    def to_row(self, state: Any) -> tuple[Any, ...]:
        return (None, 0) if state is None else (state[0], state[1])

    def present(self, state: Any, **query: Any) -> float | None:
        return None if not state or not state[1] else state[0] / state[1]


class Distinct(Monoid):
    """Approximate distinct count: an HLL sketch (DataSketches, ``lg_k`` = log2 of K)."""

    name = "distinct"
    exact = False
    DEFAULT_LG_K = 12

    @property
    def lg_k(self) -> int:
        return int(self.params.get("lg_k", self.DEFAULT_LG_K))

    def columns(self, prefix: str) -> list[tuple[str, str]]:
        return [(prefix, "blob")]

    def combine(self, a: Any, b: Any) -> Any:
        import datasketches as ds

        union = ds.hll_union(self.lg_k)
        union.update(ds.hll_sketch.deserialize(bytes(a)))
        union.update(ds.hll_sketch.deserialize(bytes(b)))
        return union.get_result(ds.tgt_hll_type.HLL_8).serialize_compact()

    def lift(self, value: Any) -> Any:
        if value is None:
            return None
        import datasketches as ds

        sketch = ds.hll_sketch(self.lg_k, ds.tgt_hll_type.HLL_8)
        sketch.update(value)
        return sketch.serialize_compact()

    def present(self, state: Any, **query: Any) -> int:
        if state is None:
            return 0
        import datasketches as ds

        estimate: float = ds.hll_sketch.deserialize(bytes(state)).get_estimate()
        return round(estimate)

    def relative_error(self) -> float:
        """About 3 standard deviations of HLL's relative error at this ``lg_k``."""
        return 3 * 1.04 / (2 ** (self.lg_k / 2))

    def agrees(self, a: Any, b: Any) -> bool:
        """Estimates within :meth:`relative_error` of each other: a sketch built in one pass
        and a union of per-epoch sketches may use different estimators. Small sets (exact in
        HLL's list and set modes) must give the same count."""
        x, y = self.present(a), self.present(b)
        return abs(x - y) <= self.relative_error() * max(x, y)


class Quantiles(Monoid):
    """A KLL sketch of the values (DataSketches doubles); the quantile is asked at query time."""

    name = "quantiles"
    numeric_only = True
    exact = False
    DEFAULT_K = 200

    @property
    def k(self) -> int:
        return int(self.params.get("k", self.DEFAULT_K))

    def columns(self, prefix: str) -> list[tuple[str, str]]:
        return [(prefix, "blob")]

    def combine(self, a: Any, b: Any) -> Any:
        import datasketches as ds

        sketch = ds.kll_doubles_sketch.deserialize(bytes(a))
        sketch.merge(ds.kll_doubles_sketch.deserialize(bytes(b)))
        return sketch.serialize()

    def lift(self, value: Any) -> Any:
        if value is None:
            return None
        import datasketches as ds

        sketch = ds.kll_doubles_sketch(self.k)
        sketch.update(float(value))
        return sketch.serialize()

    def present(self, state: Any, **query: Any) -> float | None:
        q = float(query.get("q", 0.5))
        if not 0.0 <= q <= 1.0:
            raise QueryError(f"quantile q={q} is out of range", hint="use 0 <= q <= 1, e.g. 0.95")
        if state is None:
            return None
        import datasketches as ds

        sketch = ds.kll_doubles_sketch.deserialize(bytes(state))
        if sketch.is_empty():  # only nulls were seen
            return None
        return float(sketch.get_quantile(q))

    def rank_error(self) -> float:
        """Normalized rank error of the sketch at this ``k`` (two-sided, ~99% confidence)."""
        import datasketches as ds

        return float(ds.kll_doubles_sketch.get_normalized_rank_error(self.k, False))

    AGREE_QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)

    def agrees(self, a: Any, b: Any) -> bool:
        """Same count, minimum and maximum (exact in KLL), and each of
        :data:`AGREE_QUANTILES` of one sketch ranks within twice :meth:`rank_error` of ``q``
        in the other (KLL compaction is randomized: two sketches of the same values differ)."""
        if a is None or b is None:
            return a is None and b is None
        import datasketches as ds

        x = ds.kll_doubles_sketch.deserialize(bytes(a))
        y = ds.kll_doubles_sketch.deserialize(bytes(b))
        if x.n != y.n:
            return False
        if x.is_empty():
            return True
        if (x.get_min_value(), x.get_max_value()) != (y.get_min_value(), y.get_max_value()):
            return False
        eps = 2 * self.rank_error()
        for q in self.AGREE_QUANTILES:
            v = x.get_quantile(q)
            if not y.get_rank(v, False) - eps <= q <= y.get_rank(v, True) + eps:
                return False
        return True


MONOIDS: dict[str, type[Monoid]] = {
    m.name: m for m in (Count, Sum, Min, Max, Mean, Distinct, Quantiles)
}
"""Every aggregation by the name used in view definitions."""
