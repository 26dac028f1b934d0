"""Shared pieces of the streaming tests: private worlds, Kafka records, merged answers vs truth."""

from __future__ import annotations

import contextlib
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition

from lamina.master import archive_dir, archive_prefix
from lamina.settings import Settings, environment, load_settings
from lamina.streams import EPOCH_MARK_KEY, checkpoint_path
from lamina.views import load_views
from serving.api import create_app
from serving.cassandra import session
from tests import truth
from tests.conftest import ROOT


def private_views(tmp: Path, suffix: str | None = None) -> Path:
    """conf/views.toml with every topic renamed ``<topic>-<suffix>`` (a random suffix by
    default), written under ``tmp``: tests never read or write the shared topics."""
    suffix = suffix or uuid.uuid4().hex[:8]
    text = (ROOT / "conf" / "views.toml").read_text()
    views = tmp / "views.toml"
    views.write_text(re.sub(r'^topic = "([^"]+)"', rf'topic = "\1-{suffix}"', text, flags=re.M))
    return views


def private_env(tmp: Path, prefix: str, epoch_s: int) -> dict[str, str]:
    """Private keyspace, topics, master dataset, checkpoints and job registry, as the
    ``LAMINA_*`` variables a separate process (``lamina ...``) needs."""
    suffix = uuid.uuid4().hex[:8]
    views = private_views(tmp, suffix)
    return {
        "LAMINA_CONFIG": str(ROOT / "conf" / "lamina.toml"),
        "LAMINA_CASSANDRA__KEYSPACE": f"t_{prefix}_{suffix}",
        "LAMINA_PIPELINE__VIEWS_FILE": str(views),
        "LAMINA_PIPELINE__MASTER_DIR": str(tmp / "master"),
        "LAMINA_PIPELINE__EPOCH_SECONDS": str(epoch_s),
        "LAMINA_SPARK__CHECKPOINT_DIR": str(tmp / "checkpoints"),
        "LAMINA_SPARK__JOBS_DIR": str(tmp / "jobs"),
        "LAMINA_SPARK__DRIVER_MEMORY": "1g",
    }


@contextlib.contextmanager
def settings_under(env: dict[str, str]) -> Iterator[Settings]:
    """Settings as a process started with ``env`` sees them (``env`` applied meanwhile)."""
    with environment(env):
        yield load_settings()


def produce(settings: Settings, topic: str, records: list[bytes], *, salt: str = "") -> None:
    """Send ``records``; a record's key (hence partition) is a hash of it and ``salt``:
    redeliveries share the key, as producer retries do; a ``salt`` sends re-sends the way
    another producer would, to any partition."""
    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, linger_ms=5)
    try:
        futures = [
            producer.send(topic, key=str(hash(salt.encode() + r) % 7).encode(), value=r)
            for r in records
        ]
        producer.flush()
        for f in futures:
            f.get(timeout=30)  # every record acknowledged, or the test fails here
    finally:
        producer.close()


def end_offsets(settings: Settings, topic: str) -> dict[str, int]:
    c = KafkaConsumer(bootstrap_servers=settings.kafka.bootstrap_servers)
    try:
        tps = [TopicPartition(topic, p) for p in c.partitions_for_topic(topic) or []]
        return {str(tp.partition): off for tp, off in c.end_offsets(tps).items()}
    finally:
        c.close()


def topic_records(settings: Settings, topic: str, *, marks: bool = False) -> list[Any]:
    """Every record of ``topic`` up to its current end offsets, in offset order per partition
    (kafka-python ``ConsumerRecord``s: ``partition``, ``offset``, ``timestamp``, ``value``),
    without the source jobs' epoch marks unless ``marks``."""
    c = KafkaConsumer(bootstrap_servers=settings.kafka.bootstrap_servers, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or [])]
        ends = c.end_offsets(tps)
        c.assign(tps)
        c.seek_to_beginning(*tps)
        out: dict[int, list[Any]] = {tp.partition: [] for tp in tps}
        deadline = time.monotonic() + 60
        while any(c.position(tp) < ends[tp] for tp in tps):
            assert time.monotonic() < deadline, f"could not read {topic} up to {ends}"
            for tp, records in c.poll(timeout_ms=1000).items():
                out[tp.partition] += [
                    r for r in records if r.offset < ends[tp] and (marks or r.key != EPOCH_MARK_KEY)
                ]
        return [r for p in sorted(out) for r in out[p]]
    finally:
        c.close()


def first_delivery_epochs(settings: Settings, topic: str, epoch_s: int) -> dict[bytes, int]:
    """For each distinct record value in ``topic``, the ingest epoch of its first delivery
    (earliest broker timestamp, on whichever partition): floored to ``epoch_s`` seconds,
    computed here from the records Kafka returns, not by Lamina."""
    out: dict[bytes, int] = {}
    for r in topic_records(settings, topic):
        epoch = r.timestamp // (epoch_s * 1000) * epoch_s
        out[r.value] = min(out.get(r.value, epoch), epoch)
    return out


