"""Soak: the whole platform under late events, redeliveries, malformed records and faults.

Runs against the local stack (``lamina stack up``; started here if it is not running) in a
private world: its own keyspace (``t_soak_*``), topics, master dataset, checkpoints and job
registry under ``--state``, so the shared views are never touched. The platform runs as a user
runs it, each part in its own process:

- one submitted source job per source (``lamina stream submit``: archive, dead letters, the
  real-time views), restarted by its supervisor when it dies;
- the HTTP API (``lamina serve``) on a private port, asked all the time by a query thread;
- ``lamina batch run`` between rounds, as the Airflow DAG would run it (a failed run is
  retried, as Airflow's task retries would).

The generator (:mod:`tests.truth`: the three example views' sources) sends events up to days
late, 1% of them delivered twice, and 0.1% malformed records drawn from the fuzz corpus
(:mod:`bench.corpus`). Each cycle is a round of events with scheduled faults landing while it
is processed, then a checkpoint, then a batch publish, then another checkpoint. The faults:

``driver``
    kill -9 of a source job's Python driver, at a random moment of the round;
``archiver``
    kill -9 of a source job's Spark driver JVM (``spark-submit``) in the middle of a
    micro-batch: its archive files written, its real-time writes not committed;
``batch``
    kill -9 of ``lamina batch run`` while it builds and publishes a version;
``cassandra`` / ``kafka``
    kill -9 of the service, restarted after ``--pause`` seconds (``lamina stack up``, what an
    operator or a service manager does).

The harness restarts only the services it killed; the jobs come back by their supervisor and
the batch by its retry. At each checkpoint it compares every key x bucket of the merged HTTP
answer with its own truth (:func:`tests.truth.truth` over the valid events sent so far); at
the end it matches every malformed record in Kafka (by partition and offset) with a dead
letter that has a reason. While it runs, the query thread records every answer: 200, an
explicit 503 (allowed during an outage), anything else (never allowed), and counts that exceed
the truth of everything sent so far (a double count: never allowed).

Usage (from the repository root)::

    python bench/soak.py --events 1000000 --cycles 10 --json soak.json

A short version runs in the test suite (``tests/integration/test_soak.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from kafka import KafkaProducer  # noqa: E402

from bench import corpus  # noqa: E402
from lamina import process  # noqa: E402
from lamina.settings import Settings  # noqa: E402
from lamina.stack.manager import Stack  # noqa: E402
from lamina.streams import committed_offsets, ensure_topics, source_query  # noqa: E402
from lamina.views import Source, ViewCatalog, load_views  # noqa: E402
from serving.store import open_store  # noqa: E402
from speed import launcher  # noqa: E402
from speed.deadletters import read_deadletters  # noqa: E402
from tests import truth  # noqa: E402
from tests.integration.streams import (  # noqa: E402
    archived,
    drop_private_world,
    end_offsets,
    latest_batches,
    private_env,
    running_batches,
    settings_under,
    topic_records,
)

FAULTS = ("driver", "archiver", "batch", "cassandra", "kafka")
GENERATORS: dict[str, Callable[..., truth.Generated]] = {
    "web_pageviews": truth.pageviews,
    "iot_temperature": truth.sensors,
    "cloud_metering": truth.metering,
}
COUNTS = {"web_pageviews": "pageviews", "iot_temperature": "readings", "cloud_metering": "records"}
"""Per view, a count aggregation the query thread checks against the truth sent so far."""
WINDOW = {"from": str(truth.BASE - 4 * 86400), "to": str(truth.BASE + 3600)}
Cell = tuple[str, int]


def log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} [soak] {msg}", flush=True)


@dataclass
class Config:
    """What a soak run does (the command line's options)."""

    events: int = 1_000_000
    """Valid events over all sources and cycles (redeliveries and malformed ones on top)."""
    cycles: int = 10
    faults: tuple[str, ...] = FAULTS
    min_each: int = 3
    """Each fault kind happens at least this many times (spread over the cycles)."""
    pause_s: float = 15.0
    """How long a killed Cassandra or Kafka stays down."""
    redeliver: float = 0.01
    malformed: float = 0.001
    round_s: float = 20.0
    """A round's events are sent over at least this long, so faults land while they flow."""
    epoch_s: int = 5
    seed: int = 7
    timeout_s: float = 900.0
    """How long a checkpoint waits for the jobs to catch up before it reports a failure."""
    state: Path | None = None
    keep: bool = False

    def schedule(self) -> list[list[str]]:
        """The faults of each cycle: round robin over the kinds, at least ``min_each`` of each,
        no cycle left without one while there are kinds."""
        if not self.faults:
            return [[] for _ in range(self.cycles)]
        total = max(self.cycles, self.min_each * len(self.faults))
        plan: list[list[str]] = [[] for _ in range(self.cycles)]
        for i in range(total):  # consecutive blocks: no kind twice in a cycle
            plan[i * self.cycles // total].append(self.faults[i % len(self.faults)])
        return plan


@dataclass
class Report:
    """What the run saw; ``mismatches``, ``wrong_answers``, ``unexplained_errors``,
    ``dead_letters_missing`` and ``dead_letters_unexpected`` must all be 0."""

    config: dict[str, Any] = field(default_factory=dict)
    events: int = 0
    records_sent: int = 0
    redeliveries: int = 0
    malformed_sent: int = 0
    malformed_kinds: dict[str, int] = field(default_factory=dict)
    batch_cycles: int = 0
    batch_attempts: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    job_restarts: int = 0
    checkpoints: int = 0
    cells_checked: int = 0
    mismatches: int = 0
    mismatch_samples: list[str] = field(default_factory=list)
    queries: dict[str, int] = field(default_factory=dict)
    wrong_answers: int = 0
    unexplained_errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    dead_letters_matched: int = 0
    dead_letters_missing: int = 0
    dead_letters_unexpected: int = 0
    dead_letters_without_reason: int = 0
    seconds: float = 0.0
    failure: str = ""

    @property
    def ok(self) -> bool:
        return not (
            self.failure
            or self.mismatches
            or self.wrong_answers
            or self.unexplained_errors
            or self.dead_letters_missing
            or self.dead_letters_unexpected
            or self.dead_letters_without_reason
        )


class SoakFailure(Exception):
    """The platform did not recover by itself (a job never caught up, a batch never ran)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Platform:
    """The private world and the processes a user would run on it."""

    def __init__(self, cfg: Config, base: Path) -> None:
        self.cfg = cfg
        self.base = base
        self.env = private_env(base, "soak", cfg.epoch_s)
        self.env["LAMINA_SERVING__PORT"] = str(free_port())
        with settings_under(self.env) as s:
            self.settings: Settings = s
        self.catalog: ViewCatalog = load_views(self.settings.pipeline.views_file)
        self.sources: dict[str, Source] = {v: self.catalog.view(v).source for v in GENERATORS}
        self.api: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{self.env['LAMINA_SERVING__PORT']}"
        self.logs = base / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)

    # -- processes ------------------------------------------------------------------------

    def lamina(self, *args: str, log_name: str, timeout: float | None = None) -> int:
        """Run ``lamina <args>`` in the private world; its output goes to a log file."""
        with (self.logs / log_name).open("ab") as out:
            return subprocess.run(
                [sys.executable, "-m", "lamina.cli", *args],
                env={**os.environ, **self.env},
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
            ).returncode

    def popen(self, *args: str, log_name: str) -> subprocess.Popen[bytes]:
        out = (self.logs / log_name).open("ab")
        return subprocess.Popen(
            [sys.executable, "-m", "lamina.cli", *args],
            env={**os.environ, **self.env},
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def start(self) -> None:
        ensure_topics(self.settings, [s.topic for s in self.sources.values()])
        self.api = self.popen("serve", log_name="serve.log")
        for source in sorted({s.name for s in self.sources.values()}):
            rc = self.lamina("stream", "submit", source, log_name="submit.log", timeout=120)
            if rc != 0:
                raise SoakFailure(f"stream submit {source} exited {rc}: {self.tail('submit.log')}")
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/views", timeout=5).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise SoakFailure(f"the API did not answer: {self.tail('serve.log')}")
            time.sleep(0.5)

    def stop(self) -> None:
        for job in launcher.jobs(self.settings):
            if job.state in launcher.LIVE:
                self.lamina("stream", "stop", job.id, log_name="stop.log", timeout=180)
        if self.api and self.api.poll() is None:
            os.killpg(self.api.pid, signal.SIGTERM)
            try:
                self.api.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.api.pid, signal.SIGKILL)

    def tail(self, name: str, n: int = 2000) -> str:
        f = self.logs / name
        return f.read_text(errors="replace")[-n:] if f.exists() else ""

    def job(self, view: str) -> launcher.Job:
        query = source_query(self.sources[view])
        live = [j for j in launcher.jobs(self.settings) if query in j.queries]
        if not live:
            raise SoakFailure(f"no job runs {query}")
        return live[-1]

    def restarts(self) -> int:
        return sum(j.restarts for j in launcher.jobs(self.settings))

    # -- waiting --------------------------------------------------------------------------

    def wait_caught_up(self) -> float:
        """Until every source query's committed offsets reach its topic's end; the jobs come
        back by themselves (their supervisor), the harness does not restart them."""
        t0 = time.monotonic()
        want = {v: end_offsets(self.settings, s.topic) for v, s in self.sources.items()}
        pending = set(want)
        while pending:
            for v in list(pending):
                got = committed_offsets(self.settings, source_query(self.sources[v])) or {}
                if all(got.get(int(p), -1) >= off for p, off in want[v].items()):
                    pending.discard(v)
            states = {j.id: (j.state, j.message) for j in launcher.jobs(self.settings)}
            failed = {k: v for k, v in states.items() if v[0] == "failed"}
            if failed:  # its supervisor gave up on it (or there is none)
                raise SoakFailure(f"jobs failed: {failed}")
            if time.monotonic() - t0 > self.cfg.timeout_s:
                raise SoakFailure(f"not caught up after {self.cfg.timeout_s:.0f}s: {states}")
            time.sleep(0.5)
        return time.monotonic() - t0


class Traffic:
    """The generator: rounds of events per view, sent with retries (a record whose send
    failed is sent again: possibly twice in Kafka, as with any at-least-once producer)."""

    def __init__(self, platform: Platform, cfg: Config, report: Report) -> None:
        self.p = platform
        self.cfg = cfg
        self.report = report
        self.good: dict[str, list[dict[str, Any]]] = {v: [] for v in GENERATORS}
        self.malformed: dict[str, set[bytes]] = {v: set() for v in GENERATORS}
        self.counts: dict[str, Counter[Cell]] = {v: Counter() for v in GENERATORS}
        """Per view, the truth of its count aggregation over every event sent so far."""
        self.lock = threading.Lock()
        self.rng = random.Random(cfg.seed)
        self.keys: dict[str, set[str]] = {v: set() for v in GENERATORS}

    def _producer(self) -> KafkaProducer:
        return KafkaProducer(
            bootstrap_servers=self.p.settings.kafka.bootstrap_servers,
            acks="all",
            linger_ms=20,
            batch_size=1 << 18,
            max_block_ms=5000,
            request_timeout_ms=10_000,
            retries=3,
        )

    def round(self, cycle: int, n_per_view: int) -> None:
        """One round: every view's records shuffled together, sent over ``round_s``."""
        records: list[tuple[str, bytes]] = []
        for i, (view, gen) in enumerate(GENERATORS.items()):
            g = gen(n_per_view, seed=self.cfg.seed * 1000 + cycle * 10 + i, bad=0.0)
            self.report.events += len(g.good)
            self.report.redeliveries += len(g.raw) - len(g.good)
            with self.lock:
                self.good[view] += g.good
                for cell, values in truth.truth(view, g.good).items():
                    self.counts[view][cell] += values[COUNTS[view]]
                    self.keys[view].add(cell[0])
            source = self.p.sources[view]
            topic = source.topic
            out = [(topic, r) for r in g.raw]
            bad = sum(1 for _ in range(len(g.good)) if self.rng.random() < self.cfg.malformed)
            for kind, raw in corpus.corpus(source, bad, seed=self.rng.getrandbits(32)):
                self.malformed[view].add(raw)
                self.report.malformed_kinds[kind] = self.report.malformed_kinds.get(kind, 0) + 1
                out.insert(self.rng.randrange(len(out) + 1), (topic, raw))
            self.report.malformed_sent += bad
            records += out
        self.rng.shuffle(records)
        self.send(records)

    def send(self, records: list[tuple[str, bytes]]) -> None:
        """Send ``records`` paced over ``round_s``; resend what failed until all are acked."""
        chunk = max(1, math.ceil(len(records) / max(1.0, self.cfg.round_s * 4)))
        t0 = time.monotonic()
        producer = self._producer_retrying()
        try:
            for i in range(0, len(records), chunk):
                pending = records[i : i + chunk]
                while pending:
                    failed = []
                    futures = []
                    for topic, value in pending:
                        try:
                            futures.append(((topic, value), self._send(producer, topic, value)))
                        except Exception:  # broker down: send again later
                            failed.append((topic, value))
                    with contextlib.suppress(Exception):
                        producer.flush(timeout=30)
                    for rec, fut in futures:
                        try:
                            fut.get(timeout=30)
                        except Exception:  # not acknowledged: send again
                            failed.append(rec)
                    self.report.records_sent += len(pending) - len(failed)
                    if failed:
                        time.sleep(1.0)
                    pending = failed
                ahead = (i + chunk) / len(records) * self.cfg.round_s - (time.monotonic() - t0)
                if ahead > 0:
                    time.sleep(ahead)
        finally:
            with contextlib.suppress(Exception):
                producer.close(timeout=5)

    def _producer_retrying(self) -> KafkaProducer:
        while True:
            try:
                return self._producer()
            except Exception:  # Kafka down right now: wait for it
                time.sleep(1.0)

    @staticmethod
    def _send(producer: KafkaProducer, topic: str, value: bytes) -> Any:
        # The key (hence partition) is a hash of the value: a redelivery goes where its
        # original went, as a producer's retry does.
        return producer.send(topic, key=str(hash(value) % 7).encode(), value=value)


class Queries(threading.Thread):
    """Asks the HTTP API all the time; records what it answered."""

    def __init__(self, platform: Platform, traffic: Traffic, report: Report) -> None:
        super().__init__(daemon=True, name="soak-queries")
        self.p = platform
        self.t = traffic
        self.report = report
        self.done = threading.Event()
        self.rng = random.Random(1)
        self.seen: Counter[str] = Counter()

    def run(self) -> None:
        with httpx.Client(base_url=self.p.url, timeout=30) as client:
            while not self.done.is_set():
                view = self.rng.choice(list(GENERATORS))
                with self.t.lock:
                    keys = sorted(self.t.keys[view])
                if not keys:
                    time.sleep(0.2)
                    continue
                ask = self.rng.sample(keys, min(3, len(keys)))
                self.once(client, view, ask)
                time.sleep(0.05)
        self.report.queries = dict(self.seen)

    def once(self, client: httpx.Client, view: str, keys: list[str]) -> None:
        try:
            r = client.get(f"/views/{view}/query", params={"key": keys, **WINDOW})
        except httpx.HTTPError as exc:
            self.seen["unreachable"] += 1
            self.error(f"{view}: {type(exc).__name__}: {exc}")
            return
        if r.status_code == 503 and r.headers.get("content-type", "").startswith(
            "application/json"
        ):
            self.seen["503"] += 1
            return
        if r.status_code == 404:
            self.seen["404"] += 1  # a key with no data yet: explicit, and possible early on
            return
        if r.status_code != 200:
            self.seen[str(r.status_code)] += 1
            self.report.unexplained_errors += 1
            self.error(f"{view}: {r.status_code} {r.text[:300]}")
            return
        self.seen["200"] += 1
        with self.t.lock:
            counts = self.t.counts[view]
            for res in r.json()["results"]:
                for b in res["buckets"]:
                    got = b["values"].get(COUNTS[view]) or 0
                    bound = counts.get((res["key"], b["bucket_start"]), 0)
                    if got > bound:  # more than was ever sent: counted twice
                        self.report.wrong_answers += 1
                        self.error(f"{view} {res['key']} {b['bucket_start']}: {got} > {bound}")

    def error(self, msg: str) -> None:
        if len(self.report.error_samples) < 20:
            self.report.error_samples.append(msg)

    def stop(self) -> None:
        self.done.set()
        self.join(timeout=60)


class Faults:
    """Kill -9 of one part of the platform; the harness restarts only what it killed of the
    stack (Cassandra, Kafka) after the pause, never a job or a batch."""

    def __init__(self, platform: Platform, cfg: Config, report: Report) -> None:
        self.p = platform
        self.cfg = cfg
        self.report = report
        self.rng = random.Random(cfg.seed + 1)

    def inject(self, kind: str) -> None:
        log(f"fault: {kind}")
        {
            "driver": self.kill_driver,
            "archiver": self.kill_mid_archive,
            "cassandra": lambda: self.kill_service("cassandra"),
            "kafka": lambda: self.kill_service("kafka"),
        }[kind]()
        self.report.faults[kind] = self.report.faults.get(kind, 0) + 1

    def running_job(self, view: str, timeout_s: float = 300) -> launcher.Job:
        """The view's source job once its driver runs (after a restart by its supervisor)."""
        deadline = time.monotonic() + timeout_s
        while True:
            job = self.p.job(view)
            if job.state == "running" and job.driver_pid and job.launcher_pid:
                return job
            if time.monotonic() > deadline:
                raise SoakFailure(f"job {job.id} not running: {job.state} {job.message}")
            time.sleep(0.5)

    def kill_driver(self) -> None:
        """kill -9 of a source job's Python driver, whatever it is doing."""
        job = self.running_job(self.rng.choice(list(GENERATORS)))
        os.kill(int(job.driver_pid), signal.SIGKILL)  # type: ignore[arg-type]

    def kill_mid_archive(self) -> None:
        """kill -9 of a source job's Spark driver JVM as soon as one of its micro-batches with
        new records has written its archive files and not committed (the real-time writes
        come next). If no such moment comes within a minute, at a random moment."""
        view = self.rng.choice(list(GENERATORS))
        job = self.running_job(view)
        query = source_query(self.p.sources[view])
        after = latest_batches(self.p.settings, [query])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            running = running_batches(self.p.settings, [query], after)
            if any(archived(self.p.settings, self.p.sources[view], n) for n in running.values()):
                break
            time.sleep(0.005)
        else:
            log("fault: archiver: no micro-batch caught mid-write, killed anyway")
        os.kill(int(job.launcher_pid), signal.SIGKILL)  # type: ignore[arg-type]

    def kill_service(self, name: str) -> None:
        """kill -9 of the stack's ``name``, down for ``pause_s``, then ``lamina stack up``."""
        stack = Stack(self.p.settings, [name])
        svc = stack.service(name)
        pid = process.running_pid(svc.pid_file, svc.marker)
        if pid is None:
            raise SoakFailure(f"{name} is not running: cannot kill it")
        try:
            os.kill(pid, signal.SIGKILL)
            while process.alive(pid):
                time.sleep(0.1)
            time.sleep(self.cfg.pause_s)
        finally:
            stack.up(progress=lambda m: log(f"stack: {m}"))

    def kill_batch(self) -> None:
        """kill -9 of ``lamina batch run`` once it builds a new version (a random moment of
        its build or publish)."""
        log("fault: batch")
        with open_store(self.p.settings.cassandra) as store:
            views = [self.p.catalog.view(v) for v in GENERATORS]
            known = {v.name: {x.version for x in store.versions(v)} for v in views}
            proc = self.p.popen("batch", "run", log_name="batch.log")
            deadline = time.monotonic() + 300
            while proc.poll() is None and time.monotonic() < deadline:
                if any({x.version for x in store.versions(v)} - known[v.name] for v in views):
                    break
                time.sleep(0.05)
        time.sleep(self.rng.uniform(0, 3))
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        self.report.faults["batch"] = self.report.faults.get("batch", 0) + 1


def batch(platform: Platform, report: Report, attempts: int = 12, retry_s: float = 15) -> None:
    """``lamina batch run``, retried as an Airflow task would be (e.g. while the lease of a
    killed build has not expired yet)."""
    for attempt in range(1, attempts + 1):
        report.batch_attempts += 1
        rc = platform.lamina("batch", "run", log_name="batch.log", timeout=1800)
        if rc == 0:
            report.batch_cycles += 1
            return
        log(f"batch run exited {rc} (attempt {attempt}); retrying in {retry_s:.0f}s")
        time.sleep(retry_s)
    raise SoakFailure(f"batch run failed {attempts} times: {platform.tail('batch.log')}")


def checkpoint(platform: Platform, traffic: Traffic, report: Report, label: str) -> None:
    """Every key x bucket of every view's merged HTTP answer against the truth of the valid
    events sent so far, once the jobs have caught up."""
    waited = platform.wait_caught_up()
    mismatched = 0
    cells = 0
    with httpx.Client(base_url=platform.url, timeout=60) as client:
        for view in GENERATORS:
            want = truth.truth(view, traffic.good[view])
            keys = sorted({k for k, _ in want})
            deadline = time.monotonic() + 120
            while True:  # the API answers 503 until Cassandra is back: wait for it
                r = client.get(f"/views/{view}/query", params={"key": keys, **WINDOW, "q": 0.95})
                if r.status_code != 503 or time.monotonic() > deadline:
                    break
                time.sleep(1)
            if r.status_code != 200:
                raise SoakFailure(f"{label}: {view}: {r.status_code} {r.text[:500]}")
            got = {
                (res["key"], b["bucket_start"]): b["values"]
                for res in r.json()["results"]
                for b in res["buckets"]
            }
            cells += len(set(got) | set(want))
            for cell in sorted(set(got) | set(want)):
                if cell not in got or cell not in want:
                    problems = [f"only in {'the answer' if cell in got else 'the truth'}"]
                else:
                    problems = truth.check(view, got[cell], want[cell])
                if problems:
                    mismatched += 1
                    if len(report.mismatch_samples) < 20:
                        report.mismatch_samples.append(f"{label}: {view} {cell}: {problems}")
    report.checkpoints += 1
    report.cells_checked += cells
    report.mismatches += mismatched
    log(f"checkpoint {label}: {cells} cells, {mismatched} mismatched (caught up in {waited:.1f}s)")


def match_dead_letters(platform: Platform, traffic: Traffic, report: Report) -> None:
    """Each malformed record in Kafka (partition, offset: a resent one may be there twice)
    has exactly one dead letter with a reason, and nothing else is a dead letter."""
    for view, source in platform.sources.items():
        bad = traffic.malformed[view]
        where = {
            (r.partition, r.offset)
            for r in topic_records(platform.settings, source.topic)
            if r.value in bad
        }
        letters = {
            (d["partition"], d["offset"]): d for d in read_deadletters(platform.settings, source)
        }
        report.dead_letters_matched += len(where & letters.keys())
        report.dead_letters_missing += len(where - letters.keys())
        report.dead_letters_unexpected += len(letters.keys() - where)
        report.dead_letters_without_reason += sum(1 for d in letters.values() if not d["reason"])
        for pos in sorted(where - letters.keys())[:5]:
            report.error_samples.append(f"{view}: no dead letter for the malformed record {pos}")


def run(cfg: Config) -> Report:
    """One soak run; the report says what happened (see :class:`Report` for what must be 0)."""
    report = Report(config={k: str(v) for k, v in asdict(cfg).items()})
    base = cfg.state or Path(tempfile.mkdtemp(prefix="lamina-soak-"))
    base.mkdir(parents=True, exist_ok=True)
    platform = Platform(cfg, base)
    Stack(platform.settings).up(progress=lambda m: log(f"stack: {m}"))
    traffic = Traffic(platform, cfg, report)
    queries = Queries(platform, traffic, report)
    faults = Faults(platform, cfg, report)
    rng = random.Random(cfg.seed + 2)
    per_view = max(1, cfg.events // max(1, cfg.cycles) // len(GENERATORS))
    t0 = time.monotonic()
    log(f"world under {base}; API {platform.url}; {per_view} events per view and cycle")
    try:
        platform.start()
        queries.start()
        for cycle, kinds in enumerate(cfg.schedule()):
            log(f"cycle {cycle + 1}/{cfg.cycles}: faults {kinds or 'none'}")
            during = [k for k in kinds if k != "batch"]
            with ThreadPoolExecutor(1) as pool:
                sending = pool.submit(traffic.round, cycle, per_view)
                for kind in during:
                    time.sleep(rng.uniform(1, max(1.5, cfg.round_s / (len(during) + 1))))
                    faults.inject(kind)
                sending.result()
            checkpoint(platform, traffic, report, f"cycle {cycle + 1} streamed")
            for _ in range(kinds.count("batch")):
                faults.kill_batch()
            batch(platform, report)
            checkpoint(platform, traffic, report, f"cycle {cycle + 1} published")
        match_dead_letters(platform, traffic, report)
    except SoakFailure as exc:
        report.failure = str(exc)
        log(f"FAILED: {exc}")
    finally:
        queries.stop()
        with contextlib.suppress(Exception):
            report.job_restarts = platform.restarts()
        platform.stop()
        Stack(platform.settings).up(progress=lambda m: None)  # whatever a fault left down
        if not cfg.keep:
            drop_private_world(platform.settings)
        report.seconds = round(time.monotonic() - t0, 1)
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Soak the whole platform under faults; compare every cell with the truth."
    )
    ap.add_argument("--events", type=int, default=Config.events, help="valid events in all")
    ap.add_argument("--cycles", type=int, default=Config.cycles, help="rounds, each + a batch")
    ap.add_argument(
        "--faults",
        default=",".join(FAULTS),
        help=f"comma-separated fault kinds among {','.join(FAULTS)} ('' for none)",
    )
    ap.add_argument("--min-each", type=int, default=Config.min_each, help="each fault at least")
    ap.add_argument("--pause", type=float, default=Config.pause_s, help="outage length (s)")
    ap.add_argument("--round-s", type=float, default=Config.round_s, help="a round's duration")
    ap.add_argument("--seed", type=int, default=Config.seed)
    ap.add_argument("--state", type=Path, help="the private world's directory (default: a tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the keyspace and topics")
    ap.add_argument("--json", type=Path, help="write the report here")
    a = ap.parse_args(argv)
    kinds = tuple(k for k in a.faults.split(",") if k)
    unknown = set(kinds) - set(FAULTS)
    if unknown:
        ap.error(f"unknown fault kinds {sorted(unknown)}; choose among {', '.join(FAULTS)}")
    if a.events < 1 or a.cycles < 1:
        ap.error("--events and --cycles must be positive")
    cfg = Config(
        events=a.events,
        cycles=a.cycles,
        faults=kinds,
        min_each=a.min_each,
        pause_s=a.pause,
        round_s=a.round_s,
        seed=a.seed,
        state=a.state,
        keep=a.keep,
    )
    # A SIGTERM (a CI timeout, kill) still stops the jobs and the API and restarts the stack.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    report = run(cfg)
    out = {**asdict(report), "ok": report.ok}
    print(json.dumps(out, indent=2))
    if a.json:
        a.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
