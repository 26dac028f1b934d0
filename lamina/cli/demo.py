"""``lamina demo``: the whole Lambda pipeline on the local stack, with real merged answers.

Starts Kafka and Cassandra and one streaming job per source (archive, dead letters and the
three example views, from one read of each topic); produces
sample web, IoT and metering events (some hours and a day late, some redelivered, a few
malformed); runs a batch and publishes it; keeps producing; then prints merged answers with
the batch and real-time contributions side by side, and how to query the running stack.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from lamina.cli.common import progress as cli_progress
from lamina.progress import Progress, as_progress
from lamina.settings import KafkaSettings, Settings

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

URLS = ("/", "/pricing", "/docs", "/blog/lambda", "/signup", "/checkout")
SENSORS = tuple(f"sensor-{i}" for i in range(4))
CUSTOMERS = ("acme", "globex", "initech", "umbrella")


def sample_events(rng: random.Random, n: int, now: float) -> dict[str, list[bytes]]:
    """``n`` raw events per source topic: mostly recent, some late, a few redelivered/bad."""

    def when(late_s: float) -> float:
        return now - (rng.uniform(0, late_s) if rng.random() < 0.1 else rng.uniform(0, 3600))

    out: dict[str, list[bytes]] = {"pageviews": [], "sensor-readings": [], "instance-usage": []}
    for _ in range(n):
        ts = when(86400)
        pv = {
            "event_id": str(uuid.UUID(int=rng.getrandbits(128))),
            "ts": datetime.fromtimestamp(ts, UTC).isoformat(),
            "url": rng.choice(URLS),
            "visitor": f"v{rng.randrange(500)}",
            "status": rng.choice([200] * 9 + [404]),
            "load_ms": round(rng.lognormvariate(4.5, 0.6), 1),
        }
        sensor = rng.choice(SENSORS)
        sr = {
            "reading_id": str(uuid.UUID(int=rng.getrandbits(128))),
            "ts_ms": int(now * 1000 - rng.uniform(0, 600_000)),
            "sensor": sensor,
            "site": "plant-1",
            "temperature": round(rng.gauss(20 + SENSORS.index(sensor), 3), 2),
        }
        mu = {
            "usage_id": str(uuid.UUID(int=rng.getrandbits(128))),
            "ts": when(7200),
            "customer": rng.choice(CUSTOMERS),
            "instance_type": "m5.large",
            "instance_seconds": rng.choice([60, 300, 600]),
        }
        for topic, ev in (("pageviews", pv), ("sensor-readings", sr), ("instance-usage", mu)):
            raw = json.dumps(ev).encode()
            out[topic].append(raw)
            if rng.random() < 0.01:
                out[topic].append(raw)  # a producer retry: same event id again
    out["pageviews"] += [b"{oops", json.dumps({"event_id": "x", "ts": "soon"}).encode()]
    return out


def produce(
    kafka: KafkaSettings,
    topics: dict[str, str],
    events: dict[str, list[bytes]],
    progress: Callable[[int], None],
) -> int:
    from kafka import KafkaProducer

    producer = KafkaProducer(**kafka.client_config(), linger_ms=20, batch_size=256 * 1024)
    n = 0
    try:
        futures = []
        for topic, records in events.items():
            for raw in records:
                futures.append(producer.send(topics[topic], value=raw))
                n += 1
                if n % 2000 == 0:
                    progress(2000)
        producer.flush()
        for f in futures:
            f.get(timeout=60)
    finally:
        producer.close()
    return n


def contributions(store: Any, view: Any, key: str, b0: int, b1: int) -> list[dict[str, Any]]:
    """Per bucket: the published batch part, the real-time part (epochs >= cutoff), merged."""
    from serving.merge import merge, present

    pub = store.published(view)
    cutoff = pub.cutoff if pub else None
    batch = (
        []
        if pub is None
        else [(r[0], tuple(r[1:])) for r in store.read_batch(view, pub.version, (key,), b0, b1)]
    )
    rt = [(r[0], r[1], tuple(r[2:])) for r in store.read_realtime(view, (key,), b0, b1)]
    b_only, r_only, both = (
        merge(view, batch, [], cutoff),
        merge(view, [], rt, cutoff),
        merge(view, batch, rt, cutoff),
    )
    rows = []
    for b in sorted(both):
        rows.append(
            {
                "bucket": datetime.fromtimestamp(b, UTC).strftime("%m-%d %H:%M"),
                "batch": present(view, b_only[b].states, q=0.95) if b in b_only else None,
                "realtime": present(view, r_only[b].states, q=0.95) if b in r_only else None,
                "merged": present(view, both[b].states, q=0.95),
            }
        )
    return rows


def _cell(row: dict[str, Any], part: str, agg: str) -> str:
    v = row[part][agg] if row[part] else None
    return "-" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v)


PARTS = (("batch", "batch"), ("realtime", "rt"), ("merged", "merged"))
"""The parts of an answer: key in a :func:`contributions` row, short column label."""


def answer_table(
    console: Console, view: str, key: str, aggs: list[str], rows: list[dict[str, Any]]
) -> Table:
    """The demo's answer for ``key`` of ``view``: per bucket, each aggregation's batch part,
    real-time part and merged value (:func:`contributions` rows), as a rich table that fits
    ``console``'s width without cutting a number: one column per aggregation and part where
    that fits (headers may wrap), else one row per bucket and aggregation with the three
    parts as columns (fits 80 columns)."""
    from rich.table import Table

    labels = {a: "p95" if a == "temp_q" else a for a in aggs}
    title = f"{view} for {key!r}: batch | real-time | merged"
    headers = ["bucket (UTC)", *(f"{labels[a]} {short}" for a in aggs for _, short in PARTS)]
    body = [[r["bucket"], *(_cell(r, part, a) for a in aggs for part, _ in PARTS)] for r in rows]
    # Wide enough when each column holds its longest header word and cell (3: borders, padding).
    widths = [
        max([len(w) for w in h.split()] + [len(line[i]) for line in body])
        for i, h in enumerate(headers)
    ]
    natural = [max([len(h)] + [len(line[i]) for line in body]) for i, h in enumerate(headers)]
    fixed = 1 + sum(3 + w for w in natural) > console.width  # headers wrap in `widths`
    if 1 + sum(3 + w for w in widths) <= console.width:
        wide = Table(title=title, title_justify="left")
        for i, h in enumerate(headers):
            wide.add_column(h, justify="right" if i else "left", width=widths[i] if fixed else None)
        for line in body:
            wide.add_row(*line)
        return wide
    long = Table(title=title, title_justify="left")
    long.add_column("bucket (UTC)", no_wrap=True)
    long.add_column("aggregation", no_wrap=True)
    for _, short in PARTS:
        long.add_column("real-time" if short == "rt" else short, justify="right", no_wrap=True)
    for row in rows:
        for i, a in enumerate(aggs):
            long.add_row(
                row["bucket"] if i == 0 else "",
                labels[a],
                *(_cell(row, part, a) for part, _ in PARTS),
                end_section=i == len(aggs) - 1,
            )
    return long


def wait_complete(settings: Settings, catalog: Any, epoch: int, timeout_s: float = 180) -> None:
    """Until the master dataset of every source a view reads is complete past ``epoch``
    (its source job records it once each partition has a later record or epoch mark)."""
    from lamina.errors import LaminaError
    from lamina.master import complete_cutoff

    sources = {v.source.name: v.source for v in catalog.views.values()}
    deadline = time.monotonic() + timeout_s
    while True:
        pending = [n for n, s in sources.items() if (complete_cutoff(settings, s) or 0) <= epoch]
        if not pending:
            return
        if time.monotonic() > deadline:
            raise LaminaError(
                f"sources {pending} were not complete past epoch {epoch} after {timeout_s:.0f} s",
                hint="see `lamina stream status` and the job logs",
            )
        time.sleep(0.5)


def run_demo(
    settings: Settings,
    *,
    events: int,
    stop: bool,
    progress: Callable[[str], None] | Progress,
    console: Console | None = None,
) -> int:
    """Run the demo end to end, reporting through ``progress`` and printing the answer
    tables on ``console`` (default: stdout's, as wide as the terminal); returns the
    process exit status."""
    from rich.console import Console

    from batch.recompute import run_batch
    from engine.session import spark_session
    from lamina.buckets import ingest_epoch
    from lamina.context import load_catalog
    from lamina.stack.manager import Stack
    from serving.store import open_store
    from speed.queries import start_all, stop_gracefully

    es = settings.pipeline.epoch_seconds
    progress = as_progress(progress)
    console = console or Console()
    stack = Stack(settings)
    stack.up(progress=progress)
    catalog = load_catalog(settings)
    topics = {s.topic: s.topic for s in catalog.sources.values()}
    progress(
        "streaming: one job per source ("
        + ", ".join(sorted({v.source.name for v in catalog.views.values()}))
        + ") keeping the master dataset and the views "
        + ", ".join(catalog.views)
    )
    spark = spark_session(settings, "lamina-demo", progress)
    queries = start_all(spark, settings, catalog, trigger_s=2)
    rng = random.Random()
    try:
        for phase, n in (("history", events), ("fresh", max(events // 4, 1))):
            batch_evs = sample_events(rng, n, time.time())
            total = sum(len(v) for v in batch_evs.values())
            with progress.task(f"producing {phase} events", total=total) as task:
                produce(settings.kafka, topics, batch_evs, task.advance)
            progress(f"produced {total} {phase} events (incl. late, redelivered and malformed)")
            t0 = time.monotonic()
            with progress.task("source jobs catching up", total=len(queries)) as task:
                for q in queries:
                    q.processAllAvailable()
                    task.advance()
            progress(f"source jobs caught up in {time.monotonic() - t0:.1f}s")
            if phase == "history":
                with progress.task("letting the current ingest epoch close"):
                    wait_complete(settings, catalog, ingest_epoch(int(time.time() * 1000), es))
                run_batch(spark, settings, catalog, progress=progress)  # says what it published
        now = int(time.time())
        with open_store(settings.cassandra) as store:
            shows = [
                ("web_pageviews", "/pricing", 3600 * 4, ["pageviews", "visitors"]),
                ("iot_temperature", "sensor-1", 600, ["readings", "temp_mean", "temp_q"]),
                ("cloud_metering", "acme", 3600 * 3, ["instance_seconds"]),
            ]
            for view_name, key, span, aggs in shows:
                view = catalog.view(view_name)
                b0 = view.bucket.bucket_of(now - span)
                rows = contributions(store, view, key, b0, now + view.bucket.seconds)
                console.print(answer_table(console, view_name, key, aggs, rows[-8:]))
            for src in catalog.sources.values():
                from speed.deadletters import read_deadletters

                dead = read_deadletters(settings, src, timeout_s=3)
                if dead:
                    progress(
                        f"dead letters of {src.name}: {len(dead)} "
                        f"(e.g. {dead[-1]['reason']!r}) — `lamina deadletters {src.name}`"
                    )
    finally:
        # Between micro-batches: a query stopped in one interrupts its Spark job, and py4j
        # logs the interrupted callback's traceback (harmless: that batch is not committed).
        with progress.task("stopping the streaming jobs between micro-batches"):
            for q in queries:
                stop_gracefully(q, settings.spark.stop_timeout_s)
        spark.stop()
        if stop:
            stack.down(progress=progress)
    if not stop:
        web = f"{settings.serving.host}:{settings.serving.port}"
        console.print(
            "\n[bold]The stack is still running.[/] Try:\n"
            "  .venv/bin/lamina query web_pageviews /pricing --granularity day\n"
            "  .venv/bin/lamina query iot_temperature sensor-1 --q 0.95 --format json\n"
            "  .venv/bin/lamina batch versions web_pageviews\n"
            "  .venv/bin/lamina stream run            # keep streaming (Ctrl-C stops)\n"
            f"  .venv/bin/lamina serve &               # the console: http://{web}/\n"
            f"  curl '{web}/views/web_pageviews/query?key=/pricing&granularity=hour'\n"
            "  .venv/bin/lamina stack down            # stop Kafka and Cassandra"
        )
    return 0


OWN_LOGGERS = ("lamina", "batch", "speed", "serving", "engine")
"""Lamina's packages: their operator log records (INFO) are not the demo's story."""


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    """The demo prints its own lines and the answers: Lamina's INFO log records (tables
    created, dedup indexes loaded) and py4j's callback tracebacks show with ``--verbose``
    only."""
    if args.verbose:
        return run_demo(settings, events=args.events, stop=args.stop, progress=cli_progress())
    loggers = [logging.getLogger(name) for name in OWN_LOGGERS]
    # py4j logs a failed micro-batch callback's traceback; the query fails with it too,
    # which the demo reports (and stopping the queries can interrupt one, harmlessly).
    callbacks = logging.getLogger("py4j.clientserver")
    loggers.append(callbacks)
    before = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL if lg is callbacks else logging.WARNING)
    try:
        return run_demo(settings, events=args.events, stop=args.stop, progress=cli_progress())
    finally:
        for lg, level in zip(loggers, before, strict=True):
            lg.setLevel(level)


def register(sub: Any) -> None:
    """Add ``lamina demo`` to the ``lamina`` parser's subcommands."""
    demo = sub.add_parser("demo", help="run the demo pipeline on the local stack")
    demo.add_argument("--events", type=int, default=20_000, help="events to produce")
    demo.add_argument("--stop", action="store_true", help="stop the stack at the end")
    demo.set_defaults(func=cmd_demo)
