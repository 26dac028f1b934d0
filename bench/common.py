"""Shared helpers of the benchmarks: private settings, vectorized event generation, DuckDB SQL.

Imported by ``bench/batch_bench.py`` and ``bench/query_bench.py`` (run as scripts from the
repository root, so this directory is on ``sys.path``). Nothing here writes outside the
private master directory and keyspace it is given.
"""

from __future__ import annotations

import math
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lamina.master import (  # noqa: E402
    arrow_schema,
    imports_dir,
    record_progress,
    write_epoch,
)
from lamina.schema import EVENT_TIME  # noqa: E402
from lamina.settings import Settings, load_settings  # noqa: E402
from lamina.views import Condition, Source, View  # noqa: E402

HOUR = 3600
# Key cardinalities of the synthetic sources (the view's group-by keys).
CARDINALITY = {"url": 5_000, "sensor": 200, "customer": 1_000}
VISITORS = 1_000_000
SITES = 20
INSTANCE_TYPES = ["t3.micro", "t3.large", "m5.xlarge", "c6g.2xlarge", "r6i.4xlarge", "p4d.24xl"]


def private_settings(workdir: Path, prefix: str) -> Settings:
    """Settings from conf/lamina.toml + LAMINA_* env vars, with a unique keyspace and a
    master dataset under ``workdir`` (like ``tests.conftest.isolated``)."""
    base = load_settings(ROOT / "conf" / "lamina.toml")
    ks = f"{prefix}_{uuid.uuid4().hex[:10]}"
    return base.model_copy(
        update={
            "cassandra": base.cassandra.model_copy(update={"keyspace": ks}),
            "pipeline": base.pipeline.model_copy(
                update={
                    "master_dir": workdir / ks / "master",
                    "views_file": ROOT / "conf" / "views.toml",
                }
            ),
        }
    )


def spark_cores(master: str) -> int:
    """Cores a Spark master uses: N of ``local[N]``, all for ``local[*]``/``local``."""
    if master.startswith("local"):
        inner = master[master.find("[") + 1 : master.find("]")] if "[" in master else "1"
        inner = inner.split(",")[0]
        return (os.cpu_count() or 1) if inner == "*" else int(inner)
    return os.cpu_count() or 1


# -- vectorized generation ------------------------------------------------------------------


def _hex_ids(rng: np.random.Generator, n: int) -> pa.Array:
    """``n`` random UUID-formatted strings (36 chars), built as one Arrow buffer."""
    digits = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    nibbles = rng.integers(0, 16, size=(n, 32), dtype=np.uint8)
    chars = digits[nibbles]
    dash = np.full((n, 1), ord("-"), dtype=np.uint8)
    mat = np.ascontiguousarray(
        np.hstack(
            [
                chars[:, :8],
                dash,
                chars[:, 8:12],
                dash,
                chars[:, 12:16],
                dash,
                chars[:, 16:20],
                dash,
                chars[:, 20:],
            ]
        )
    )
    offsets = np.arange(0, 36 * (n + 1), 36, dtype=np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(mat.tobytes()))


def _labels(prefix: str, idx: np.ndarray) -> pa.Array:
    """``prefix + str(i)`` for each index, vectorized in Arrow."""
    return pc.binary_join_element_wise(prefix, pa.array(idx).cast(pa.string()), "")


def _with_nulls(arr: pa.Array, rng: np.random.Generator, frac: float) -> pa.Array:
    if frac <= 0:
        return arr
    mask = pa.array(rng.random(len(arr)) < frac)
    return pc.if_else(mask, pa.scalar(None, arr.type), arr)


def _zipf_index(rng: np.random.Generator, n: int, card: int, a: float = 1.1) -> np.ndarray:
    """Skewed key indices in ``[0, card)`` (a few hot keys, a long tail)."""
    return (rng.zipf(a, n) - 1) % card


def _event_times(rng: np.random.Generator, n: int, start: float, end: float) -> np.ndarray:
    """Event times in ms, uniform over ``[start, end)`` seconds."""
    return rng.integers(int(start * 1000), int(end * 1000), size=n, dtype=np.int64)


