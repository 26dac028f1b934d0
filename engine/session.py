"""Build the SparkSession every Lamina job uses (batch and speed alike) from settings."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from pyspark import SparkContext
from pyspark.sql import SparkSession

from lamina import console
from lamina.errors import LaminaError
from lamina.files import tail
from lamina.jars import spark_connector_jars
from lamina.progress import Progress, as_progress
from lamina.settings import Settings

log = logging.getLogger(__name__)

POOLS = Path(__file__).with_name("pools.xml")
"""The FAIR scheduler's pools (``views`` before ``archive``; see the file)."""


@contextmanager
def _output_to(path: Path) -> Iterator[None]:
    """File descriptors 1 and 2 point at ``path`` for the block: a child process started
    meanwhile (the JVM) keeps writing there; this process's own are restored after."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with path.open("ab") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def spark_session(
    settings: Settings, app_name: str, progress: Callable[[str], None] | Progress | None = None
) -> SparkSession:
    """Get or create the process's session, configured from ``settings.spark``
    (``progress``: where a first fetch of the connector jars reports).

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
    connector = spark_connector_jars(settings.stack.cache_dir, progress)
    builder = builder.config("spark.jars", ",".join(str(j) for j in connector))
    for key, value in sp.conf.items():
        builder = builder.config(key, value)
    jvm_log = console.JVM_LOG
    if jvm_log is None or SparkContext._gateway is not None:
        session = builder.getOrCreate()
    else:
        as_progress(progress).note(f"starting Spark ({sp.master}); its own log: {jvm_log}")
        try:
            with _output_to(jvm_log):
                session = builder.getOrCreate()
        except Exception as exc:
            raise LaminaError(
                f"Spark did not start ({type(exc).__name__}: {str(exc)[:300]}); the end of "
                f"its log {jvm_log}: {tail(jvm_log, 8)}",
                hint="run the command again with --verbose to see Spark's output",
            ) from None
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
