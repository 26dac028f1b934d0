"""Batch-layer benchmark: Lamina's Spark batch (``batch.recompute.run_batch``) vs a DuckDB floor.

Generates synthetic events for the example sources directly as master-dataset Parquet files
(the layout of :mod:`lamina.master`) in a private master directory, records a finished
writer's progress so a cutoff exists, then for each view:

* times ``run_batch`` on real Spark (``engine.session.spark_session``) and real Cassandra, in a
  private keyspace: read + dedup, aggregate + write, publish;
* computes the same aggregation with DuckDB over the same files (dedup by event id, the
  view's filter, per key and event-time bucket; HLL -> ``approx_count_distinct``, KLL ->
  ``approx_quantile``), as the single-machine floor (no Cassandra write);

and prints both side by side, plus a JSON result file.

With ``--incremental-hours H``, the builds above keep their states (``[batch] incremental``),
then H hours of new events per source (the sources' hourly rate, event times in the H
hours after the base's) are written into new ingest epochs, and each view is built twice
at the new cutoff: incrementally (the published version ⊕ the new epochs,
:mod:`batch.incremental`) and by a full recompute, timed side by side (second table).

``--events N`` is the TOTAL number of events, split evenly across the sources of the chosen
views (the three example views use three different sources: N/3 each).

Run from the repository root:  .venv/bin/python bench/batch_bench.py --events 200000
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import common  # bench/common.py (also puts the repository root on sys.path)
import duckdb
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from lamina.views import load_views

DEFAULT_VIEWS = ["web_pageviews", "iot_temperature", "cloud_metering"]
# Wide enough for the result table when the output is piped to a file.
console = Console(width=None if sys.stdout.isatty() else 180)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="batch_bench.py",
        description="Time Lamina's Spark batch recompute against a DuckDB single-machine "
        "floor over the same synthetic master dataset (private keyspace and master dir).",
    )
    p.add_argument(
        "--events",
        type=int,
        default=10_000_000,
        help="TOTAL events to generate, split evenly across the sources of the chosen views "
        "(default 10_000_000; ~1%% of them are duplicate deliveries)",
    )
    p.add_argument(
        "--views",
        default=",".join(DEFAULT_VIEWS),
        help=f"comma-separated views of conf/views.toml (default {','.join(DEFAULT_VIEWS)})",
    )
    p.add_argument(
        "--workdir",
        type=Path,
        default=Path("/tmp/lamina-bench"),
        help="where the private master dataset and the JSON result go (default /tmp/lamina-bench)",
    )
    p.add_argument(
        "--keep-data",
        action="store_true",
        help="keep the generated Parquet files and the Cassandra keyspace (default: drop both)",
    )
    p.add_argument(
        "--span-hours",
        type=float,
        default=24.0,
        help="event times are spread uniformly over the last SPAN hours (default 24)",
    )
    p.add_argument(
        "--chunk-rows",
        type=int,
        default=1_000_000,
        help="rows per generated file (one ingest epoch each; default 1_000_000)",
    )
    p.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    p.add_argument(
        "--cores",
        type=int,
        default=None,
        help="cores for the per-core figures and DuckDB threads (default: N of spark.master "
        "local[N])",
    )
    p.add_argument(
        "--json",
        type=Path,
        default=None,
        help="result file (default WORKDIR/batch-bench-<time>.json)",
    )
    p.add_argument(
        "--no-ceiling",
        action="store_true",
        help="skip the raw write ceiling (the published rows written again into a scratch "
        "table by CORES plain Python processes, no Spark: see bench/publish_bench.py)",
    )
    p.add_argument(
        "--incremental-hours",
        type=float,
        default=0.0,
        metavar="H",
        help="also time an incremental build of H hours of new events on top of the base "
        "(the base's hourly rate), beside a full recompute of the same data (default 0: off)",
    )
    args = p.parse_args(argv)
    if args.events < 1:
        p.error("--events must be positive")
    return args


def _fmt_rate(x: float) -> str:
    return f"{x:,.0f}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    for noisy in ("cassandra", "py4j"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)

    args.workdir.mkdir(parents=True, exist_ok=True)
    settings = common.private_settings(args.workdir.absolute(), "bench")
    if args.incremental_hours > 0:  # the base builds keep their states
        settings = settings.model_copy(
            update={"batch": settings.batch.model_copy(update={"incremental": True})}
        )
    catalog = load_views(settings.pipeline.views_file)
    views = [v.strip() for v in args.views.split(",") if v.strip()]
    for v in views:
        catalog.view(v)  # raises NotFoundError naming the known views
    sources = list(dict.fromkeys(catalog.view(v).source.name for v in views))
    per_source = {s: args.events // len(sources) for s in sources}
    per_source[sources[0]] += args.events - sum(per_source.values())
    cores = args.cores or common.spark_cores(settings.spark.master)
    ks = settings.cassandra.keyspace
    console.print(
        f"[bold]Lamina batch benchmark[/]: {args.events:,} events total over {len(sources)} "
        f"source(s) ({', '.join(f'{s}={n:,}' for s, n in per_source.items())}); "
        f"keyspace [cyan]{ks}[/], master dir [cyan]{settings.master_dir}[/], "
        f"Spark {settings.spark.master}, {cores} core(s) for per-core figures"
    )

    end = (time.time() // common.HOUR) * common.HOUR
    start = end - args.span_hours * common.HOUR
    result: dict[str, Any] = {
        "benchmark": "batch",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "config": {
            "events_total": args.events,
            "events_per_source": per_source,
            "views": views,
            "span_hours": args.span_hours,
            "chunk_rows": args.chunk_rows,
            "dup_frac": 0.01,
            "spark_master": settings.spark.master,
            "shuffle_partitions": settings.spark.shuffle_partitions,
            "write_concurrency": settings.pipeline.write_concurrency,
            "cores": cores,
            "keyspace": ks,
            "master_dir": str(settings.master_dir),
            "duckdb": duckdb.__version__,
        },
        "generation": {},
        "views": {},
    }

    spark = None
    ok = True
    roots: dict[str, Path] = {}
    try:
        # (a) generation
        with Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as prog:
            for i, src in enumerate(sources):
                task = prog.add_task(f"generating {src}", total=per_source[src])
                gen = common.generate_source(
                    settings,
                    catalog.sources[src],
                    per_source[src],
                    start=start,
                    end=end,
                    chunk_rows=args.chunk_rows,
                    seed=args.seed + i,
                    on_chunk=lambda n, t=task: prog.advance(t, n),
                )
                roots[src] = gen.root
                result["generation"][src] = {
                    "rows": gen.rows,
                    "files": gen.files,
                    "parquet_bytes": gen.bytes,
                    "cutoff": gen.cutoff,
                    "seconds": gen.seconds,
                    "root": str(gen.root),
                }

        # (b) Spark batch
        from batch.recompute import run_batch
        from engine.session import spark_session

        t0 = time.monotonic()
        spark = spark_session(settings, "lamina-batch-bench")
        result["spark_startup_s"] = round(time.monotonic() - t0, 3)
        console.print(f"Spark session up in {result['spark_startup_s']:.1f}s")

        con = duckdb.connect()
        con.execute(f"SET threads = {cores}")
        for name in views:
            view = catalog.view(name)
            src = view.source.name
            n_in = result["generation"][src]["rows"]
            console.print(f"[bold]{name}[/]: Spark batch ...")
            t0 = time.monotonic()
            [br] = run_batch(
                spark, settings, catalog, [name], progress=lambda m: console.print(f"  {m}")
            )
            spark_s = time.monotonic() - t0

            # (c) DuckDB floor over the same files and cutoff
            console.print(f"[bold]{name}[/]: DuckDB ...")
            root = roots[src]
            sql = common.duckdb_sql(view, root, br.cutoff)
            t0 = time.monotonic()
            out = con.sql(sql).to_arrow_table()
            duck_s = time.monotonic() - t0
            [(duck_events,)] = con.sql(common.duckdb_events_sql(view, root, br.cutoff)).fetchall()
            check = br.rows == out.num_rows and br.events == duck_events
            ok &= check
            ceiling = None if args.no_ceiling else _ceiling(settings, view, br.version, cores)
            result["views"][name] = {
                "source": src,
                "input_events": n_in,
                "dedup_events": br.events,
                "output_rows": br.rows,
                "spark": {
                    "seconds": round(spark_s, 3),
                    "timings": br.timings,
                    "version": br.version,
                    "cutoff": br.cutoff,
                    "events_per_s": round(n_in / spark_s, 1),
                    "events_per_s_per_core": round(n_in / spark_s / cores, 1),
                    "rows_written_per_s": round(
                        br.rows / max(br.timings.get("aggregate_write_s", 0.0), 1e-9), 1
                    ),
                },
                "write_ceiling": ceiling,
                "duckdb": {
                    "seconds": round(duck_s, 3),
                    "rows": out.num_rows,
                    "dedup_events": duck_events,
                    "events_per_s": round(n_in / duck_s, 1),
                    "events_per_s_per_core": round(n_in / duck_s / cores, 1),
                    "sql": sql,
                },
                "spark_over_duckdb": round(spark_s / duck_s, 2),
                "rows_and_events_match": check,
            }
        if args.incremental_hours > 0:
            result["incremental"] = _incremental(settings, catalog, views, spark, args, result)
            ok &= all(r["check"] for r in result["incremental"].values())
    finally:
        if spark is not None:
            spark.stop()
        if not args.keep_data:
            _cleanup(settings)

    # (d) report
    table = Table(
        title=f"Batch recompute: {args.events:,} events, {cores} core(s) "
        "(events = input rows incl. ~1% duplicates)"
    )
    for col, just in [
        ("view", "left"),
        ("events", "right"),
        ("rows", "right"),
        ("Spark s", "right"),
        ("read+dedup s", "right"),
        ("agg+write s", "right"),
        ("rows/s written", "right"),
        ("raw write rows/s", "right"),
        ("Spark ev/s", "right"),
        ("ev/s/core", "right"),
        ("DuckDB s", "right"),
        ("DuckDB ev/s", "right"),
        ("ev/s/core ", "right"),  # trailing space: rich keys columns by header
        ("Spark/DuckDB", "right"),
        ("check", "center"),
    ]:
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    for name, r in result["views"].items():
        sp, dk = r["spark"], r["duckdb"]
        table.add_row(
            name,
            f"{r['input_events']:,}",
            f"{r['output_rows']:,}",
            f"{sp['seconds']:.2f}",
            f"{sp['timings'].get('read_s', 0):.2f}",
            f"{sp['timings'].get('aggregate_write_s', 0):.2f}",
            _fmt_rate(sp["rows_written_per_s"]),
            "-" if r["write_ceiling"] is None else _fmt_rate(r["write_ceiling"]["rows_per_s"]),
            _fmt_rate(sp["events_per_s"]),
            _fmt_rate(sp["events_per_s_per_core"]),
            f"{dk['seconds']:.2f}",
            _fmt_rate(dk["events_per_s"]),
            _fmt_rate(dk["events_per_s_per_core"]),
            f"{r['spark_over_duckdb']:.1f}x",
            "[green]ok[/]" if r["rows_and_events_match"] else "[red]MISMATCH[/]",
        )
    console.print(table)
    if "incremental" in result:
        _incremental_table(result["incremental"], args.incremental_hours)
    console.print(
        f"Spark startup (JVM + session, not in the figures): {result['spark_startup_s']:.1f}s. "
        "Spark s = wall time of run_batch for the view (read, dedup, aggregate, Cassandra "
        "write, publish); rows/s written = rows / agg+write s (the aggregation and the "
        "Cassandra write are one Spark stage); raw write rows/s = the same rows written again "
        "by CORES Python processes alone (bench/publish_bench.py: the ceiling of the client "
        "code on this node, no Spark); DuckDB s = same aggregation into memory, no write. "
        "check = same output row count and deduplicated event count in both."
    )
    out_path = args.json or args.workdir / f"batch-bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2))
    console.print(f"results written to [cyan]{out_path}[/]")
    if not ok:
        console.print("[red]Spark and DuckDB disagree on row or event counts (see 'check').[/]")
    return 0 if ok else 1


def _incremental(
    settings: Any,
    catalog: Any,
    views: list[str],
    spark: Any,
    args: argparse.Namespace,
    result: dict[str, Any],
) -> dict[str, Any]:
    """Write ``args.incremental_hours`` of new events per source into the epochs after the
    base's cutoff, then per view: a full recompute (not published) and an incremental build
    (published) at the new cutoff, timed."""
    import numpy as np

    from batch.recompute import build_view, run_batch
    from lamina.master import record_progress, write_epoch
    from serving.store import open_store

    hours = args.incremental_hours
    eps = settings.pipeline.epoch_seconds
    end = (time.time() // common.HOUR) * common.HOUR
    added: dict[str, int] = {}
    for i, src in enumerate(dict.fromkeys(catalog.view(v).source.name for v in views)):
        gen = result["generation"][src]
        n = max(1, round(gen["rows"] * hours / args.span_hours))
        rng = np.random.default_rng(args.seed + 100 + i)
        source = catalog.sources[src]
        epoch, done = gen["cutoff"], 0
        while done < n:
            rows = min(args.chunk_rows, n - done)
            table = common.generate_chunk(
                source, rows, rng, end, end + hours * common.HOUR, offset0=gen["rows"] + done
            )
            write_epoch(settings, source, epoch, table, "bench-new")
            epoch, done = epoch + eps, done + rows
        record_progress(settings, source, "bench-new", epoch, active=False)
        added[src] = n
    out: dict[str, Any] = {}
    for name in views:
        view = catalog.view(name)
        # The full recompute first, left unpublished (the incremental build's base stays the
        # published version, whose state the base run kept), then the incremental build.
        console.print(f"[bold]{name}[/]: full recompute of base + new epochs ...")
        t0 = time.monotonic()
        with open_store(settings.cassandra, catalog) as store:
            full = build_view(spark, settings, store, view, incremental=False)
        full_s = time.monotonic() - t0
        console.print(f"[bold]{name}[/]: incremental build on top of the base ...")
        t0 = time.monotonic()
        [inc] = run_batch(
            spark,
            settings,
            catalog,
            [name],
            progress=lambda m: console.print(f"  {m}"),
            incremental=True,
        )
        inc_s = time.monotonic() - t0
        out[name] = {
            "new_events": added[view.source.name],
            "base_events": result["views"][name]["dedup_events"],
            "rows": inc.rows,
            "incremental": {"seconds": round(inc_s, 3), "timings": inc.timings},
            "full": {"seconds": round(full_s, 3), "timings": full.timings},
            "speedup": round(full_s / inc_s, 2),
            "check": inc.timings.get("incremental") == 1.0
            and (inc.rows, inc.events, inc.cutoff)
            == (full.rows, int(full.timings["events"]), full.cutoff),
        }
    return out


def _incremental_table(found: dict[str, Any], hours: float) -> None:
    table = Table(
        title=f"Incremental build: {hours:g} h of new events on top of the base, beside a full "
        "recompute of the same data (built just before it, not published)"
    )
    for col in (
        "view",
        "base events",
        "new events",
        "rows",
        "incremental s",
        "read+dedup s",
        "of it: re-send check s",
        "merge+write s",
        "full s",
        "full/incremental",
        "check",
    ):
        table.add_column(col, justify="left" if col == "view" else "right")
    for name, r in found.items():
        t = r["incremental"]["timings"]
        table.add_row(
            name,
            f"{r['base_events']:,}",
            f"{r['new_events']:,}",
            f"{r['rows']:,}",
            f"{r['incremental']['seconds']:.2f}",
            f"{t.get('read_s', 0):.2f}",
            f"{t.get('resent_check_s', 0):.2f}",
            f"{t.get('aggregate_write_s', 0):.2f}",
            f"{r['full']['seconds']:.2f}",
            f"{r['speedup']:.1f}x",
            "[green]ok[/]" if r["check"] else "[red]MISMATCH[/]",
        )
    console.print(table)
    console.print(
        "incremental s = wall time of run_batch(incremental=True): read the new epochs, dedup "
        "them and drop re-sends of older ids (re-send check: a scan of the old epochs' id "
        "column, a semi-join with the new ids), merge into "
        "the base's stored states, write the whole version (Cassandra + state Parquet) and "
        "publish; full s = the same data recomputed from scratch (no state kept, not "
        "published). check = the build was incremental, and both have the same rows, events "
        "and cutoff."
    )


def _ceiling(settings: Any, view: Any, version: int, cores: int) -> dict[str, Any]:
    """The published rows of ``view`` version ``version``, read back and written into a
    scratch table by ``cores`` client processes with the batch writer's settings
    (:func:`publish_bench.measure`)."""
    import publish_bench

    from serving.cassandra import session
    from serving.schema import batch_table
    from serving.writer import BATCH_ROWS

    cols = [*view.keys, "bucket", *(c for c, _ in view.value_columns)]
    with session(settings.cassandra, settings.cassandra.keyspace) as s:
        rows = sorted(
            (
                tuple(r)
                for r in s.execute(f"SELECT {', '.join(cols)} FROM {batch_table(view, version)}")
            ),
            key=lambda r: (r[: len(view.keys)], r[len(view.keys)]),
        )
    return publish_bench.measure(
        settings,
        view,
        1_000_000 + version,
        rows,
        processes=cores,
        max_rows=BATCH_ROWS,
        concurrency=settings.pipeline.write_concurrency,
        node_pid=publish_bench.cassandra_pid(settings),
    )


def _cleanup(settings: Any) -> None:
    """Drop the private keyspace and master dataset (only what this run created)."""
    from serving.cassandra import session

    try:
        with session(settings.cassandra) as s:
            s.execute(f"DROP KEYSPACE IF EXISTS {settings.cassandra.keyspace}", timeout=120)
    except Exception as exc:  # keep the figures even if the drop fails
        console.print(f"[yellow]could not drop keyspace {settings.cassandra.keyspace}: {exc}[/]")
    shutil.rmtree(settings.master_dir.parent, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
