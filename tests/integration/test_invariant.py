"""The invariant, end to end, on real Kafka, Spark and Cassandra, with a hard kill.

Events with late arrivals (hours and days), redeliveries and bad records are produced in
rounds; the source jobs run in a separate process (``lamina stream run``); batch runs happen
between rounds; the streaming process is killed with SIGKILL once, in the middle of a
micro-batch's writes (its archive files written, its views not yet committed), and
restarted; events are re-sent minutes after their originals, from another producer (any
partition), over several micro-batches, some of them already inside a published batch;
after two batches with different cutoffs the views are rolled back to the older version and
forward again. At every checkpoint, for every key and bucket of the three example views,
the merged answer of the HTTP API equals the truth computed from the produced events, and
so does its provenance: ``from_batch`` and ``realtime_epochs`` are what the ingest epochs of
the records (read back from Kafka) and the published cutoff imply. Each bad record is in the
dead letters exactly once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from batch.recompute import run_batch
from lamina.master import complete_cutoff
from lamina.settings import Settings
from lamina.streams import (
    ensure_topics,
    read_source_report,
    source_query,
    status_file,
)
from lamina.views import load_views
from serving.store import open_store
from speed.deadletters import read_deadletters
from tests import truth
from tests.conftest import ROOT
from tests.integration.streams import (
    archived,
    check_answers,
    drop_private_world,
    end_offsets,
    first_delivery_epochs,
    latest_batches,
    private_env,
    produce,
    running_batches,
    settings_under,
    topic_records,
)

EPOCH_S = 5
GENS = {
    "web_pageviews": ("pageviews", truth.pageviews),
    "iot_temperature": ("sensors", truth.sensors),
    "cloud_metering": ("metering", truth.metering),
}
Cell = tuple[str, int]


@pytest.fixture(scope="module")
def env(stack: Settings, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Private keyspace, topics, master dataset and checkpoints, as LAMINA_* variables."""
    return private_env(tmp_path_factory.mktemp("invariant"), "inv", EPOCH_S)


@pytest.fixture(scope="module")
def inv(env: dict[str, str]) -> Iterator[Settings]:
    """Settings as the streaming process sees them (the env above applied); the private
    keyspace and topics are dropped at the end."""
    with settings_under(env) as settings:
        try:
            yield settings
        finally:
            drop_private_world(settings)


