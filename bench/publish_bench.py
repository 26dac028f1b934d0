"""Publish-throughput benchmark: how fast a batch version's rows go into Cassandra.

Writes the same rows, shaped like the minute-bucketed ``iot_temperature`` view's (``--rows``
rows over ``--partitions`` sensors, each row the view's state columns with a ``--blob-bytes``
KLL blob), into a fresh version table (``b_<view>_v<N>``, :func:`serving.schema.batch_ddl`)
of a private keyspace, once per configuration, with :func:`serving.writer.write_grouped`
(the code path of ``partition_writer``) from ``--processes`` client processes, each writing
whole partitions, rows sorted by partition:

* ``single``: one prepared insert per row (``max_rows=1``; the batch writer before issue 13);
* ``batched``: a partition's rows in unlogged batches of at most ``max_rows`` statements and
  ``serving.writer.BATCH_BYTES`` estimated bytes.

Reported per configuration: rows/s, requests, client CPU seconds (all client processes) and
the node's CPU seconds over the same interval (when the stack's pid is known), rows/s per
client process, and rows per CPU-second of client + node (the fair "per core" figure when
the client and the node share the machine's cores). Every configuration's table is counted
after its run (a wrong count fails the run).

Run from the repository root:  .venv/bin/python bench/publish_bench.py --rows 200000
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing as mp
import os
import platform
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import common  # bench/common.py (also puts the repository root on sys.path)
from rich.console import Console
from rich.table import Table

from lamina.settings import CassandraSettings, Settings
from lamina.views import View, load_views
from serving.cassandra import close_shared, ensure_keyspace, session, shared_session
from serving.schema import batch_ddl, batch_table, insert_cql
from serving.writer import BATCH_BYTES, write_grouped

console = Console(width=None if sys.stdout.isatty() else 160)

DEFAULT_CONFIGS = (
    "single:1:64,single:1:256,batched:20:64,batched:100:16,batched:100:64,batched:200:64"
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="publish_bench.py",
        description="Rows/s of single inserts vs partition-grouped unlogged batches into a "
        "batch version table (private keyspace, dropped at the end).",
    )
    p.add_argument("--rows", type=int, default=200_000, help="rows per configuration")
    p.add_argument("--partitions", type=int, default=2_000, help="Cassandra partitions (keys)")
    p.add_argument("--blob-bytes", type=int, default=120, help="bytes of each row's sketch blob")
    p.add_argument("--view", default="iot_temperature", help="view whose table shape is used")
    p.add_argument(
        "--processes", default="1", help="comma-separated client process counts (default 1)"
    )
    p.add_argument(
        "--configs",
        default=DEFAULT_CONFIGS,
        help="comma-separated MODE:MAX_ROWS:CONCURRENCY (MODE single or batched; default "
        f"{DEFAULT_CONFIGS})",
    )
    p.add_argument(
        "--workdir", type=Path, default=Path("/tmp/lamina-bench"), help="JSON result directory"
    )
    p.add_argument("--json", type=Path, default=None, help="result file")
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args(argv)
    if args.rows < 1 or args.partitions < 1 or args.partitions > args.rows:
        p.error("need 1 <= --partitions <= --rows")
    return args


def make_rows(view: View, rows: int, partitions: int, blob: int, seed: int) -> list[tuple]:
    """``rows`` rows of ``view``'s batch table, ``partitions`` keys, sorted by key then
    bucket (as :func:`batch.recompute.write_input` hands them to a task)."""
    rng = random.Random(seed)
    make = {
        "bigint": lambda: rng.randrange(1, 100),
        "double": lambda: rng.uniform(-20, 40),
        "varint": lambda: rng.randrange(10**6),
        "blob": lambda: rng.randbytes(blob),
    }
    per = [rows // partitions + (i < rows % partitions) for i in range(partitions)]
    out = []
    for i, n in enumerate(per):
        key = (f"sensor-{i:06d}",) * len(view.keys)
        for b in range(n):
            out.append((*key, 1_700_000_000 + 60 * b, *(make[t]() for _, t in view.value_columns)))
    return out


def node_cpu_s(pid: int | None) -> float | None:
    """CPU seconds (user + system) the process ``pid`` has used, from ``/proc``."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cassandra_pid(settings: Settings) -> int | None:
    from lamina.stack.manager import Stack

    try:
        return next(s.pid for s in Stack(settings).status() if s.name == "cassandra")
    except Exception:  # not our stack's layout: no node CPU figure
        return None


_ROWS: list[tuple] = []  # inherited by forked client processes


def _client(
    cass: CassandraSettings, cql: str, share: tuple[int, int], key_len: int, cfg: tuple[int, int]
) -> tuple[int, int, float, float, float]:
    """One client process: write rows ``share`` (whole partitions); (rows, requests, CPU s,
    start and end of the writes on the system-wide monotonic clock, connecting excluded)."""
    max_rows, concurrency = cfg
    t0 = time.process_time()
    s = shared_session(cass, cass.keyspace)
    stmt = s.prepare(cql)
    start = time.monotonic()
    try:
        done = write_grouped(
            s,
            stmt,
            iter(_ROWS[share[0] : share[1]]),
            key_len,
            concurrency,
            max_rows=max_rows,
            max_bytes=BATCH_BYTES,
        )
    except Exception as exc:  # driver errors do not pickle back to the parent
        raise RuntimeError(f"{type(exc).__name__}: {exc}") from None
    end = time.monotonic()
    cpu = time.process_time() - t0
    close_shared()
    return done.rows, done.requests, cpu, start, end


