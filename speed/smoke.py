"""The smoke stream: count Kafka records per key into Cassandra (upserts of absolute counts).

It exercises every moving part the real speed layer uses: the Kafka source, a stateful
aggregation in update mode, and ``foreachBatch`` writes through cassandra-driver with
prepared statements, so a replayed micro-batch rewrites the same rows.
"""

from __future__ import annotations

from pathlib import Path

from cassandra.concurrent import execute_concurrent_with_args
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming.query import StreamingQuery

from lamina.settings import Settings
from serving.cassandra import ensure_keyspace, session


def create_count_table(settings: Settings, table: str) -> None:
    """Create ``<keyspace>.<table> (key text PRIMARY KEY, count bigint)`` if missing."""
    with session(settings.cassandra) as s:
        ensure_keyspace(s, settings.cassandra)
        s.execute(
            f"CREATE TABLE IF NOT EXISTS {settings.cassandra.keyspace}.{table} "
            "(key text PRIMARY KEY, count bigint)"
        )


def start_count_stream(
    spark: SparkSession, settings: Settings, *, topic: str, table: str, checkpoint: Path
) -> StreamingQuery:
    """Start the stream; returns the running query (caller stops it)."""
    create_count_table(settings, table)
    source = (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", settings.kafka.bootstrap_servers)
        .option("subscribe", topic)
        .option("startingOffsets", "earliest")
        .load()
    )
    counts = source.select(F.col("key").cast("string").alias("key")).groupBy("key").count()
    cassandra = settings.cassandra

    def write(batch: DataFrame, batch_id: int) -> None:
        rows = [(r["key"], int(r["count"])) for r in batch.collect()]
        if not rows:
            return
        with session(cassandra, cassandra.keyspace) as s:
            insert = s.prepare(f"INSERT INTO {table} (key, count) VALUES (?, ?)")
            for ok, result in execute_concurrent_with_args(s, insert, rows, concurrency=32):
                if not ok:
                    raise result

    return (
        counts.writeStream.outputMode("update")
        .foreachBatch(write)
        .option("checkpointLocation", str(checkpoint))
        .queryName(f"lamina-smoke-{table}")
        .start()
    )


def read_counts(settings: Settings, table: str) -> dict[str, int]:
    """All ``key -> count`` rows of the smoke table."""
    with session(settings.cassandra, settings.cassandra.keyspace) as s:
        return {r.key: r.count for r in s.execute(s.prepare(f"SELECT key, count FROM {table}"))}