def generate_chunk(
    source: Source,
    n: int,
    rng: np.random.Generator,
    start: float,
    end: float,
    *,
    dup_frac: float = 0.01,
    cardinality: dict[str, int] | None = None,
    offset0: int = 0,
) -> pa.Table:
    """``n`` rows of a master file of ``source`` (one of the three example sources).

    About ``dup_frac`` of the rows are redeliveries: exact copies (same event id and
    payload) of other rows of the chunk, as a producer retry would make.
    """
    card = {**CARDINALITY, **(cardinality or {})}
    n_dup = int(n * dup_frac)
    m = n - n_dup
    ms = _event_times(rng, m, start, end)
    cols: dict[str, pa.Array] = {}
    if source.name == "pageviews":
        cols["event_id"] = _hex_ids(rng, m)
        ts = pa.array(ms.astype("datetime64[ms]"))
        cols["ts"] = pc.strftime(ts, format="%Y-%m-%dT%H:%M:%SZ")  # ms precision in %S
        cols["url"] = _with_nulls(_labels("/p/", _zipf_index(rng, m, card["url"])), rng, 0.005)
        cols["visitor"] = _with_nulls(_labels("v", rng.integers(0, VISITORS, m)), rng, 0.02)
        status = rng.choice(np.array([200, 200, 200, 200, 200, 301, 304, 404, 500]), m)
        cols["status"] = _with_nulls(pa.array(status, pa.int64()), rng, 0.01)
        load = np.round(rng.lognormal(5.0, 0.8, m), 3)
        cols["load_ms"] = _with_nulls(pa.array(load, pa.float64()), rng, 0.05)
    elif source.name == "sensors":
        cols["reading_id"] = _hex_ids(rng, m)
        cols["ts_ms"] = pa.array(ms, pa.int64())
        sensor = rng.integers(0, card["sensor"], m)
        cols["sensor"] = _labels("s-", sensor)
        cols["site"] = _with_nulls(_labels("site-", sensor % SITES), rng, 0.01)
        temp = np.round(15 + (sensor % 17) + rng.normal(0, 3, m), 2)
        cols["temperature"] = _with_nulls(pa.array(temp, pa.float64()), rng, 0.02)
    elif source.name == "metering":
        cols["usage_id"] = _hex_ids(rng, m)
        cols["ts"] = pa.array(ms / 1000.0, pa.float64())
        cols["customer"] = _labels("c-", _zipf_index(rng, m, card["customer"]))
        types = pa.array(INSTANCE_TYPES)
        cols["instance_type"] = pc.take(types, rng.integers(0, len(INSTANCE_TYPES), m))
        secs = rng.integers(1, 3601, m)
        cols["instance_seconds"] = _with_nulls(pa.array(secs, pa.int64()), rng, 0.01)
    else:
        raise ValueError(f"no generator for source {source.name!r}")
    missing = set(source.fields) - set(cols)
    if missing:  # the source definition changed: fail loudly rather than write nulls
        raise ValueError(f"source {source.name!r}: generator lacks fields {sorted(missing)}")
    cols[EVENT_TIME] = pa.array(ms / 1000.0, pa.float64())
    cols["topic"] = pa.array(np.full(m, source.topic, dtype=object), pa.string())
    cols["partition"] = pa.array(rng.integers(0, 2, m).astype(np.int32), pa.int32())
    cols["offset"] = pa.array(np.arange(offset0, offset0 + m, dtype=np.int64))
    schema = arrow_schema(source)
    table = pa.table([cols[f.name] for f in schema], schema=schema)
    if n_dup:
        dups = table.take(pa.array(rng.integers(0, m, n_dup)))
        table = pa.concat_tables([table, dups])
    return table


@dataclass
class Generated:
    source: str
    rows: int
    files: int
    epochs: list[int]
    cutoff: int
    bytes: int
    seconds: float
    root: Path
    """The directory holding the ``ingest_epoch=<E>`` partitions written
    (``<source>/imports/``: each chunk a committed import, ``lamina.master.write_epoch``)."""


