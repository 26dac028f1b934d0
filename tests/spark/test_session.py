"""Spark in local mode, configured from settings (no external services)."""

from __future__ import annotations

from lamina.settings import Settings


def test_session_follows_settings(settings: Settings) -> None:
    from batch.spark import spark_session

    spark = spark_session(settings, "lamina-test-session")
    conf = spark.sparkContext.getConf()
    assert conf.get("spark.sql.shuffle.partitions") == str(settings.spark.shuffle_partitions)
    assert spark.conf.get("spark.sql.session.timeZone") == "UTC"
    total = spark.range(1, 1001).groupBy().sum("id").collect()[0][0]
    assert total == 500_500
