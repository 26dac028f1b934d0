"""Lamina's Cassandra connection code on the real node: probe, keyspace, consistency, protocol."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from cassandra import ConsistencyLevel, Unavailable
from cassandra.cluster import NoHostAvailable

from lamina import process
from lamina.settings import CassandraSettings, Settings
from lamina.stack.manager import Stack
from serving.cassandra import PROTOCOL_VERSION, ensure_keyspace, release_version, session


@pytest.fixture
def private(stack: Settings) -> Iterator[CassandraSettings]:
    """The stack's Cassandra settings with a private keyspace, dropped at the end."""
    cass = stack.cassandra.model_copy(update={"keyspace": f"t_cass_{uuid.uuid4().hex[:10]}"})
    yield cass
    with session(cass) as s:
        s.execute(f"DROP KEYSPACE IF EXISTS {cass.keyspace}", timeout=120)


def test_node_reports_configured_version(stack: Settings) -> None:
    assert release_version(stack.cassandra) == stack.cassandra.version


def test_ensure_keyspace_uses_the_configured_replication(private: CassandraSettings) -> None:
    # 3, not the default 1: a ring's factor must come from the settings.
    cass = private.model_copy(update={"replication_factor": 3})
    with session(cass) as s:
        ensure_keyspace(s, cass)
        ensure_keyspace(s, cass)  # idempotent
        row = s.execute(
            "SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = %s",
            [cass.keyspace],
        ).one()
    assert row is not None
    assert dict(row.replication) == {
        "class": "org.apache.cassandra.locator.SimpleStrategy",
        "replication_factor": "3",
    }


def test_session_speaks_v4_at_the_configured_consistency(private: CassandraSettings) -> None:
    """Replication factor 3 on this one-node ring: LOCAL_ONE is met, QUORUM cannot be, so
    the node's answer shows which consistency level Lamina's session really sent."""
    one = private.model_copy(update={"replication_factor": 3, "consistency": "LOCAL_ONE"})
    quorum = one.model_copy(update={"consistency": "QUORUM"})
    ks = one.keyspace
    with session(one) as s:
        ensure_keyspace(s, one)
        s.execute(f"CREATE TABLE {ks}.kv (k text PRIMARY KEY, v int)", timeout=60)
    with session(one, ks) as s:  # bound to the keyspace: unqualified table names
        assert s.cluster.protocol_version == PROTOCOL_VERSION == 4
        s.execute(s.prepare("INSERT INTO kv (k, v) VALUES (?, ?)"), ("a", 1))
        assert [tuple(r) for r in s.execute("SELECT k, v FROM kv")] == [("a", 1)]
    # The driver's retry policy gives up on an unavailable node, then reports why.
    with session(quorum, ks) as s, pytest.raises(NoHostAvailable) as err:
        s.execute(s.prepare("INSERT INTO kv (k, v) VALUES (?, ?)"), ("b", 2))
    (cause,) = err.value.errors.values()
    assert isinstance(cause, Unavailable), cause
    assert cause.consistency == ConsistencyLevel.QUORUM
    assert (cause.required_replicas, cause.alive_replicas) == (2, 1)


def kill_and_restart(stack: Settings) -> None:
    """SIGKILL the stack's Cassandra (no drain, no flush), then start it again."""
    cassandra = Stack(stack, ["cassandra"])
    svc = cassandra.service("cassandra")
    pid = process.running_pid(svc.pid_file, svc.marker)
    assert pid is not None, "the stack's Cassandra is not running"
    os.kill(pid, signal.SIGKILL)
    while process.alive(pid):
        time.sleep(0.05)
    cassandra.up(progress=print)


def test_a_killed_node_keeps_every_write_it_acknowledged(
    stack: Settings, private: CassandraSettings
) -> None:
    """The speed layer moves past a micro-batch's Kafka offsets once its cells are
    acknowledged: the dev stack's node must not forget an acknowledged write when it is
    killed. Writes go on while the node is killed; every one acknowledged before the kill is
    read back after the restart. (With Cassandra's ``periodic`` commit log the writes of the
    last seconds before the kill are gone.)"""
    svc = Stack(stack, ["cassandra"]).service("cassandra")
    conf = svc.dir / "conf" / "cassandra.yaml"
    if f"commitlog_sync: {stack.cassandra.commitlog_sync}\n" not in conf.read_text():
        kill_and_restart(stack)  # a node started under an older configuration
    ks = private.keyspace
    with session(private) as s:
        ensure_keyspace(s, private)
        s.execute(f"CREATE TABLE {ks}.acked (k int PRIMARY KEY)", timeout=60)
    acked: set[int] = set()
    lock = threading.Lock()
    stop = threading.Event()

    def write() -> None:
        with session(private, ks) as s:
            insert = s.prepare("INSERT INTO acked (k) VALUES (?)")
            k = 0
            while not stop.is_set():
                futures = [(k + i, s.execute_async(insert, (k + i,))) for i in range(32)]
                k += 32
                for key, f in futures:
                    try:
                        f.result()
                    except Exception:  # the node is gone: not acknowledged
                        continue
                    with lock:
                        acked.add(key)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        deadline = time.monotonic() + 60
        while len(acked) < 2000 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(acked) >= 2000, f"only {len(acked)} writes acknowledged in 60 s"
        kill_and_restart(stack)
    finally:
        stop.set()
        writer.join(timeout=60)
    with session(private, ks) as s:
        stored = {r.k for r in s.execute("SELECT k FROM acked", timeout=120)}
    lost = acked - stored
    assert not lost, f"{len(lost)} of {len(acked)} acknowledged writes lost"