def shares(rows: Sequence[tuple], key_len: int, n: int) -> list[tuple[int, int]]:
    """``n`` contiguous index ranges of ``rows``, cut at partition boundaries."""
    bounds = [0]
    for i in range(1, n):
        j = len(rows) * i // n
        while 0 < j < len(rows) and rows[j][:key_len] == rows[j - 1][:key_len]:
            j += 1
        bounds.append(max(j, bounds[-1]))
    bounds.append(len(rows))
    return [(a, b) for a, b in itertools.pairwise(bounds) if b > a]


def measure(
    settings: Settings,
    view: View,
    version: int,
    rows: list[tuple],
    *,
    processes: int,
    max_rows: int,
    concurrency: int,
    node_pid: int | None,
) -> dict[str, Any]:
    """Write ``rows`` into a fresh table ``b_<view>_v<version>`` from ``processes`` client
    processes; the figures of the run (see the module docstring). Raises if the table then
    holds another number of rows."""
    cass = settings.cassandra
    table = batch_table(view, version)
    with session(cass) as s:
        ensure_keyspace(s, cass)
        s.execute(batch_ddl(view, version, cass.keyspace), timeout=60)
    _ROWS[:] = rows
    cql = insert_cql(view, table)
    parts = shares(rows, len(view.keys), processes)
    cpu0 = node_cpu_s(node_pid)
    ctx = mp.get_context("fork")
    with ctx.Pool(len(parts)) as pool:
        outs = pool.starmap(
            _client, [(cass, cql, p, len(view.keys), (max_rows, concurrency)) for p in parts]
        )
    wall = max(o[4] for o in outs) - min(o[3] for o in outs)
    cpu1 = node_cpu_s(node_pid)
    written = sum(o[0] for o in outs)
    with session(cass, cass.keyspace) as s:
        (stored,) = s.execute(f"SELECT count(*) FROM {table}", timeout=120).one()
        s.execute(f"DROP TABLE {table}", timeout=60)
    if stored != len(rows) or written != len(rows):
        raise RuntimeError(f"{table}: {stored} rows stored, {written} written, {len(rows)} given")
    client_cpu = sum(o[2] for o in outs)
    node = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
    return {
        "processes": len(parts),
        "max_rows": max_rows,
        "max_bytes": BATCH_BYTES,
        "concurrency": concurrency,
        "rows": len(rows),
        "requests": sum(o[1] for o in outs),
        "seconds": round(wall, 3),
        "rows_per_s": round(len(rows) / wall, 1),
        "rows_per_s_per_client_process": round(len(rows) / wall / len(parts), 1),
        "client_cpu_s": round(client_cpu, 2),
        "node_cpu_s": None if node is None else round(node, 2),
        "rows_per_cpu_s": None if node is None else round(len(rows) / (client_cpu + node), 1),
    }


def report(title: str, runs: list[dict[str, Any]]) -> None:
    table = Table(title=title)
    for col in (
        "mode",
        "procs",
        "max rows",
        "in flight",
        "requests",
        "s",
        "rows/s",
        "rows/s/proc",
        "client CPU s",
        "node CPU s",
        "rows/CPU-s",
    ):
        table.add_column(col, justify="left" if col == "mode" else "right")
    for r in runs:
        table.add_row(
            "single" if r["max_rows"] == 1 else "batched",
            str(r["processes"]),
            str(r["max_rows"]),
            str(r["concurrency"]),
            f"{r['requests']:,}",
            f"{r['seconds']:.2f}",
            f"{r['rows_per_s']:,.0f}",
            f"{r['rows_per_s_per_client_process']:,.0f}",
            f"{r['client_cpu_s']:.1f}",
            "-" if r["node_cpu_s"] is None else f"{r['node_cpu_s']:.1f}",
            "-" if r["rows_per_cpu_s"] is None else f"{r['rows_per_cpu_s']:,.0f}",
        )
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    settings = common.private_settings(args.workdir.absolute(), "pbench")
    view = load_views(settings.pipeline.views_file).view(args.view)
    configs = []
    for c in args.configs.split(","):
        mode, max_rows, conc = c.split(":")
        configs.append((1 if mode == "single" else int(max_rows), int(conc)))
    procs = [int(p) for p in args.processes.split(",")]
    rows = make_rows(view, args.rows, args.partitions, args.blob_bytes, args.seed)
    pid = cassandra_pid(settings)
    console.print(
        f"[bold]Publish benchmark[/]: {len(rows):,} rows of {args.view} over "
        f"{args.partitions:,} partitions, {args.blob_bytes} B blobs; keyspace "
        f"[cyan]{settings.cassandra.keyspace}[/]; node pid {pid}; {os.cpu_count()} CPUs"
    )
    result: dict[str, Any] = {
        "benchmark": "publish",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "config": vars(args) | {"workdir": str(args.workdir), "json": str(args.json)},
        "runs": [],
    }
    version = 0
    try:
        for n in procs:
            for max_rows, conc in configs:
                version += 1
                r = measure(
                    settings,
                    view,
                    version,
                    rows,
                    processes=n,
                    max_rows=max_rows,
                    concurrency=conc,
                    node_pid=pid,
                )
                result["runs"].append(r)
                console.print(
                    f"  {n} proc, max_rows {max_rows}, {conc} in flight: "
                    f"{r['rows_per_s']:,.0f} rows/s"
                )
    finally:
        with session(settings.cassandra) as s:
            s.execute(f"DROP KEYSPACE IF EXISTS {settings.cassandra.keyspace}", timeout=120)
    report(
        f"Publish throughput: {len(rows):,} rows, {args.partitions:,} partitions, "
        f"{args.blob_bytes} B blobs",
        result["runs"],
    )
    out = args.json or args.workdir / f"publish-bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=2, default=str))
    console.print(f"results written to [cyan]{out}[/]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
