"""Serving-layer benchmark: the HTTP query API (batch + real-time merge) vs raw driver reads.

Sets up a private keyspace and master dataset, generates pageviews for ``--urls`` URLs over
``--span-hours`` hours, publishes one batch version of ``web_pageviews`` (real Spark, real
Cassandra), writes real-time rows into ``rt_web_pageviews`` for the last ``--rt-hours``
hourly buckets with ingest epochs at/after the published cutoff (so every query merges
both), starts ``lamina serve`` as a subprocess on 127.0.0.1 with the same settings, and then:

1. HTTP: ``--concurrency`` workers (httpx AsyncClient) issue
   ``GET /views/web_pageviews/query?key=<random url>&from=..&to=..`` for ``--duration``
   seconds, the range covering exactly 24 hourly buckets;
2. raw: the same number of threads read the same rows with the cassandra-driver (prepared
   SELECT of the batch-table partition slice for the 24 buckets + the real-time slice,
   issued together with ``execute_async``) for the same duration.

3. top-N (``--top-duration`` > 0): ``--top-concurrency`` workers issue
   ``GET /views/web_pageviews/top?by=pageviews&limit=10`` over the same 24 hours (every key's
   index rows of the 24 buckets, batch + real-time, merged and ranked), closed loop. The
   issue's figure, "top-10 over 24 h with 10k keys", is ``--urls 10000``. The first request
   (it folds the version's index rows, which the others reuse) is timed on its own.

Latency percentiles and throughput are printed side by side and written as JSON.

Run from the repository root:  .venv/bin/python bench/query_bench.py --duration 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import common  # bench/common.py (also puts the repository root on sys.path)
import httpx
from rich.console import Console
from rich.table import Table

from lamina.settings import Settings
from lamina.views import View, load_views
from serving.cassandra import cluster, session
from serving.merge import encode
from serving.schema import batch_table, insert_cql, realtime_index_upsert_cql, realtime_table
from serving.writer import write_rows

VIEW = "web_pageviews"
console = Console(width=None if sys.stdout.isatty() else 160)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="query_bench.py",
        description="Latency and throughput of Lamina's HTTP query API (merged batch + "
        "real-time) next to raw cassandra-driver reads of the same rows.",
    )
    p.add_argument("--events", type=int, default=100_000, help="pageviews to generate (100k)")
    p.add_argument("--urls", type=int, default=50, help="distinct URLs = query keys (50)")
    p.add_argument(
        "--span-hours", type=int, default=48, help="hours of event time covered (48, >= 24)"
    )
    p.add_argument(
        "--rt-hours",
        type=int,
        default=6,
        help="latest hourly buckets that also get real-time rows, 2 epochs each (6)",
    )
    p.add_argument("--concurrency", type=int, default=16, help="requests in flight (16)")
    p.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="also run an open-loop phase offering this many requests/s in total from "
        "--concurrency clients, latency counted from each request's scheduled time (0: none)",
    )
    p.add_argument("--workers", type=int, default=1, help="worker processes of `lamina serve` (1)")
    p.add_argument("--duration", type=float, default=20.0, help="seconds per load phase (20)")
    p.add_argument(
        "--warmup", type=float, default=2.0, help="unmeasured seconds before each phase (2)"
    )
    p.add_argument(
        "--port", type=int, default=None, help="API port on 127.0.0.1 (default serving.port)"
    )
    p.add_argument(
        "--workdir",
        type=Path,
        default=Path("/tmp/lamina-bench"),
        help="private master dataset, server log and JSON result (default /tmp/lamina-bench)",
    )
    p.add_argument(
        "--keep-data", action="store_true", help="keep the keyspace and the generated files"
    )
    p.add_argument(
        "--top-duration", type=float, default=0.0, help="seconds of the top-N phase (0: none)"
    )
    p.add_argument("--top-concurrency", type=int, default=4, help="top-N requests in flight (4)")
    p.add_argument("--seed", type=int, default=11, help="random seed (11)")
    p.add_argument("--json", type=Path, default=None, help="result file (WORKDIR/query-...json)")
    args = p.parse_args(argv)
    if args.span_hours < 24:
        p.error("--span-hours must be >= 24 (queries cover 24 hourly buckets)")
    if not 0 <= args.rt_hours <= 24:
        p.error("--rt-hours must be within 0..24")
    if args.concurrency < 1 or args.duration <= 0 or args.workers < 1 or args.rate < 0:
        p.error("--concurrency, --duration and --workers must be positive, --rate >= 0")
    return args


# -- setup ---------------------------------------------------------------------------------


def publish_batch(settings: Settings, view: View, args: argparse.Namespace, end: int) -> Any:
    """Generate pageviews into the private master dataset and publish one batch version."""
    from batch.recompute import run_batch
    from engine.session import spark_session

    catalog = load_views(settings.pipeline.views_file)
    gen = common.generate_source(
        settings,
        view.source,
        args.events,
        start=end - args.span_hours * common.HOUR,
        end=end,
        seed=args.seed,
        cardinality={"url": args.urls},
    )
    console.print(f"generated {gen.rows:,} pageviews ({gen.files} file(s)); running the batch")
    spark = spark_session(settings, "lamina-query-bench")
    try:
        [br] = run_batch(spark, settings, catalog, [VIEW], progress=lambda m: console.print(m))
    finally:
        spark.stop()
    return br


def write_realtime(
    settings: Settings, view: View, urls: list[str], buckets: list[int], cutoff: int, seed: int
) -> int:
    """Real-time states for each (url, bucket) in two ingest epochs >= ``cutoff``, with their
    key index rows (as the speed layer writes them)."""
    rng = random.Random(seed)
    m = view.monoids
    rows = []
    for url in urls:
        for b in buckets:
            for epoch in (cutoff, cutoff + settings.pipeline.epoch_seconds):
                n = rng.randint(1, 20)
                states = {name: mon.zero() for name, mon in m.items()}
                for _ in range(n):
                    ev = {"visitor": f"rt-v{rng.randrange(500)}", "load_ms": rng.uniform(5, 900)}
                    for name, agg in view.aggregations.items():
                        val = ev.get(agg.field) if agg.field else 1
                        states[name] = m[name].plus(states[name], m[name].lift(val))
                rows.append((url, b, epoch, *encode(view, states)))
    with session(settings.cassandra, settings.cassandra.keyspace) as s:
        index = s.prepare(realtime_index_upsert_cql(view, settings.cassandra.keyspace))
        write_rows(s, index, ((b, e, url, *values, None) for url, b, e, *values in rows), 64)
        stmt = s.prepare(insert_cql(view, realtime_table(view), realtime=True))
        return write_rows(s, stmt, rows, 64)


def start_server(
    settings: Settings, port: int, log_path: Path, workers: int = 1
) -> subprocess.Popen[bytes]:
    """``lamina serve`` in a subprocess that sees the same private settings (via env)."""
    env = dict(os.environ)
    env.update(
        {
            "LAMINA_CASSANDRA__KEYSPACE": settings.cassandra.keyspace,
            "LAMINA_PIPELINE__MASTER_DIR": str(settings.master_dir),
            "LAMINA_PIPELINE__VIEWS_FILE": str(settings.pipeline.views_file),
            "LAMINA_SERVING__HOST": "127.0.0.1",
            "LAMINA_SERVING__PORT": str(port),
        }
    )
    exe = Path(sys.executable).parent / "lamina"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "lamina.cli"]
    cmd += ["-c", str(common.ROOT / "conf" / "lamina.toml"), "serve"]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    if workers > 1:
        cmd += ["--workers", str(workers)]
    log = log_path.open("wb")
    return subprocess.Popen(cmd, cwd=common.ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_healthy(proc: subprocess.Popen[bytes], base: str, log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}; see {log_path}")
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"server not healthy after {timeout:.0f}s; see {log_path}")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


# -- load ----------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` and its children (the workers of
    ``lamina serve --workers N``), from /proc; 0.0 where /proc is not readable."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError, IndexError):
            continue
    return total


def summarize(lat_s: list[float], errors: int, elapsed: float) -> dict[str, Any]:
    lat = sorted(x * 1000 for x in lat_s)
    return {
        "requests": len(lat),
        "errors": errors,
        "elapsed_s": round(elapsed, 3),
        "per_s": round(len(lat) / elapsed, 1) if elapsed else 0.0,
        "p50_ms": round(common.percentile(lat, 0.50), 2),
        "p90_ms": round(common.percentile(lat, 0.90), 2),
        "p99_ms": round(common.percentile(lat, 0.99), 2),
        "max_ms": round(lat[-1], 2) if lat else 0.0,
        "mean_ms": round(sum(lat) / len(lat), 2) if lat else 0.0,
    }


async def http_load(
    base: str, urls: list[str], b0: int, b1: int, args: argparse.Namespace
) -> tuple[dict[str, Any], dict[str, int]]:
    limits = httpx.Limits(
        max_connections=args.concurrency, max_keepalive_connections=args.concurrency
    )
    statuses: dict[str, int] = {}
    lat: list[float] = []
    errors = 0
    rng = random.Random(1)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:

        async def worker(until: float, record: bool) -> None:
            nonlocal errors
            while time.monotonic() < until:
                params = {"key": rng.choice(urls), "from": str(b0), "to": str(b1)}
                t0 = time.perf_counter()
                try:
                    r = await client.get(f"/views/{VIEW}/query", params=params)
                    code = str(r.status_code)
                except httpx.HTTPError as exc:
                    code = type(exc).__name__
                dt = time.perf_counter() - t0
                if not record:
                    continue
                statuses[code] = statuses.get(code, 0) + 1
                if code == "200":
                    lat.append(dt)
                else:
                    errors += 1

        if args.warmup > 0:
            until = time.monotonic() + args.warmup
            await asyncio.gather(*(worker(until, False) for _ in range(args.concurrency)))
        t0 = time.monotonic()
        until = t0 + args.duration
        await asyncio.gather(*(worker(until, True) for _ in range(args.concurrency)))
        elapsed = time.monotonic() - t0
    return summarize(lat, errors, elapsed), statuses


async def rate_load(
    base: str, urls: list[str], b0: int, b1: int, args: argparse.Namespace
) -> tuple[dict[str, Any], dict[str, int]]:
    """Open loop: ``--rate`` requests/s in total, request *j* of client *w* scheduled at
    ``t0 + (j * C + w) / rate``; a client behind its schedule sends at once, and latency
    counts from the scheduled time (so a slow server is not hidden by fewer requests). At
    the end of the phase, requests still due are counted as ``not_sent``."""
    limits = httpx.Limits(
        max_connections=args.concurrency, max_keepalive_connections=args.concurrency
    )
    statuses: dict[str, int] = {}
    lat: list[float] = []
    errors = not_sent = 0
    rng = random.Random(2)
    c = args.concurrency
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:

        async def worker(w: int, t0: float, until: float, record: bool) -> None:
            nonlocal errors, not_sent
            j = 0
            while True:
                due = t0 + (j * c + w) / args.rate
                if due >= until:
                    return
                if time.perf_counter() >= until:  # behind schedule at the end: not sent
                    if record:
                        not_sent += int((until - due) * args.rate / c) + 1
                    return
                j += 1
                wait = due - time.perf_counter()
                if wait > 0:
                    await asyncio.sleep(wait)
                params = {"key": rng.choice(urls), "from": str(b0), "to": str(b1)}
                try:
                    r = await client.get(f"/views/{VIEW}/query", params=params)
                    code = str(r.status_code)
                except httpx.HTTPError as exc:
                    code = type(exc).__name__
                dt = time.perf_counter() - due
                if not record:
                    continue
                statuses[code] = statuses.get(code, 0) + 1
                if code == "200":
                    lat.append(dt)
                else:
                    errors += 1

        if args.warmup > 0:
            t0 = time.perf_counter()
            await asyncio.gather(*(worker(w, t0, t0 + args.warmup, False) for w in range(c)))
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(w, t0, t0 + args.duration, True) for w in range(c)))
        elapsed = time.perf_counter() - t0
    out = summarize(lat, errors, elapsed)
    out["offered_per_s"] = args.rate
    # Scheduled within the phase but never sent (the server did not keep up with the rate).
    out["not_sent"] = not_sent
    return out, statuses


async def top_load(base: str, b0: int, b1: int, args: argparse.Namespace) -> dict[str, Any]:
    """Closed loop: ``--top-concurrency`` clients ask the top 10 URLs by pageviews over
    ``[b0, b1)`` for ``--top-duration`` seconds (after ``--warmup``)."""
    c = args.top_concurrency
    limits = httpx.Limits(max_connections=c, max_keepalive_connections=c)
    statuses: dict[str, int] = {}
    lat: list[float] = []
    errors = 0
    params = {"by": "pageviews", "limit": "10", "from": str(b0), "to": str(b1)}
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=120) as client:

        async def worker(until: float, record: bool) -> None:
            nonlocal errors
            while time.monotonic() < until:
                t0 = time.perf_counter()
                try:
                    r = await client.get(f"/views/{VIEW}/top", params=params)
                    code = str(r.status_code)
                except httpx.HTTPError as exc:
                    code = type(exc).__name__
                dt = time.perf_counter() - t0
                if not record:
                    continue
                statuses[code] = statuses.get(code, 0) + 1
                if code == "200":
                    lat.append(dt)
                else:
                    errors += 1

        if args.warmup > 0:
            until = time.monotonic() + args.warmup
            await asyncio.gather(*(worker(until, False) for _ in range(c)))
        t0 = time.monotonic()
        until = t0 + args.top_duration
        await asyncio.gather(*(worker(until, True) for _ in range(c)))
        elapsed = time.monotonic() - t0
    out = summarize(lat, errors, elapsed)
    out["statuses"] = statuses
    return out


def raw_load(
    settings: Settings, view: View, version: int, urls: list[str], b0: int, b1: int, args: Any
) -> dict[str, Any]:
    """Batch slice + real-time slice per read, both in flight at once, N threads."""
    ks = settings.cassandra.keyspace
    cols = ", ".join(["bucket", *(c for c, _ in view.value_columns)])
    c = cluster(settings.cassandra)
    s = c.connect(ks)
    try:
        q_batch = s.prepare(
            f"SELECT {cols} FROM {batch_table(view, version)} "
            "WHERE url = ? AND bucket >= ? AND bucket < ?"
        )
        q_rt = s.prepare(
            f"SELECT bucket, ingest_epoch, {cols.removeprefix('bucket, ')} FROM "
            f"{realtime_table(view)} WHERE url = ? AND bucket >= ? AND bucket < ?"
        )
        lock = threading.Lock()
        lat: list[float] = []
        errors = [0]
        rows_read = [0]

        def worker(seed: int, until: float, record: bool) -> None:
            rng = random.Random(seed)
            mine: list[float] = []
            n_rows = n_err = 0
            while time.monotonic() < until:
                args_ = (rng.choice(urls), b0, b1)
                t0 = time.perf_counter()
                try:
                    f1 = s.execute_async(q_batch, args_)
                    f2 = s.execute_async(q_rt, args_)
                    n = len(list(f1.result())) + len(list(f2.result()))
                except Exception:
                    n_err += 1
                    continue
                mine.append(time.perf_counter() - t0)
                n_rows += n
            if record:
                with lock:
                    lat.extend(mine)
                    errors[0] += n_err
                    rows_read[0] += n_rows

        def phase(seconds: float, record: bool) -> float:
            until = time.monotonic() + seconds
            threads = [
                threading.Thread(target=worker, args=(i, until, record))
                for i in range(args.concurrency)
            ]
            t0 = time.monotonic()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            return time.monotonic() - t0

        if args.warmup > 0:
            phase(args.warmup, False)
        elapsed = phase(args.duration, True)
        out = summarize(lat, errors[0], elapsed)
        out["rows_per_read"] = round(rows_read[0] / max(1, len(lat)), 1)
        return out
    finally:
        c.shutdown()


# -- main ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    for noisy in ("cassandra", "py4j", "httpx"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    args.workdir.mkdir(parents=True, exist_ok=True)
    settings = common.private_settings(args.workdir.absolute(), "qbench")
    catalog = load_views(settings.pipeline.views_file)
    view = catalog.view(VIEW)
    port = args.port or settings.serving.port
    base = f"http://127.0.0.1:{port}"
    ks = settings.cassandra.keyspace
    end = int(time.time() // common.HOUR * common.HOUR)  # queries: the last 24 full hours
    b0, b1 = end - 24 * common.HOUR, end
    urls = [f"/p/{i}" for i in range(args.urls)]
    console.print(
        f"[bold]Lamina query benchmark[/]: keyspace [cyan]{ks}[/], {args.events:,} pageviews, "
        f"{args.urls} URLs over {args.span_hours} h, API on {base}, concurrency "
        f"{args.concurrency}, {args.duration:g}s per phase"
    )
    result: dict[str, Any] = {
        "benchmark": "query",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "config": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "json"
        }
        | {"keyspace": ks, "view": VIEW, "from": b0, "to": b1, "buckets": 24},
    }
    log_path = args.workdir / f"{ks}-serve.log"
    proc: subprocess.Popen[bytes] | None = None
    try:
        br = publish_batch(settings, view, args, end)
        rt_buckets = [end - (i + 1) * common.HOUR for i in range(args.rt_hours)]
        n_rt = write_realtime(settings, view, urls, rt_buckets, br.cutoff, args.seed)
        result["setup"] = {
            "batch_version": br.version,
            "cutoff": br.cutoff,
            "batch_rows": br.rows,
            "batch_events": br.events,
            "batch_seconds": br.timings.get("total_s"),
            "realtime_rows": n_rt,
        }
        console.print(f"wrote {n_rt} real-time rows (epochs >= cutoff {br.cutoff})")

        proc = start_server(settings, port, log_path, args.workers)
        t0 = time.monotonic()
        wait_healthy(proc, base, log_path, timeout=90)
        console.print(f"API healthy in {time.monotonic() - t0:.1f}s (log {log_path})")
        # One checked query: 24 buckets, batch + real-time merged.
        r = httpx.get(
            f"{base}/views/{VIEW}/query",
            params={"key": urls[0], "from": str(b0), "to": str(b1)},
            timeout=30,
        )
        r.raise_for_status()
        buckets = r.json()["results"][0]["buckets"]
        merged = sum(1 for b in buckets if b["from_batch"] and b["realtime_epochs"])
        result["sanity"] = {"buckets": len(buckets), "buckets_batch_and_realtime": merged}
        console.print(
            f"sanity query: {len(buckets)} buckets, {merged} merged from batch + real-time"
        )

        console.print(f"HTTP load: {args.concurrency} in flight for {args.duration:g}s ...")
        cpu0, mine0 = cpu_seconds(proc.pid), time.process_time()
        http, statuses = asyncio.run(http_load(base, urls, b0, b1, args))
        cpu = cpu_seconds(proc.pid) - cpu0  # includes the unmeasured warm-up's requests
        mine = time.process_time() - mine0
        http["statuses"] = statuses
        if http["requests"]:
            sent = http["requests"] * (1 + args.warmup / args.duration)
            http["server_cpu_ms_per_request"] = round(cpu * 1000 / sent, 2)
            http["client_cpu_ms_per_request"] = round(mine * 1000 / sent, 2)
        result["http"] = http
        if args.rate > 0:
            console.print(
                f"HTTP open loop: {args.rate:g} requests/s offered by {args.concurrency} "
                f"clients for {args.duration:g}s ..."
            )
            at_rate, rate_statuses = asyncio.run(rate_load(base, urls, b0, b1, args))
            at_rate["statuses"] = rate_statuses
            result["http_rate"] = at_rate
        if args.top_duration > 0:
            # The first request of the range folds the version's index rows (the cache of
            # batch folds is empty): timed on its own, the loaded phase reuses the fold.
            t_first = time.perf_counter()
            r = httpx.get(
                f"{base}/views/{VIEW}/top",
                params={"by": "pageviews", "limit": "10", "from": str(b0), "to": str(b1)},
                timeout=120,
            )
            first_ms = (time.perf_counter() - t_first) * 1000
            r.raise_for_status()
            result["top_sanity"] = {
                "keys_with_data": r.json()["keys_with_data"],
                "first_request_ms": round(first_ms, 1),
                "load_average": os.getloadavg(),
            }
            console.print(
                f"top-10 over 24 h: {r.json()['keys_with_data']:,} keys with data; first "
                f"request (folds the batch part) {first_ms:,.0f} ms at load "
                f"{os.getloadavg()[0]:.1f}; {args.top_concurrency} in flight for "
                f"{args.top_duration:g}s ..."
            )
            result["top"] = asyncio.run(top_load(base, b0, b1, args))
            result["top"]["load_average"] = os.getloadavg()
        stop_server(proc)  # free its CPU for the raw phase (2 cores are shared)
        console.print(f"raw driver load: {args.concurrency} threads for {args.duration:g}s ...")
        result["raw"] = raw_load(settings, view, br.version, urls, b0, b1, args)
    finally:
        if proc is not None:
            stop_server(proc)
        if not args.keep_data:
            _cleanup(settings)

    table = Table(
        title=f"{VIEW}: 1 key x 24 hourly buckets per request, concurrency {args.concurrency}, "
        f"{args.duration:g}s"
    )
    for col in ("path", "requests", "errors", "per s", "p50 ms", "p90 ms", "p99 ms", "max ms"):
        table.add_column(col, justify="left" if col == "path" else "right")
    rows = [("HTTP API (batch + rt reads, merge, JSON)", result["http"])]
    if "http_rate" in result:
        missed = result["http_rate"]["not_sent"]
        rows.append(
            (
                f"HTTP API at {args.rate:g}/s offered (open loop, {missed} not sent)",
                result["http_rate"],
            )
        )
    rows.append(
        (f"raw driver (batch + rt slices, {result['raw']['rows_per_read']} rows)", result["raw"])
    )
    if "top" in result:
        rows.append(
            (
                f"HTTP top-10 by pageviews over 24 h ({result['top_sanity']['keys_with_data']:,} "
                f"keys, {args.top_concurrency} in flight)",
                result["top"],
            )
        )
    for label, r in rows:
        table.add_row(
            label,
            f"{r['requests']:,}",
            str(r["errors"]),
            f"{r['per_s']:,.1f}",
            f"{r['p50_ms']:.1f}",
            f"{r['p90_ms']:.1f}",
            f"{r['p99_ms']:.1f}",
            f"{r['max_ms']:.1f}",
        )
    console.print(table)
    if "server_cpu_ms_per_request" in result["http"]:
        console.print(
            "CPU per request (closed loop, warm-up included pro rata): API server "
            f"{result['http']['server_cpu_ms_per_request']:.2f} ms, load generator (httpx) "
            f"{result['http']['client_cpu_ms_per_request']:.2f} ms"
        )
    raw_p50 = result["raw"]["p50_ms"]
    if raw_p50 > 0:
        result["p50_ratio_to_raw"] = round(result["http"]["p50_ms"] / raw_p50, 2)
        console.print(
            f"merged point query p50 / raw driver read p50: {result['p50_ratio_to_raw']:.2f}x "
            f"({result['http']['p50_ms']:.1f} ms vs {raw_p50:.1f} ms)"
        )
    if "top" in result:
        console.print(
            f"top-10: first request of the range {result['top_sanity']['first_request_ms']:,.0f}"
            " ms (it folds the published version's index rows; later ones reuse the fold)"
        )
    load = os.getloadavg()
    console.print(f"load average at the end: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    console.print(
        "Everything (Cassandra, the API server, the load generator) shares this machine's "
        f"{os.cpu_count()} core(s); the API server is stopped before the raw phase."
    )
    out_path = args.json or args.workdir / f"query-bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out_path.write_text(json.dumps(result, indent=2))
    console.print(f"results written to [cyan]{out_path}[/]")
    failed = sum(result[k]["errors"] for k in ("http", "http_rate", "raw", "top") if k in result)
    return 0 if failed == 0 else 1


def _cleanup(settings: Settings) -> None:
    try:
        with session(settings.cassandra) as s:
            s.execute(f"DROP KEYSPACE IF EXISTS {settings.cassandra.keyspace}", timeout=120)
    except Exception as exc:
        console.print(f"[yellow]could not drop keyspace {settings.cassandra.keyspace}: {exc}[/]")
    shutil.rmtree(settings.master_dir.parent, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
