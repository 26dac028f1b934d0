"""Lamina's SparkSession: what ``engine.session.spark_session`` promises, in local mode.

The JVM is shared by the whole pytest session: whichever test starts it first, a later
``spark_session`` call must still give a session that follows the settings it was given.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from lamina.jars import ensure_bundle, jars, spark_connector_bundle
from lamina.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
KAFKA_COLUMNS = ["key", "value", "topic", "partition", "offset", "timestamp", "timestampType"]


def test_session_follows_settings(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.session import spark_session

    # Extra Spark settings arrive as JSON in the environment and reach the session.
    monkeypatch.setenv("LAMINA_SPARK__CONF", json.dumps({"spark.lamina.probe": "from-env"}))
    mine = load_settings(ROOT / "conf" / "lamina.toml")
    spark = spark_session(mine, "lamina-test-session")
    try:
        conf = spark.conf
        assert conf.get("spark.lamina.probe", None) == "from-env"
        assert conf.get("spark.app.name") == "lamina-test-session"
        assert spark.sparkContext.master == settings.spark.master
        # Spark's default is 200 partitions; Lamina's setting keeps local batches small.
        assert conf.get("spark.sql.shuffle.partitions") == str(settings.spark.shuffle_partitions)
        assert spark.sparkContext.defaultParallelism == settings.spark.shuffle_partitions
        assert conf.get("spark.sql.streaming.stateStore.providerClass").endswith(
            "RocksDBStateStoreProvider"
        )

        # Event times without an offset are UTC, whatever the machine's time zone.
        assert conf.get("spark.sql.session.timeZone") == "UTC"
        row = spark.sql(
            "SELECT CAST(TIMESTAMP '2026-11-27 10:00:00' AS LONG) AS s, "
            "CAST(from_unixtime(0) AS STRING) AS epoch"
        ).first()
        assert row.s == datetime(2026, 11, 27, 10, tzinfo=UTC).timestamp()
        assert row.epoch == "1970-01-01 00:00:00"

        # The Kafka connector jars are on the classpath: both Kafka sources resolve (their
        # schema is fixed; nothing connects to a broker until a query runs).
        listed = (spark.sparkContext.getConf().get("spark.jars") or "").split(",")
        bundle = jars(ensure_bundle(spark_connector_bundle(), settings.stack.cache_dir))
        assert any("spark-sql-kafka" in j.name for j in bundle)
        assert {str(j) for j in bundle} <= set(listed)
        assert all(Path(j).is_file() for j in listed)
        for reader in (spark.read, spark.readStream):
            kafka = (
                reader.format("kafka")
                .option("kafka.bootstrap.servers", "127.0.0.1:9")
                .option("subscribe", "lamina-no-such-topic")
                .load()
            )
            assert kafka.columns == KAFKA_COLUMNS

        # Python workers (mapInArrow, mapPartitions) run the driver's interpreter.
        ran = spark.sparkContext.parallelize([0], 1).map(lambda _: __import__("sys").executable)
        assert ran.collect() == [sys.executable]
    finally:
        spark.conf.unset("spark.lamina.probe")