def drop_private_world(settings: Settings) -> None:
    """Drop a private world's keyspace (``t_*`` only) and delete the topics of its views file
    with their ``.deadletters`` topics; refuses to touch the shared keyspace or topics."""
    ks = settings.cassandra.keyspace
    if not ks.startswith("t_"):
        raise ValueError(f"refusing to drop keyspace {ks!r}: not a private (t_*) keyspace")
    shared = {s.topic for s in load_views(ROOT / "conf" / "views.toml").sources.values()}
    mine = {s.topic for s in load_views(settings.pipeline.views_file).sources.values()}
    if mine & shared:
        raise ValueError(f"refusing to delete shared topics {sorted(mine & shared)}")
    with session(settings.cassandra) as s:
        s.execute(f"DROP KEYSPACE IF EXISTS {ks}", timeout=120)
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers)
    try:
        topics = {t for m in mine for t in (m, f"{m}.deadletters", f"{m}.duplicates")}
        doomed = sorted(topics & set(admin.list_topics()))
        if doomed:
            admin.delete_topics(doomed, timeout_ms=60_000)
    finally:
        admin.close()


def check_answers(
    settings: Settings, produced: dict[str, list[dict[str, Any]]]
) -> dict[str, dict[str, Any]]:
    """Every key and bucket of each view's merged HTTP answer equals the truth computed from
    the ``produced`` valid events (exact, or within the sketches' bounds).

    Returns per view the answer's ``provenance`` and, per ``(key, bucket_start)``, the
    bucket's ``from_batch`` and ``realtime_epochs``.
    """
    catalog = load_views(settings.pipeline.views_file)
    answers: dict[str, dict[str, Any]] = {}
    with TestClient(create_app(settings, catalog), base_url="http://127.0.0.1") as client:
        for view, good in produced.items():
            want = truth.truth(view, good)
            keys = sorted({k for k, _ in want})
            r = client.get(
                f"/views/{view}/query",
                params={
                    "key": keys,
                    "from": str(truth.BASE - 4 * 86400),
                    "to": str(truth.BASE + 3600),
                    "q": 0.95,
                },
            )
            assert r.status_code == 200, r.text
            got = {
                (res["key"], b["bucket_start"]): b["values"]
                for res in r.json()["results"]
                for b in res["buckets"]
            }
            missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
            assert not missing and not extra, f"{view}: missing {missing[:5]}, extra {extra[:5]}"
            problems = {k: p for k in want if (p := truth.check(view, got[k], want[k]))}
            first = dict(list(problems.items())[:5])
            assert problems == {}, f"{view}: {len(problems)} cells differ, e.g. {first}"
            answers[view] = {
                "provenance": r.json()["provenance"],
                "buckets": {
                    (res["key"], b["bucket_start"]): {
                        "from_batch": b["from_batch"],
                        "realtime_epochs": b["realtime_epochs"],
                    }
                    for res in r.json()["results"]
                    for b in res["buckets"]
                },
            }
    return answers


def _batch_ids(directory: Path) -> set[int]:
    return (
        {int(p.name) for p in directory.iterdir() if p.name.isdigit()}
        if directory.exists()
        else set()
    )


def _source_offsets(checkpoint: Path, batch: int) -> str:
    """The source offsets a micro-batch reads up to (last line of its offsets log entry)."""
    f = checkpoint / "offsets" / str(batch)
    return f.read_text().strip().splitlines()[-1] if batch >= 0 and f.exists() else ""


def latest_batches(settings: Settings, queries: list[str]) -> dict[str, int]:
    """The newest micro-batch each query has planned (-1 if none)."""
    return {
        q: max(_batch_ids(checkpoint_path(settings, q) / "offsets"), default=-1) for q in queries
    }


def running_batches(
    settings: Settings, queries: list[str], after: dict[str, int]
) -> dict[str, int]:
    """Queries in the middle of a micro-batch newer than ``after[q]`` that reads new records:
    its offsets are in the write-ahead log (written when it starts), its commit (written when
    it ends) is not, and it reads past the previous batch's offsets."""
    out = {}
    for q in queries:
        cp = checkpoint_path(settings, q)
        for n in sorted(_batch_ids(cp / "offsets") - _batch_ids(cp / "commits")):
            if n > after[q] and _source_offsets(cp, n) != _source_offsets(cp, n - 1):
                out[q] = n
    return out


def archived(settings: Settings, source: Any, batch: int) -> bool:
    """Whether micro-batch ``batch`` of ``source`` has renamed archive files into place."""
    name = archive_prefix(batch)
    return any(archive_dir(settings, source).glob(f"ingest_epoch=*/{name}*"))