class StreamProcess:
    """``lamina stream run`` in its own process (its own Spark), killable with SIGKILL."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = {**os.environ, **env}
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        out = self.log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lamina.cli", "stream", "run", "--trigger", "1"],
            env=self.env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def assert_alive(self) -> None:
        assert self.proc is not None and self.proc.poll() is None, self.log.read_text()[-3000:]

    def kill_hard(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)  # the driver and its JVM, no goodbye
        self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def wait_caught_up(
    settings: Settings, queries: dict[str, str], proc: StreamProcess, timeout_s: float = 300
) -> None:
    """Until every query's committed offsets reach the topics' ends (or fail loudly)."""
    want = {q: end_offsets(settings, topic) for q, topic in queries.items()}
    deadline = time.monotonic() + timeout_s
    pending = set(queries)
    while pending and time.monotonic() < deadline:
        proc.assert_alive()
        for q in list(pending):
            f = status_file(settings, q)
            if f.exists():
                got = json.loads(f.read_text()).get("end_offsets", {})
                topic = queries[q]
                if all(got.get(topic, {}).get(p, -1) >= off for p, off in want[q].items()):
                    pending.discard(q)
        time.sleep(0.25)
    assert not pending, f"not caught up: {pending}\n{proc.log.read_text()[-3000:]}"


def last_epoch(settings: Settings, topic: str) -> int:
    """The ingest epoch of the newest record in ``topic`` (broker timestamp, floored here)."""
    return max(r.timestamp for r in topic_records(settings, topic)) // (EPOCH_S * 1000) * EPOCH_S


def wait_complete(
    settings: Settings, sources: dict[str, Any], after: dict[str, int], proc: StreamProcess
) -> dict[str, int]:
    """Until the master dataset holds every epoch ``<= after[view]`` complete (the cutoff a
    batch may take is past it); returns those cutoffs. It cannot hold before the epoch's
    end (a record stamped after it, or an epoch mark, must be archived first)."""
    earliest = max(after.values()) + EPOCH_S
    time.sleep(max(0.0, earliest - time.time()))
    deadline = time.monotonic() + 120
    while True:
        proc.assert_alive()
        cut = {v: complete_cutoff(settings, src) for v, src in sources.items()}
        if all(c is not None and c > after[v] for v, c in cut.items()):
            return {v: int(c) for v, c in cut.items() if c is not None}
        assert time.monotonic() < deadline, f"epochs {after} never complete: {cut}"
        time.sleep(0.1)


def kill_mid_writes(
    settings: Settings,
    proc: StreamProcess,
    sources: dict[str, Any],
    after: dict[str, int],
) -> dict[str, int]:
    """SIGKILL the stream as soon as a source query is in the middle of a micro-batch with
    new records whose archive files are written (the real-time writes come next, the commit
    last); returns the micro-batches that were cut short (uncommitted after the kill)."""
    queries = list(sources)
    deadline = time.monotonic() + 180
    while True:
        proc.assert_alive()
        running = running_batches(settings, queries, after)
        if any(archived(settings, sources[q], n) for q, n in running.items()):
            break
        assert time.monotonic() < deadline, f"no micro-batch seen writing after {after}"
        time.sleep(0.005)
    proc.kill_hard()
    cut_short = running_batches(settings, queries, after)  # nothing can commit any more
    assert cut_short, "every micro-batch committed before the kill landed"
    return cut_short


def expected_provenance(
    view: str, events: list[tuple[dict[str, Any], int]], cutoff: int | None
) -> dict[Cell, dict[str, Any]]:
    """Per cell of the truth: ``from_batch`` iff a counted event's first delivery is in an
    epoch before ``cutoff``; ``realtime_epochs`` the epochs ``>= cutoff`` of counted events
    (all of them with no batch published). ``events`` are (event, first-delivery epoch);
    what counts in which cell is :func:`truth.truth`'s business (the view's filter, buckets)."""
    floor = cutoff if cutoff is not None else -(2**63)
    in_batch = set(truth.truth(view, [ev for ev, e in events if e < floor]))
    by_epoch: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for ev, e in events:
        if e >= floor:
            by_epoch[e].append(ev)
    realtime: dict[Cell, set[int]] = defaultdict(set)
    for e, evs in by_epoch.items():
        for cell in truth.truth(view, evs):
            realtime[cell].add(e)
    return {
        cell: {"from_batch": cell in in_batch, "realtime_epochs": sorted(realtime[cell])}
        for cell in truth.truth(view, [ev for ev, _ in events])
    }


def mixed_cells(provenance: dict[str, dict[Cell, dict[str, Any]]]) -> dict[str, int]:
    """Per view, the number of cells merging batch and real-time contributions."""
    return {
        v: sum(1 for b in cells.values() if b["from_batch"] and b["realtime_epochs"])
        for v, cells in provenance.items()
    }


def test_merged_answers_stay_exact(
    env: dict[str, str], inv: Settings, spark: Any, tmp_path: Path
) -> None:
    settings = inv
    catalog = load_views(settings.pipeline.views_file)
    sources = {v: catalog.view(v).source for v in GENS}
    topics = {v: sources[v].topic for v in GENS}
    queries = {source_query(sources[v]): topics[v] for v in GENS}
    by_query = {source_query(sources[v]): sources[v] for v in GENS}
    produced: dict[str, list[dict[str, Any]]] = {v: [] for v in GENS}
    valid_raw: dict[str, list[bytes]] = {v: [] for v in GENS}
    bad: dict[str, list[bytes]] = {v: [] for v in GENS}

    def round_of(n: int, seed: int) -> None:
        for view, (_, gen) in GENS.items():
            g = gen(n, seed=seed)
            produce(settings, topics[view], g.raw)
            produced[view] += g.good
            bad[view] += g.bad
            once = [r for r in dict.fromkeys(g.raw) if r not in set(g.bad)]
            assert len(once) == len(g.good)
            valid_raw[view] += once

    def check(cutoffs: dict[str, int]) -> dict[str, dict[Cell, dict[str, Any]]]:
        """Values == truth and provenance == expected for every cell of every view, under
        the published ``cutoffs`` (none: no batch); returns the provenance per view."""
        answers = check_answers(settings, produced)
        checked = {}
        for view in GENS:
            epochs = first_delivery_epochs(settings, topics[view], EPOCH_S)
            events = [(json.loads(raw), epochs[raw]) for raw in valid_raw[view]]
            want = expected_provenance(view, events, cutoffs.get(view))
            got = answers[view]
            assert got["provenance"]["cutoff"] == cutoffs.get(view), view
            wrong = {
                c: (got["buckets"].get(c), w) for c, w in want.items() if got["buckets"].get(c) != w
            }
            assert wrong == {}, f"{view}: provenance (got, want) of {len(wrong)} cells"
            checked[view] = want
        return checked

    def batch(bounds: dict[str, int], at: dict[str, int] | None = None) -> dict[str, Any]:
        """A batch run, at the cutoff it picks itself or ``at`` per view; each view's result,
        its cutoff checked to cover at least the epochs awaited as complete."""
        if at is None:
            results = {r.view: r for r in run_batch(spark, settings, catalog)}
        else:
            results = {v: run_batch(spark, settings, catalog, [v], cutoff=at[v])[0] for v in GENS}
            assert {v: r.cutoff for v, r in results.items()} == at
        assert {v: r.cutoff >= bounds[v] for v, r in results.items()} == dict.fromkeys(GENS, True)
        return results

    ensure_topics(settings, [topics[v] for v in GENS])
    proc = StreamProcess(env, tmp_path / "stream.log")
    proc.start()
    try:
        # Round 1: only the speed layer has seen anything (no batch published yet).
        round_of(600, seed=11)
        wait_caught_up(settings, queries, proc)
        check({})

        # A batch covers round 1 whole (awaited complete) and round 2 up to its newest epoch;
        # the rest comes from real-time rows.
        bounds = wait_complete(
            settings, sources, {v: last_epoch(settings, topics[v]) for v in GENS}, proc
        )
        round_of(300, seed=12)
        wait_caught_up(settings, queries, proc)
        # Cut exactly at round 2's newest epoch, once the epochs before it are complete: that
        # epoch has records on the real-time side of the cutoff (the batch must not read
        # them, and no purge may drop them while a rollback to this version is possible).
        at = {v: last_epoch(settings, topics[v]) for v in GENS}
        wait_complete(settings, sources, {v: at[v] - EPOCH_S for v in GENS}, proc)
        first = batch(bounds, at)
        cut1 = {v: r.cutoff for v, r in first.items()}
        check(cut1)

        # Round 3, with the streaming process killed hard in the middle of a micro-batch.
        before = latest_batches(settings, list(queries))
        with ThreadPoolExecutor(1) as pool:
            sending = pool.submit(round_of, 400, 13)
            kill_mid_writes(settings, proc, by_query, before)
            sending.result()
        round_of(400, seed=14)
        proc.start()
        wait_caught_up(settings, queries, proc)
        mixed = mixed_cells(check(cut1))
        assert all(mixed.values()), mixed  # batch (rounds 1-2) and real time (rounds 3-4)

        # Another batch after the restart (covering rounds 3-4), then one more round.
        bounds = wait_complete(
            settings, sources, {v: last_epoch(settings, topics[v]) for v in GENS}, proc
        )
        second = batch(bounds)
        cut2 = {v: r.cutoff for v, r in second.items()}
        assert all(cut2[v] > cut1[v] for v in GENS), (cut1, cut2)
        check(cut2)
        # Round 5, with re-sends minutes after their originals (rounds 1 and 3, inside the
        # published batch; round 4, in the batch too) from another producer, so on any
        # partition, over several micro-batches: the speed layer drops every one of them.
        round_of(200, seed=15)
        resent = 0
        for i in range(3):
            for view in GENS:
                originals = (
                    valid_raw[view][i * 50 : i * 50 + 50] + valid_raw[view][-60 - i * 40 :][:40]
                )
                produce(settings, topics[view], originals, salt=f"resend-{i}")
                resent += len(originals)
            time.sleep(1.5)
        wait_caught_up(settings, queries, proc)
        mixed = mixed_cells(check(cut2))
        assert all(mixed.values()), mixed
        reports = {q: read_source_report(settings, q) or {} for q in queries}
        counters = {q: r.get("counters", {}) for q, r in reports.items()}
        assert sum(c.get("duplicates", 0) for c in counters.values()) >= resent, counters
        assert {q: c.get("beyond_horizon") for q, c in counters.items()} == dict.fromkeys(
            queries, 0
        ), counters

        # Roll back to the first version, after the purges, with real-time rows of epochs
        # on both sides of the second cutoff: exact, with the rows since the first cutoff.
        with open_store(settings.cassandra) as store:
            for v in GENS:
                view = catalog.view(v)
                assert list(store.realtime_before(view, cut1[v])) == [], f"{v}: not purged"
                store.rollback(view, first[v].version)
                assert store.version(view, second[v].version).state == "superseded", v
                assert store.version(view, first[v].version).state == "published", v
        back = check(cut1)
        for v in GENS:  # the answers needed the rows of epochs in [cut1, cut2)
            assert any(e < cut2[v] for b in back[v].values() for e in b["realtime_epochs"]), v

        # And forward again.
        with open_store(settings.cassandra) as store:
            for v in GENS:
                view = catalog.view(v)
                store.rollback(view, second[v].version)
                assert store.version(view, first[v].version).state == "superseded", v
                assert store.version(view, second[v].version).state == "published", v
        check(cut2)
    finally:
        proc.stop()

    for view in GENS:
        letters = read_deadletters(settings, catalog.view(view).source)
        assert sorted(d["raw"].encode() for d in letters) == sorted(bad[view])
