"""Build the SparkSession every Lamina job uses (batch and speed alike) from settings."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pyspark.sql import SparkSession

from lamina.jars import spark_connector_jars
from lamina.settings import Settings

POOLS = Path(__file__).with_name("pools.xml")
"""The FAIR scheduler's pools (``views`` before ``archive``; see the file)."""


def spark_session(settings: Settings, app_name: str) -> SparkSession:
    """Get or create the process's session, configured from ``settings.spark``.

    The Kafka connector jars (fetched once into the jar cache, for the installed pyspark
    version) are always on the classpath through ``spark.jars``: a JVM's classpath is fixed
    when the first session starts, and batch and streaming jobs share one process in tests.
    Local mode by default; any master URL works (the jars are shipped to executors). Jobs
    are scheduled FAIR across the pools of :data:`POOLS`, so that a micro-batch's view
    updates take free task slots before its archive write.
    """
    # Executors must run the driver's interpreter (the project's virtualenv).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    sp = settings.spark
    if sp.master.startswith("local"):
        # Stay on loopback: no network interface lookups, nothing exposed.
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    builder = (
        SparkSession.builder.appName(app_name)
        .master(sp.master)
        .config("spark.sql.shuffle.partitions", str(sp.shuffle_partitions))
        .config("spark.default.parallelism", str(sp.shuffle_partitions))
        .config("spark.driver.memory", sp.driver_memory)
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.ui.enabled", "false")
        .config("spark.scheduler.mode", "FAIR")
        .config("spark.scheduler.allocation.file", str(POOLS))
        .config(
            "spark.sql.streaming.stateStore.providerClass",
            "org.apache.spark.sql.execution.streaming.state.RocksDBStateStoreProvider",
        )
        .config("spark.sql.streaming.forceDeleteTempCheckpointLocation", "true")
        # An idle source job reports every second (default 10 s): its epoch marks, hence
        # epoch completeness, follow an epoch's end by about that (speed.completeness).
        .config("spark.sql.streaming.noDataProgressEventInterval", "1000")
    )
    connector = spark_connector_jars(settings.stack.cache_dir)
    builder = builder.config("spark.jars", ",".join(str(j) for j in connector))
    for key, value in sp.conf.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("WARN")
    _quiet(session, "org.apache.spark.scheduler.DAGScheduler")
    return session


def _quiet(session: SparkSession, logger: str) -> None:
    """Log only errors of ``logger``: stopping a streaming query between micro-batches makes
    the DAGScheduler warn twice that the query's job group has no active job to cancel."""
    try:
        jvm = session.sparkContext._jvm
        assert jvm is not None
        level = jvm.org.apache.logging.log4j.Level.ERROR
        jvm.org.apache.logging.log4j.core.config.Configurator.setLevel(logger, level)
    except Exception:  # a logging tweak must never stop a job
        pass
