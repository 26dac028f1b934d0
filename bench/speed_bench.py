"""Speed-layer benchmark: catch-up throughput of the streaming jobs and produce->visible freshness.

Two modes, both in a private keyspace, private (suffixed) Kafka topics, a private master
dataset and private checkpoints under ``--workdir`` (dropped at the end unless
``--keep-data``):

``catchup``
    Preloads ``--events`` events (split evenly across ``--sources``) into Kafka as fast as
    the kafka-python producer goes (pre-serialized JSON, several producer processes), then
    starts the source jobs in this process with ``speed.queries.start_all(...)`` (default
    trigger, ``pipeline.max_offsets_per_trigger``; archive, dead letters, duplicate index
    and every view of each source: production's work) and times how long they take to
    drain the topics (``processAllAvailable`` per query, one thread each). Each job's own
    report gives the time per step summed over its micro-batches (read + parse, archive,
    dedup, per view aggregate and Cassandra write), Spark's ``durationMs`` the streaming
    overhead around it. Then, with the streams stopped, the ceilings of the same run: a
    bare Spark batch read of the same Kafka records (count), and read + native parse +
    dedup + per-view aggregation as one batch job (``noop`` sink). The catch-up rate is
    printed as a fraction of the bare read, next to the peers the issue names.

``freshness``
    ``lamina stream run --trigger T`` and ``lamina serve`` run as subprocesses with the
    private settings (``LAMINA_*`` env). A producer thread sends pageviews at ``--rate``
    events/s (token bucket); every ``--marker-interval`` s a *marker* pageview of a dedicated
    URL is sent (one partition, its own un-lingered producer); a poller asks the HTTP API for
    the marker URL's merged ``pageviews`` every ``--poll-interval`` s. A marker is *visible*
    when the count reaches its cumulative number: latency = visible - sent.

Run from the repository root:  .venv/bin/python bench/speed_bench.py catchup --events 30000
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import logging
import multiprocessing
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import common  # bench/common.py (also puts the repository root on sys.path)
import duckdb
import httpx
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from rich.console import Console
from rich.table import Table

from lamina.settings import Settings
from lamina.views import Source, View, ViewCatalog, load_views

console = Console(width=None if sys.stdout.isatty() else 160)
DURATION_KEYS = (
    "latestOffset",
    "getBatch",
    "queryPlanning",
    "addBatch",
    "walCommit",
    "commitOffsets",
    "triggerExecution",
)
FRESH_VIEW = "web_pageviews"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="speed_bench.py",
        description="Lamina speed layer: catch-up throughput of the streaming jobs (catchup) "
        "and produce->visible latency through the HTTP API under load (freshness).",
    )
    p.add_argument(
        "--workdir",
        type=Path,
        default=Path("/tmp/lamina-bench"),
        help="private views file, master dataset, checkpoints, logs, JSON (/tmp/lamina-bench)",
    )
    p.add_argument(
        "--keep-data",
        action="store_true",
        help="keep the keyspace, the topics and the files",
    )
    p.add_argument("--seed", type=int, default=13, help="random seed (13)")
    p.add_argument("--json", type=Path, default=None, help="result file (WORKDIR/speed-...json)")
    sub = p.add_subparsers(dest="mode", required=True, metavar="MODE")

    c = sub.add_parser(
        "catchup",
        help="preload Kafka, then time the streaming jobs draining it",
        description="Preload --events events into private topics, start the streaming jobs "
        "in-process (trigger: as fast as possible) and time the drain; then batch reads "
        "of the same topics split parse / aggregate / Cassandra-write costs.",
    )
    c.add_argument(
        "--events",
        type=int,
        default=1_000_000,
        help="events in total, split evenly across the sources of --views (1,000,000)",
    )
    c.add_argument(
        "--sources",
        nargs="+",
        default=None,
        metavar="SOURCE",
        help="source jobs to run, each with all its views (default: every source a view of "
        "conf/views.toml reads)",
    )
    c.add_argument(
        "--span-hours",
        type=float,
        default=1.0,
        help="event times uniform over the last N hours (1; the stream's usual case)",
    )
    c.add_argument(
        "--dup-frac", type=float, default=0.01, help="fraction of exact redeliveries (0.01)"
    )
    c.add_argument(
        "--producers",
        type=int,
        default=2,
        help="producer processes for the preload (2; kafka-python is ~20-25k msg/s each)",
    )
    c.add_argument(
        "--max-offsets-per-trigger",
        type=int,
        default=None,
        help="cap Kafka records per micro-batch and topic (pipeline.max_offsets_per_trigger; "
        "default: no cap, one micro-batch takes the whole backlog)",
    )
    c.add_argument(
        "--no-split",
        action="store_true",
        help="skip the ceilings (batch reads of the same topics: bare read, parse, aggregate)",
    )
    c.add_argument(
        "--split-repeat",
        type=int,
        default=2,
        help="runs of each cost-split job; the fastest counts (2)",
    )
    c.add_argument(
        "--timeout", type=float, default=3600.0, help="give up draining after N s (3600)"
    )
    c.add_argument("--cores", type=int, default=None, help="cores for per-core rates")

    f = sub.add_parser(
        "freshness",
        help="produce at a rate, measure produce -> visible-in-API latency",
        description="lamina stream run + lamina serve as subprocesses; pageviews at --rate; "
        "marker events polled through the HTTP API until visible.",
    )
    f.add_argument("--rate", type=float, default=20_000, help="target events/s (20000)")
    f.add_argument("--duration", type=float, default=60.0, help="measured seconds (60)")
    f.add_argument(
        "--warmup",
        type=float,
        default=5.0,
        help="seconds of load before markers are measured (5)",
    )
    f.add_argument("--trigger", type=float, default=0.5, help="stream micro-batch interval (0.5)")
    f.add_argument(
        "--jobs",
        nargs="*",
        default=[],
        metavar="JOB",
        help="source jobs for `lamina stream run` (default: every source a view reads)",
    )
    f.add_argument("--urls", type=int, default=1000, help="URLs of the background load (1000)")
    f.add_argument("--marker-interval", type=float, default=0.2, help="s between markers (0.2)")
    f.add_argument("--poll-interval", type=float, default=0.1, help="s between API polls (0.1)")
    f.add_argument(
        "--settle",
        type=float,
        default=60.0,
        help="after the load, wait up to N s for the last markers (60)",
    )
    f.add_argument(
        "--startup-timeout",
        type=float,
        default=300.0,
        help="seconds for the stream to make a first marker visible (300)",
    )
    f.add_argument(
        "--port", type=int, default=None, help="API port on 127.0.0.1 (default serving.port)"
    )
    args = p.parse_args(argv)
    if args.mode == "catchup":
        if args.events < 3 or args.producers < 1 or args.span_hours <= 0:
            p.error("--events >= 3, --producers >= 1 and --span-hours > 0 please")
        if not 0 <= args.dup_frac < 0.5:
            p.error("--dup-frac must be within [0, 0.5)")
    else:
        if args.rate <= 0 or args.duration <= 0 or args.marker_interval <= 0:
            p.error("--rate, --duration and --marker-interval must be positive")
        if args.poll_interval <= 0 or args.trigger < 0 or args.warmup < 0:
            p.error("--poll-interval must be positive, --trigger and --warmup >= 0")
    return args


# -- private settings, topics, cleanup ------------------------------------------------------


@dataclass
class Private:
    settings: Settings
    catalog: ViewCatalog
    suffix: str
    root: Path
    env: dict[str, str]
    """``LAMINA_*`` variables giving a subprocess the same private settings."""

    @property
    def topics(self) -> list[str]:
        from lamina.streams import deadletter_topic, duplicates_topic

        return sorted(
            t
            for s in self.catalog.sources.values()
            for t in (s.topic, deadletter_topic(s), duplicates_topic(s))
        )


def private_setup(workdir: Path, prefix: str) -> Private:
    """Private keyspace, topics (``<topic>-<suffix>``), master dataset and checkpoints, as
    the invariant test does: a copy of conf/views.toml with suffixed topics."""
    base = common.private_settings(workdir, prefix)
    ks = base.cassandra.keyspace
    suffix = ks.split("_", 1)[1]
    root = workdir / ks
    root.mkdir(parents=True, exist_ok=True)
    views = root / "views.toml"
    text = (common.ROOT / "conf" / "views.toml").read_text()
    views.write_text(re.sub(r'^topic = "([^"]+)"', rf'topic = "\1-{suffix}"', text, flags=re.M))
    ckpt = root / "checkpoints"
    settings = base.model_copy(
        update={
            "pipeline": base.pipeline.model_copy(update={"views_file": views}),
            "spark": base.spark.model_copy(update={"checkpoint_dir": ckpt}),
        }
    )
    env = {
        "LAMINA_CONFIG": str(common.ROOT / "conf" / "lamina.toml"),
        "LAMINA_CASSANDRA__KEYSPACE": ks,
        "LAMINA_PIPELINE__VIEWS_FILE": str(views),
        "LAMINA_PIPELINE__MASTER_DIR": str(settings.master_dir),
        "LAMINA_SPARK__CHECKPOINT_DIR": str(ckpt),
    }
    return Private(settings, load_views(views), suffix, root, env)


def prepare(priv: Private) -> None:
    """Create the topics and the keyspace/tables up front (not part of any timing)."""
    from lamina.streams import ensure_topics
    from serving.cassandra import session
    from serving.store import Store

    ensure_topics(priv.settings, priv.topics)
    with session(priv.settings.cassandra) as s:
        Store(s, priv.settings.cassandra).ensure_schema(priv.catalog)


def cleanup(priv: Private) -> None:
    from kafka import KafkaAdminClient

    from serving.cassandra import session

    s = priv.settings
    try:
        with session(s.cassandra) as cs:
            cs.execute(f"DROP KEYSPACE IF EXISTS {s.cassandra.keyspace}", timeout=120)
    except Exception as exc:
        console.print(f"[yellow]could not drop keyspace {s.cassandra.keyspace}: {exc}[/]")
    try:
        admin = KafkaAdminClient(**s.kafka.client_config())
        try:
            mine = [t for t in admin.list_topics() if t in set(priv.topics)]
            if mine:
                admin.delete_topics(mine)
        finally:
            admin.close()
    except Exception as exc:
        console.print(f"[yellow]could not delete topics *-{priv.suffix}: {exc}[/]")
    shutil.rmtree(priv.root, ignore_errors=True)


def end_offsets(settings: Settings, topics: list[str]) -> dict[str, int]:
    """Records per topic (sum of the partitions' end offsets; topics start empty)."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(**settings.kafka.client_config())
    try:
        out = {}
        for t in topics:
            tps = [TopicPartition(t, p) for p in c.partitions_for_topic(t) or []]
            out[t] = sum(c.end_offsets(tps).values())
        return out
    finally:
        c.close()


def write_json(args: argparse.Namespace, result: dict[str, Any]) -> None:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.json or args.workdir / f"speed-{args.mode}-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    console.print(f"results written to [cyan]{out}[/]")


def base_result(args: argparse.Namespace, priv: Private) -> dict[str, Any]:
    s = priv.settings
    return {
        "benchmark": f"speed-{args.mode}",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "config": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "json"
        }
        | {
            "keyspace": s.cassandra.keyspace,
            "topic_suffix": priv.suffix,
            "epoch_seconds": s.pipeline.epoch_seconds,
            "spark_master": s.spark.master,
            "shuffle_partitions": s.spark.shuffle_partitions,
            "kafka_partitions": s.kafka.partitions,
        },
    }


