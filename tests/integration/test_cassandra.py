"""Cassandra: keyspace and table created, written and read back with prepared statements."""

from __future__ import annotations

from cassandra.concurrent import execute_concurrent_with_args

from lamina.settings import Settings
from serving.cassandra import ensure_keyspace, release_version, session


def test_node_reports_configured_version(stack: Settings) -> None:
    assert release_version(stack.cassandra) == stack.cassandra.version


def test_prepared_write_and_read_back(stack: Settings) -> None:
    ks = stack.cassandra.keyspace
    with session(stack.cassandra) as s:
        ensure_keyspace(s, stack.cassandra)
        s.execute(
            f"CREATE TABLE IF NOT EXISTS {ks}.smoke_kv "
            "(k text, b int, v bigint, PRIMARY KEY (k, b))"
        )
        s.execute(f"TRUNCATE {ks}.smoke_kv")
        insert = s.prepare(f"INSERT INTO {ks}.smoke_kv (k, b, v) VALUES (?, ?, ?)")
        rows = [(f"key{i % 3}", i, i * 10) for i in range(30)]
        results = execute_concurrent_with_args(s, insert, rows, concurrency=16)
        assert all(ok for ok, _ in results)
        select = s.prepare(f"SELECT b, v FROM {ks}.smoke_kv WHERE k = ? AND b >= ? AND b < ?")
        got = [(r.b, r.v) for r in s.execute(select, ("key1", 10, 20))]
    assert got == [(b, b * 10) for b in range(10, 20) if b % 3 == 1]