def generate_source(
    settings: Settings,
    source: Source,
    n: int,
    *,
    start: float,
    end: float,
    chunk_rows: int = 1_000_000,
    seed: int = 7,
    dup_frac: float = 0.01,
    cardinality: dict[str, int] | None = None,
    on_chunk: Callable[[int], None] | None = None,
) -> Generated:
    """Write ``n`` events of ``source`` as master files, one ingest epoch per chunk, and
    record a finished writer's progress so the batch cutoff covers all of them."""
    t0 = time.monotonic()
    rng = np.random.default_rng(seed)
    eps = settings.pipeline.epoch_seconds
    n_chunks = max(1, math.ceil(n / chunk_rows))
    # Ingest epochs just before now, one per chunk (as if archived over n_chunks epochs).
    first = (int(time.time()) // eps - n_chunks - 1) * eps
    writer = f"bench-{uuid.uuid4().hex[:8]}"
    epochs, size, done = [], 0, 0
    root = imports_dir(settings, source)
    for i in range(n_chunks):
        rows = min(chunk_rows, n - done)
        table = generate_chunk(
            source, rows, rng, start, end, dup_frac=dup_frac, cardinality=cardinality, offset0=done
        )
        epoch = first + i * eps
        path = write_epoch(settings, source, epoch, table, writer)
        size += path.stat().st_size
        epochs.append(epoch)
        done += rows
        if on_chunk:
            on_chunk(rows)
    cutoff = epochs[-1] + eps
    record_progress(settings, source, writer, cutoff, active=False)
    return Generated(
        source.name, done, n_chunks, epochs, cutoff, size, round(time.monotonic() - t0, 3), root
    )


# -- DuckDB: the same aggregation as engine.translate.aggregate -----------------------------


def _sql_literal(v: Any) -> str:
    if isinstance(v, bool):
        return "TRUE" if v else "FALSE"
    if isinstance(v, int | float):
        return repr(v)
    return "'" + str(v).replace("'", "''") + "'"


def _sql_condition(c: Condition) -> str:
    col = f'"{c.field}"'
    if c.op == "is_null":
        return f"{col} IS NULL"
    if c.op == "not_null":
        return f"{col} IS NOT NULL"
    if c.op in ("in", "not_in"):
        items = ", ".join(_sql_literal(v) for v in c.value)
        # SQL NOT IN with a null field is null -> not selected, as in Lamina.
        return f"{col} {'IN' if c.op == 'in' else 'NOT IN'} ({items})"
    op = {"==": "="}.get(c.op, c.op)
    return f"{col} {op} {_sql_literal(c.value)}"


def duckdb_sql(view: View, root: Path, cutoff: int, quantile: float = 0.5) -> str:
    """DuckDB SQL: read the master files of epochs < cutoff, dedup by event id, filter, drop
    null keys, bucket by event time (ms floor, as Spark) and aggregate per (keys, bucket)."""
    src = view.source
    cols = ", ".join(f'"{c}"' for c in [*src.fields, EVENT_TIME])
    width_ms = view.bucket.seconds * 1000
    where = [_sql_condition(c) for c in view.filter] + [f'"{k}" IS NOT NULL' for k in view.keys]
    aggs = []
    for name, a in view.aggregations.items():
        col = f'"{a.field}"' if a.field else "*"
        if a.fn == "count":
            aggs.append(f"count({col}) AS {name}")
        elif a.fn == "sum" and view.source.fields[a.field or ""] == "long":
            aggs.append(f"sum({col})::BIGINT AS {name}")  # as Spark: long, not HUGEINT
        elif a.fn in ("sum", "min", "max"):
            aggs.append(f"{a.fn}({col}) AS {name}")
        elif a.fn == "mean":
            aggs.append(f"avg({col}) AS {name}")
        elif a.fn == "distinct":
            aggs.append(f"approx_count_distinct({col}) AS {name}")
        elif a.fn == "quantiles":
            aggs.append(f"approx_quantile({col}, {quantile}) AS {name}")
        else:
            raise ValueError(f"no DuckDB translation for {a.fn!r}")
    keys = ", ".join(f'"{k}"' for k in view.keys)
    glob = _committed_glob(root)
    return (
        f'WITH ev AS (SELECT DISTINCT ON ("{src.event_id}") {cols} '
        f"FROM read_parquet('{glob}', hive_partitioning = true) "
        f"WHERE ingest_epoch < {cutoff}) "
        f"SELECT {keys}, "
        f"(floor(floor({EVENT_TIME} * 1000) / {width_ms}) * {view.bucket.seconds})::BIGINT "
        f"AS bucket, {', '.join(aggs)} FROM ev WHERE {' AND '.join(where)} "
        f"GROUP BY ALL"
    )


def _committed_glob(root: Path) -> str:
    """Every Parquet file of the committed imports under ``root`` (``<source>/imports``):
    only committed imports are in ``ingest_epoch=<E>/``, directly (before manifests) or in
    their own directory; imports being written are under ``_staging/``."""
    return str(root / "ingest_epoch=*" / "**" / "*.parquet")


def duckdb_events_sql(view: View, root: Path, cutoff: int) -> str:
    glob = _committed_glob(root)
    return (
        f'SELECT count(DISTINCT "{view.source.event_id}") FROM '
        f"read_parquet('{glob}', hive_partitioning = true) WHERE ingest_epoch < {cutoff}"
    )


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (0 if empty)."""
    if not sorted_values:
        return 0.0
    i = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[i]


def chunks_of(n: int, size: int) -> Iterator[int]:
    while n > 0:
        yield min(n, size)
        n -= size