# -- catchup: payloads and the preload --------------------------------------------------------

_PAYLOADS: dict[str, list[bytes]] = {}
"""topic -> pre-serialized records; set before the producer processes fork (copy-on-write)."""


def json_payloads(source: Source, table: pa.Table) -> list[bytes]:
    """One JSON object per row of ``table`` (the source's fields, nulls as null), by DuckDB."""
    con = duckdb.connect()
    try:
        con.register("t", table.select(list(source.fields)))
        members = ", ".join(f'"{f}" := "{f}"' for f in source.fields)
        col = con.sql(f"SELECT to_json(struct_pack({members}))::VARCHAR AS v FROM t")
        arr = col.to_arrow_table().column("v")
    finally:
        con.close()
    return pc.cast(arr, pa.binary()).to_pylist()


def build_payloads(
    sources: list[Source], n_total: int, span_s: float, dup_frac: float, seed: int
) -> tuple[dict[str, list[bytes]], float]:
    """``n_total`` events split across ``sources`` (common.generate_chunk: skewed keys, nulls,
    ~``dup_frac`` exact redeliveries), serialized to JSON."""
    t0 = time.monotonic()
    rng = np.random.default_rng(seed)
    now = time.time()
    out: dict[str, list[bytes]] = {}
    share = [n_total // len(sources)] * len(sources)
    share[0] += n_total - sum(share)
    for src, n in zip(sources, share, strict=True):
        rows: list[bytes] = []
        for k in common.chunks_of(n, 250_000):
            table = common.generate_chunk(src, k, rng, now - span_s, now, dup_frac=dup_frac)
            rows += json_payloads(src, table)
        # Redeliveries are appended at each chunk's end by generate_chunk; shuffle a little
        # so they do not all arrive in the last micro-batch.
        order = rng.permutation(len(rows))
        out[src.topic] = [rows[i] for i in order]
    return out, time.monotonic() - t0


def _produce_slice(kafka: dict[str, Any], topic: str, lo: int, hi: int) -> tuple[int, int, float]:
    """In a forked producer process: send ``_PAYLOADS[topic][lo:hi]``, flush."""
    from kafka import KafkaProducer

    t0 = time.monotonic()
    producer = KafkaProducer(
        **kafka,
        acks=1,
        linger_ms=50,
        batch_size=1 << 20,
        max_request_size=8 << 20,
    )
    errors = [0]

    def failed(_: Exception) -> None:
        errors[0] += 1

    try:
        for raw in _PAYLOADS[topic][lo:hi]:
            producer.send(topic, value=raw).add_errback(failed)
        producer.flush(timeout=600)
    finally:
        producer.close()
    return hi - lo, errors[0], time.monotonic() - t0


def preload(settings: Settings, payloads: dict[str, list[bytes]], workers: int) -> dict[str, Any]:
    """Send every payload with ``workers`` forked producer processes; acks=1."""
    _PAYLOADS.clear()
    _PAYLOADS.update(payloads)
    jobs = []
    for topic, rows in payloads.items():
        step = -(-len(rows) // workers)
        jobs += [(topic, lo, min(len(rows), lo + step)) for lo in range(0, len(rows), step)]
    ctx = multiprocessing.get_context("fork")  # before any JVM: children inherit _PAYLOADS
    t0 = time.monotonic()
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futs = [pool.submit(_produce_slice, settings.kafka.client_config(), *j) for j in jobs]
        done = [f.result() for f in futs]
    elapsed = time.monotonic() - t0
    _PAYLOADS.clear()
    sent = sum(d[0] for d in done)
    return {
        "records": sent,
        "errors": sum(d[1] for d in done),
        "seconds": round(elapsed, 3),
        "per_s": round(sent / elapsed, 1),
        "processes": workers,
        "bytes": sum(len(r) for rows in payloads.values() for r in rows),
    }


# -- catchup: streaming drain ------------------------------------------------------------------


def _progress_dict(p: Any) -> dict[str, Any]:
    """A StreamingQueryProgress as a plain dict (``json`` is a property in PySpark 4.x)."""
    j = p.json
    d: dict[str, Any] = json.loads(j() if callable(j) else j)
    return d


def _progress_collector(store: dict[str, dict[int, dict[str, Any]]], lock: threading.Lock) -> Any:
    from pyspark.sql.streaming.listener import StreamingQueryListener

    class Collector(StreamingQueryListener):
        """Every progress event of every query (recentProgress keeps only the last 100)."""

        def onQueryStarted(self, event: Any) -> None:
            pass

        def onQueryProgress(self, event: Any) -> None:
            try:
                d = _progress_dict(event.progress)
                with lock:
                    store.setdefault(d["name"], {})[int(d["batchId"])] = d
            except Exception:  # a listener must never kill the stream
                logging.getLogger(__name__).exception("progress collector")

        def onQueryIdle(self, event: Any) -> None:
            pass

        def onQueryTerminated(self, event: Any) -> None:
            pass

    return Collector()


def summarize_progress(batches: list[dict[str, Any]]) -> dict[str, Any]:
    """Sum of the durationMs parts and state-operator metrics over a query's micro-batches."""
    dur: dict[str, int] = defaultdict(int)
    state: dict[str, dict[str, int]] = {}
    rows = 0
    data_batches = 0
    for b in batches:
        for k, v in (b.get("durationMs") or {}).items():
            dur[k] += int(v)
        n = int(b.get("numInputRows") or 0)
        rows += n
        data_batches += n > 0
        for i, op in enumerate(b.get("stateOperators") or []):
            st = state.setdefault(f"{i}:{op.get('operatorName', '?')}", defaultdict(int))
            for k in ("numRowsUpdated", "numRowsRemoved", "allUpdatesTimeMs", "commitTimeMs"):
                st[k] += int(op.get(k) or 0)
            st["numRowsTotal_last"] = int(op.get("numRowsTotal") or 0)
            st["memoryUsedBytes_last"] = int(op.get("memoryUsedBytes") or 0)
    return {
        "batches": len(batches),
        "data_batches": data_batches,
        "input_rows": rows,
        "duration_ms": dict(dur),
        "state": {k: dict(v) for k, v in state.items()},
    }


def drain(queries: list[Any], timeout: float) -> dict[str, float]:
    """``processAllAvailable`` on every query at once (one thread each); seconds until each
    query had processed everything (counted from this call)."""
    t0 = time.monotonic()
    done: dict[str, float] = {}
    errors: dict[str, str] = {}

    def one(q: Any) -> None:
        try:
            q.processAllAvailable()
            done[q.name] = time.monotonic() - t0
        except Exception as exc:
            errors[q.name] = str(exc).splitlines()[0]

    threads = [threading.Thread(target=one, args=(q,), daemon=True) for q in queries]
    for t in threads:
        t.start()
    deadline = t0 + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    if errors:
        raise RuntimeError(f"streaming queries failed: {errors}")
    missing = [q.name for q in queries if q.name not in done]
    if missing:
        raise RuntimeError(f"not drained within {timeout:.0f}s: {missing}")
    return done


# -- catchup: batch cost split -------------------------------------------------------------


def _best_of(repeat: int, job: Any) -> float:
    """Fastest of ``repeat`` runs of ``job()`` (seconds): small inputs are noisy."""
    best = float("inf")
    for _ in range(max(1, repeat)):
        t0 = time.monotonic()
        job()
        best = min(best, time.monotonic() - t0)
    return best


def _noop(df: Any) -> None:
    df.write.format("noop").mode("overwrite").save()


def run_catchup(args: argparse.Namespace) -> int:
    from engine.session import spark_session
    from lamina.streams import job_names, read_source_report
    from speed.queries import start_all

    priv = private_setup(args.workdir.absolute(), "sbench")
    settings, catalog = priv.settings, priv.catalog
    names = args.sources or job_names(catalog)
    sources = [catalog.sources[n] for n in names]
    views = [v for v in catalog.views.values() if v.source.name in names]
    cores = args.cores or common.spark_cores(settings.spark.master)
    result = base_result(args, priv) | {"cores": cores}
    console.print(
        f"[bold]Lamina speed benchmark — catchup[/]: keyspace [cyan]"
        f"{settings.cassandra.keyspace}[/], topics *-{priv.suffix}, {args.events:,} events over "
        f"{', '.join(names)}; views {', '.join(v.name for v in views)}; archive, dead letters "
        f"and duplicate index on; {settings.spark.master}"
    )
    if args.max_offsets_per_trigger:
        settings = settings.model_copy(
            update={
                "pipeline": settings.pipeline.model_copy(
                    update={"max_offsets_per_trigger": args.max_offsets_per_trigger}
                )
            }
        )
    spark = None
    queries: list[Any] = []
    try:
        prepare(priv)
        payloads, gen_s = build_payloads(
            sources, args.events, args.span_hours * 3600, args.dup_frac, args.seed
        )
        console.print(f"generated {args.events:,} JSON payloads in {gen_s:.1f}s")
        prod = preload(settings, payloads, args.producers)
        del payloads
        in_kafka = end_offsets(settings, [s.topic for s in sources])
        prod["in_kafka"] = in_kafka
        prod["generate_s"] = round(gen_s, 3)
        result["produce"] = prod
        console.print(
            f"produced {prod['records']:,} records ({prod['bytes'] / 1e6:.0f} MB) in "
            f"{prod['seconds']:.1f}s = [bold]{prod['per_s']:,.0f}/s[/] with "
            f"{args.producers} process(es), {prod['errors']} errors; in Kafka: "
            f"{sum(in_kafka.values()):,}"
        )
        if prod["errors"] or sum(in_kafka.values()) != args.events:
            raise RuntimeError("the preload did not land every record in Kafka")

        t0 = time.monotonic()
        spark = spark_session(settings, "lamina-speed-bench")
        result["spark_start_s"] = round(time.monotonic() - t0, 3)
        store: dict[str, dict[int, dict[str, Any]]] = {}
        lock = threading.Lock()
        spark.streams.addListener(_progress_collector(store, lock))
        console.print(f"Spark session in {result['spark_start_s']:.1f}s; starting the queries")

        t0 = time.monotonic()
        queries = start_all(spark, settings, catalog, names, trigger_s=None)  # pipeline.trigger_s
        started_s = time.monotonic() - t0
        with console.status(f"{len(queries)} source jobs draining {args.events:,} events ..."):
            drained = drain(queries, args.timeout)
        wall = time.monotonic() - t0
        # Progress events reach listeners asynchronously: merge in recentProgress too.
        time.sleep(2)
        per_query: dict[str, Any] = {}
        for q in queries:
            with lock:
                got = dict(store.get(q.name, {}))
            for p in q.recentProgress:
                d = _progress_dict(p)
                got.setdefault(int(d["batchId"]), d)
            per_query[q.name] = summarize_progress([got[k] for k in sorted(got)])
            per_query[q.name]["drained_s"] = round(started_s + drained[q.name], 3)
            per_query[q.name]["report"] = read_source_report(settings, q.name) or {}
        for q in queries:
            q.stop()
        queries = []
        result["memory"] = memory_peaks(spark)
        result["stream"] = {
            "queries": per_query,
            "start_all_s": round(started_s, 3),
            "wall_s": round(wall, 3),
            "events_per_s": round(args.events / wall, 1),
            "events_per_s_per_core": round(args.events / wall / cores, 1),
        }
        print_stream(result, args)

        if not args.no_split:
            console.print("ceilings: batch reads of the same topics (streams stopped) ...")
            result["split"] = cost_split(spark, settings, sources, views, args.split_repeat)
            print_split(result, args)
    finally:
        for q in queries:
            with contextlib.suppress(Exception):
                q.stop()
        if spark is not None:
            spark.stop()
        if not args.keep_data:
            cleanup(priv)
    write_json(args, result)
    return 0


def print_stream(result: dict[str, Any], args: argparse.Namespace) -> None:
    st = result["stream"]
    mem = result.get("memory", {})
    table = Table(
        title=f"catch-up of {args.events:,} events: {st['wall_s']:.1f}s wall = "
        f"{st['events_per_s']:,.0f} events/s = {st['events_per_s_per_core']:,.0f} "
        f"events/s/core ({result['cores']} cores; start {st['start_all_s']:.1f}s included)"
    )
    steps: list[str] = []
    for q in st["queries"].values():
        for k in q["report"].get("timings_since_start_s", {}):
            if k not in steps and k != "total":
                steps.append(k)
    cols = ["query", "drained s", "batches", "rows", *steps, "steps sum", "trigger", "overhead"]
    for c in cols:
        table.add_column(c, justify="left" if c == "query" else "right")
    for name, q in st["queries"].items():
        spent = q["report"].get("timings_since_start_s", {})
        trigger = q["duration_ms"].get("triggerExecution", 0) / 1000
        total = spent.get("total", 0.0)
        table.add_row(
            name,
            f"{q['drained_s']:.1f}",
            f"{q['data_batches']}/{q['batches']}",
            f"{q['input_rows']:,}",
            *[f"{spent.get(k, 0):.1f}" for k in steps],
            f"{total:.1f}",
            f"{trigger:.1f}",
            f"{trigger - total:.1f}",
        )
        counters = q["report"].get("counters", {})
        index = q["report"].get("dedup_index", {})
        console.print(
            f"  {name}: {counters}; duplicate index {index.get('ids', 0):,} ids, "
            f"{index.get('bytes', 0) / 1e6:.1f} MB"
        )
    console.print(table)
    console.print(
        "Seconds per step summed over each job's micro-batches (the jobs run concurrently on "
        "the same cores, so sums exceed the wall time): read_parse = Kafka read + native "
        "parse (the first action on the cached micro-batch); archive = Parquet write + "
        "rename; aggregate:V = view V's Spark aggregation; write:V = its Cassandra "
        "read-modify-write. overhead = Spark's triggerExecution minus the steps (planning, "
        "offsets, commit). "
        f"Peak memory: Python driver {mem.get('python_driver_peak_mb', '?')} MB, Spark JVM "
        f"(driver + executors, local mode) {mem.get('jvm_peak_mb', '?')} MB."
    )


def cost_split(
    spark: Any, settings: Settings, sources: list[Source], views: list[View], repeat: int
) -> Any:
    """The ceilings, as batch jobs over the same topics (streams stopped), per source: the
    bare Kafka read (count of the records), + native parse, + dedup by event id and every
    view's aggregation per (key, bucket, ingest epoch) into a ``noop`` sink: the work of the
    source job without the streaming, the archive and Cassandra."""
    from engine.kafka import parse_records, valid
    from engine.translate import aggregate
    from lamina.schema import INGEST_EPOCH

    eps = settings.pipeline.epoch_seconds

    def raw(topic: str) -> Any:
        return (
            spark.read.format("kafka")
            .options(**settings.kafka.spark_options())
            .option("subscribe", topic)
            .option("startingOffsets", "earliest")
            .option("endingOffsets", "latest")
            .load()
        )

    def full(src: Source) -> None:
        events = valid(parse_records(raw(src.topic), src, eps)).dropDuplicates([src.event_id])
        events = events.cache()
        for v in views:
            if v.source.name == src.name:
                _noop(aggregate(events, v, extra_groups=[INGEST_EPOCH]))
        events.unpersist()

    out: dict[str, Any] = {"sources": {}}
    for src in sources:
        read_s = _best_of(repeat, lambda t=src.topic: raw(t).select("value").count())
        parse_s = _best_of(repeat, lambda s=src: _noop(parse_records(raw(s.topic), s, eps)))
        job_s = _best_of(repeat, lambda s=src: full(s))
        out["sources"][src.name] = {
            "kafka_read_s": round(read_s, 3),
            "parse_s": round(parse_s, 3),
            "parse_dedup_aggregate_s": round(job_s, 3),
        }
        console.print(
            f"  {src.name}: bare Kafka read {read_s:.2f}s, read + parse {parse_s:.2f}s, "
            f"+ dedup + aggregate every view {job_s:.2f}s"
        )
    return out


PEERS = {
    "Flink Nexmark windowed queries (RocksDB, exactly-once)": (22_000, 34_000),
    "Druid ingestion, 30 dimensions": (23_000, 23_000),
    "Storm, 2014 (8-vCPU node)": (37_000, 37_000),
}
"""Events/s per core of the peers issue #11 names."""


def memory_peaks(spark: Any) -> dict[str, float]:
    """Peak resident memory (MB) of this Python driver and of the Spark JVM (driver and
    executors in local mode), from /proc (Linux)."""

    def hwm(pid: int) -> float:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
        except OSError:
            pass
        return float("nan")

    jvm = int(spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid())
    return {"python_driver_peak_mb": hwm(os.getpid()), "jvm_peak_mb": hwm(jvm)}


def print_split(result: dict[str, Any], args: argparse.Namespace) -> None:
    sp = result["split"]["sources"]
    st = result["stream"]
    n = args.events
    read_s = sum(s["kafka_read_s"] for s in sp.values())
    job_s = sum(s["parse_dedup_aggregate_s"] for s in sp.values())
    bare = n / read_s if read_s else float("nan")
    batch = n / job_s if job_s else float("nan")
    rate = st["events_per_s"]
    result["ceilings"] = {
        "bare_kafka_read_events_per_s": round(bare, 1),
        "batch_parse_dedup_aggregate_events_per_s": round(batch, 1),
        "catchup_fraction_of_bare_read": round(rate / bare, 4),
        "catchup_fraction_of_batch_job": round(rate / batch, 4),
    }
    table = Table(title="catch-up next to its ceilings (same run, same machine) and the peers")
    table.add_column("what")
    table.add_column("events/s", justify="right")
    table.add_column("per core", justify="right")
    table.add_column("catch-up as % of it", justify="right")
    cores = result["cores"]
    table.add_row(
        "Lamina catch-up (source jobs, archive on)", f"{rate:,.0f}", f"{rate / cores:,.0f}", ""
    )
    table.add_row(
        "bare Spark batch read of the same records",
        f"{bare:,.0f}",
        f"{bare / cores:,.0f}",
        f"{100 * rate / bare:.0f}%",
    )
    table.add_row(
        "same records: parse + dedup + aggregate, one batch job",
        f"{batch:,.0f}",
        f"{batch / cores:,.0f}",
        f"{100 * rate / batch:.0f}%",
    )
    for name, (lo, hi) in PEERS.items():
        per = f"{lo:,}" if lo == hi else f"{lo:,}-{hi:,}"
        table.add_row(f"peer: {name}", "", per, "")
    console.print(table)


# -- freshness ---------------------------------------------------------------------------------


class Proc:
    """A subprocess in its own session, stopped by its process group (only ours)."""

    def __init__(self, cmd: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._out = log.open("ab")
        self.proc = subprocess.Popen(
            cmd,
            cwd=common.ROOT,
            env=env,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, n: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self, timeout: float = 60) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
            except ProcessLookupError:
                pass
        self._out.close()


def lamina_cmd(*argv: str) -> list[str]:
    return [sys.executable, "-m", "lamina.cli", *argv]


@dataclass
class Marker:
    n: int  # cumulative marker count this one completes
    sent: float  # time.time() just before send()
    measured: bool
    acked: float | None = None
    visible: float | None = None


class Freshness:
    """Load producer, marker producer, API poller and status monitor threads."""

    def __init__(self, priv: Private, args: argparse.Namespace, base: str) -> None:
        self.priv = priv
        self.args = args
        self.base = base
        self.topic = priv.catalog.view(FRESH_VIEW).source.topic
        self.marker_url = f"/bench/marker-{priv.suffix}"
        self.stop_load = threading.Event()
        self.stop_poll = threading.Event()
        self.lock = threading.Lock()
        self.markers: list[Marker] = []
        self.seen = 0  # marker count the API last answered
        self.polls = 0
        self.poll_errors = 0
        self.poll_ms: list[float] = []
        self.sent = 0
        self.load_s = 0.0
        self.produce_errors = 0
        self.batches: dict[int, dict[str, Any]] = {}
        self.measuring = False
        now = time.time()
        self.q_from = str(int(now // 3600 * 3600 - 3600))
        self.q_to = str(int(now + args.duration + args.warmup + args.settle + 7200))

    # marker producer ------------------------------------------------------------------

    def send_marker(self, producer: Any, measured: bool) -> Marker:
        with self.lock:
            m = Marker(len(self.markers) + 1, time.time(), measured)
            self.markers.append(m)
        ev = {
            "event_id": f"marker-{self.priv.suffix}-{m.n}",
            "ts": datetime.now(UTC).isoformat(),
            "url": self.marker_url,
            "visitor": f"mv{m.n}",
            "status": 200,
            "load_ms": 1.0,
        }

        def acked(_: Any, m: Marker = m) -> None:
            m.acked = time.time()

        def failed(_: Exception) -> None:
            self.produce_errors += 1

        fut = producer.send(self.topic, key=b"marker", value=json.dumps(ev).encode())
        fut.add_callback(acked).add_errback(failed)
        return m

    def marker_loop(self, producer: Any) -> None:
        nxt = time.monotonic()
        while not self.stop_load.is_set():
            self.send_marker(producer, self.measuring)
            nxt += self.args.marker_interval
            time.sleep(max(0.0, nxt - time.monotonic()))

    # background load --------------------------------------------------------------------

    def load_loop(self, producer: Any) -> None:
        rate = self.args.rate
        n_urls = self.args.urls
        prefix = f"{self.priv.suffix}-".encode()
        tpl = (
            b'{"event_id":"%s%d","ts":"%s","url":"/f/%d","visitor":"v%d",'
            b'"status":%d,"load_ms":%d.5}'
        )
        topic = self.topic

        def failed(_: Exception) -> None:
            self.produce_errors += 1

        t0 = time.monotonic()
        sent = 0
        burst = max(1, int(rate * 0.05))
        while not self.stop_load.is_set():
            due = int((time.monotonic() - t0) * rate) - sent
            if due <= 0:
                time.sleep(0.002)
                continue
            due = min(due, burst)
            ts = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ").encode()
            for i in range(sent, sent + due):
                raw = tpl % (
                    prefix,
                    i,
                    ts,
                    i % n_urls,
                    i % 100_003,
                    404 if i % 10 == 0 else 200,
                    i % 997,
                )
                producer.send(topic, value=raw).add_errback(failed)
            sent += due
            self.sent = sent
        self.load_s = time.monotonic() - t0

    # poller --------------------------------------------------------------------------------

    def count(self, client: httpx.Client) -> int:
        r = client.get(
            f"/views/{FRESH_VIEW}/query",
            params={"key": self.marker_url, "from": self.q_from, "to": self.q_to},
        )
        if r.status_code == 404:  # unknown key: nothing visible yet
            return 0
        r.raise_for_status()
        return sum(
            int(b["values"]["pageviews"] or 0)
            for res in r.json()["results"]
            for b in res["buckets"]
        )

    def poll_loop(self) -> None:
        with httpx.Client(base_url=self.base, timeout=10) as client:
            nxt = time.monotonic()
            while not self.stop_poll.is_set():
                t_req = time.perf_counter()
                try:
                    c = self.count(client)
                except (httpx.HTTPError, ValueError, KeyError):
                    self.poll_errors += 1
                    c = -1
                now = time.time()
                self.poll_ms.append((time.perf_counter() - t_req) * 1000)
                self.polls += 1
                if c > self.seen:
                    with self.lock:
                        for m in self.markers[self.seen : c]:
                            m.visible = now
                        self.seen = c
                nxt += self.args.poll_interval
                time.sleep(max(0.0, nxt - time.monotonic()))

    def monitor_loop(self) -> None:
        """The stream's micro-batches of the view (status file written by the stream)."""
        from lamina.streams import source_query, status_file

        path = status_file(
            self.priv.settings, source_query(self.priv.catalog.view(FRESH_VIEW).source)
        )
        while not self.stop_poll.is_set():
            try:
                d = json.loads(path.read_text())
                if self.measuring:
                    self.batches.setdefault(int(d["batch_id"]), d)
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.25)


def run_freshness(args: argparse.Namespace) -> int:
    import query_bench  # the API-server helpers (start/health/stop) of the query benchmark
    from kafka import KafkaProducer

    priv = private_setup(args.workdir.absolute(), "fbench")
    settings = priv.settings
    port = args.port or settings.serving.port
    base = f"http://127.0.0.1:{port}"
    result = base_result(args, priv)
    console.print(
        f"[bold]Lamina speed benchmark — freshness[/]: keyspace [cyan]"
        f"{settings.cassandra.keyspace}[/], topics *-{priv.suffix}, {args.rate:,.0f} events/s "
        f"for {args.duration:g}s (+{args.warmup:g}s warm-up), stream trigger {args.trigger:g}s, "
        f"jobs {' '.join(args.jobs) or 'all'}, API {base}"
    )
    stream: Proc | None = None
    server: Any = None
    fr: Freshness | None = None
    threads: list[threading.Thread] = []
    producers: list[Any] = []
    try:
        prepare(priv)
        env = {**os.environ, **priv.env}
        trig = ["--trigger", str(args.trigger)] if args.trigger > 0 else []
        stream = Proc(lamina_cmd("stream", "run", *trig, *args.jobs), env, priv.root / "stream.log")
        server = query_bench.start_server(settings, port, priv.root / "serve.log")
        query_bench.wait_healthy(server, base, priv.root / "serve.log", timeout=120)
        console.print(f"API healthy; stream log {stream.log}")

        boot = settings.kafka.client_config()
        mprod = KafkaProducer(**boot, acks=1, linger_ms=0)
        lprod = KafkaProducer(**boot, acks=1, linger_ms=5, batch_size=256 * 1024)
        producers = [mprod, lprod]
        fr = Freshness(priv, args, base)
        poller = threading.Thread(target=fr.poll_loop, daemon=True)
        monitor = threading.Thread(target=fr.monitor_loop, daemon=True)
        poller.start()
        monitor.start()
        threads = [poller, monitor]

        # Start-up: one marker per second until the stream has made one visible.
        t0 = time.monotonic()
        with console.status("waiting for the stream to make a first marker visible ..."):
            while fr.seen == 0:
                if not stream.alive():
                    raise RuntimeError(f"stream exited: {stream.tail()}")
                if time.monotonic() - t0 > args.startup_timeout:
                    raise RuntimeError(f"no marker visible in {args.startup_timeout:.0f}s")
                fr.send_marker(mprod, False)
                mprod.flush()
                time.sleep(1.0)
        result["startup_s"] = round(time.monotonic() - t0, 1)
        console.print(f"stream live: first marker visible after {result['startup_s']:.0f}s")

        loader = threading.Thread(target=fr.load_loop, args=(lprod,), daemon=True)
        marker = threading.Thread(target=fr.marker_loop, args=(mprod,), daemon=True)
        loader.start()
        marker.start()
        threads += [loader, marker]
        with console.status(f"warm-up {args.warmup:g}s ..."):
            time.sleep(args.warmup)
        fr.measuring = True
        m_sent0 = fr.sent
        t_meas = time.monotonic()
        with console.status(f"measuring {args.duration:g}s at {args.rate:,.0f}/s ..."):
            while time.monotonic() - t_meas < args.duration:
                if not stream.alive():
                    raise RuntimeError(f"stream exited: {stream.tail()}")
                time.sleep(0.5)
        meas_s = time.monotonic() - t_meas
        meas_sent = fr.sent - m_sent0
        fr.measuring = False
        fr.stop_load.set()
        loader.join(30)
        marker.join(30)
        for p in producers:
            p.flush(timeout=60)
        last = fr.markers[-1].n
        t_settle = time.monotonic()
        with console.status(f"waiting up to {args.settle:g}s for the last markers ..."):
            while fr.seen < last and time.monotonic() - t_settle < args.settle:
                time.sleep(0.2)
        fr.stop_poll.set()
        result["load"] = {
            "target_per_s": args.rate,
            "sent_total": fr.sent,
            "load_seconds": round(fr.load_s, 3),
            "achieved_per_s_total": round(fr.sent / fr.load_s, 1) if fr.load_s else 0.0,
            "sent_measured": meas_sent,
            "achieved_per_s_measured": round(meas_sent / meas_s, 1),
            "produce_errors": fr.produce_errors,
        }
        result["freshness"] = freshness_stats(fr)
        result["api_polls"] = {
            "polls": fr.polls,
            "errors": fr.poll_errors,
            "p50_ms": round(common.percentile(sorted(fr.poll_ms), 0.5), 2),
            "p99_ms": round(common.percentile(sorted(fr.poll_ms), 0.99), 2),
        }
        result["micro_batches"] = batch_stats(list(fr.batches.values()))
    finally:
        if fr is not None:
            fr.stop_load.set()
            fr.stop_poll.set()
        for t in threads:
            t.join(5)
        for p in producers:
            with contextlib.suppress(Exception):
                p.close(timeout=10)
        if server is not None:
            query_bench.stop_server(server)
        if stream is not None:
            stream.stop()
        if not args.keep_data:
            cleanup(priv)
    print_freshness(result, args)
    write_json(args, result)
    return 0 if result["freshness"]["not_visible"] == 0 else 1


def freshness_stats(fr: Freshness) -> dict[str, Any]:
    meas = [m for m in fr.markers if m.measured]
    lat = sorted((m.visible - m.sent) * 1000 for m in meas if m.visible is not None)
    ack = sorted((m.acked - m.sent) * 1000 for m in meas if m.acked is not None)

    def pct(xs: list[float]) -> dict[str, float]:
        return {
            "p50_ms": round(common.percentile(xs, 0.5), 1),
            "p90_ms": round(common.percentile(xs, 0.9), 1),
            "p99_ms": round(common.percentile(xs, 0.99), 1),
            "max_ms": round(xs[-1], 1) if xs else 0.0,
            "min_ms": round(xs[0], 1) if xs else 0.0,
            "mean_ms": round(sum(xs) / len(xs), 1) if xs else 0.0,
        }

    return {
        "markers": len(meas),
        "visible": len(lat),
        "not_visible": len(meas) - len(lat),
        "produce_to_visible": pct(lat),
        "produce_to_ack": pct(ack),
    }


def batch_stats(batches: list[dict[str, Any]]) -> dict[str, Any]:
    if not batches:
        return {"observed": 0}
    trig = sorted(float(b["durations_ms"].get("triggerExecution", 0)) for b in batches)
    add = sorted(float(b["durations_ms"].get("addBatch", 0)) for b in batches)
    rows = [int(b["input_rows"] or 0) for b in batches]
    ids = [int(b["batch_id"]) for b in batches]
    return {
        "observed": len(batches),
        "batch_ids": [min(ids), max(ids)],
        "trigger_ms_p50": common.percentile(trig, 0.5),
        "trigger_ms_max": trig[-1],
        "add_batch_ms_p50": common.percentile(add, 0.5),
        "input_rows_mean": round(sum(rows) / len(rows), 1),
        "input_rows_max": max(rows),
    }


def print_freshness(result: dict[str, Any], args: argparse.Namespace) -> None:
    if "freshness" not in result:
        return
    f, ld = result["freshness"], result["load"]
    table = Table(
        title=f"{FRESH_VIEW}: produce -> visible in GET /views/{FRESH_VIEW}/query "
        f"(trigger {args.trigger:g}s, poll every {args.poll_interval * 1000:.0f} ms)"
    )
    for c in ("latency", "markers", "p50 ms", "p90 ms", "p99 ms", "max ms", "mean ms"):
        table.add_column(c, justify="left" if c == "latency" else "right")
    for label, key in (
        ("produce -> visible", "produce_to_visible"),
        ("produce -> ack", "produce_to_ack"),
    ):
        s = f[key]
        table.add_row(
            label,
            f"{f['visible']}/{f['markers']}",
            f"{s['p50_ms']:,.0f}",
            f"{s['p90_ms']:,.0f}",
            f"{s['p99_ms']:,.0f}",
            f"{s['max_ms']:,.0f}",
            f"{s['mean_ms']:,.0f}",
        )
    console.print(table)
    mb = result.get("micro_batches", {})
    console.print(
        f"load: target {ld['target_per_s']:,.0f}/s, achieved [bold]"
        f"{ld['achieved_per_s_measured']:,.0f}/s[/] while measuring "
        f"({ld['sent_total']:,} sent, {ld['produce_errors']} errors); "
        f"source job of {FRESH_VIEW} micro-batches seen: {mb.get('observed', 0)}"
        + (
            f", trigger p50 {mb['trigger_ms_p50']:.0f} ms (max {mb['trigger_ms_max']:.0f}), "
            f"{mb['input_rows_mean']:,.0f} rows/batch on average"
            if mb.get("observed")
            else ""
        )
    )
    console.print(
        "visible = receipt of the first API answer whose marker count covers the marker "
        "(upper bound; resolution = one poll interval + the request's own latency)."
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    for noisy in ("cassandra", "py4j", "httpx", "kafka"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.mode == "catchup":
        return run_catchup(args)
    return run_freshness(args)


if __name__ == "__main__":
    sys.exit(main())
