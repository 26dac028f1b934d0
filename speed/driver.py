"""The driver of a submitted streaming job: ``spark-submit ... speed/driver.py --job-id ID``.

Launched by :func:`speed.launcher.submit`, never by hand. It loads the settings the job was
submitted with, applies the job's master and ``--conf``, starts the job's queries (locking
their checkpoints), reports its pid and Spark application id to the registry, and runs
until SIGTERM (``lamina stream stop``), which stops every query between micro-batches.
Its final state (``stopped`` or ``failed``, with the reason) goes to the registry before it
exits; the exit status is 0 only for a requested stop.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from lamina.errors import LaminaError
from speed.launcher import job_definition, job_settings, report

log = logging.getLogger("lamina.driver")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--job-id", required=True)
    p.add_argument("--jobs-dir", required=True, type=Path)
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("kafka", "py4j"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("cassandra").setLevel(logging.CRITICAL)

    def say(message: str) -> None:
        log.info(message)

    job_id, jobs_dir = args.job_id, args.jobs_dir
    from speed.queries import stop_on_signals

    stop_on_signals()  # from here on, SIGTERM means "stop gracefully", even during startup
    report(jobs_dir, job_id, driver_pid=os.getpid(), state="starting", started_at=time.time())
    try:
        return run(job_id, jobs_dir, say)
    except LaminaError as exc:
        log.error("%s", exc)
        report(jobs_dir, job_id, final="failed", message=str(exc), ended_at=time.time())
        return 1
    except BaseException as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        log.exception("job %s failed", job_id)
        report(jobs_dir, job_id, final="failed", message=first, ended_at=time.time())
        return 1


def run(job_id: str, jobs_dir: Path, say: Callable[[str], None]) -> int:
    """Start the job's queries and block until they stop; returns the exit status."""
    from engine.session import spark_session
    from lamina.context import load_catalog
    from speed.queries import run_until_stopped, start_all

    job = job_definition(jobs_dir, job_id)
    settings = job_settings(jobs_dir, job_id)
    settings = settings.model_copy(
        update={
            "spark": settings.spark.model_copy(
                update={"master": job.master, "conf": {**settings.spark.conf, **job.conf}}
            )
        }
    )
    catalog = load_catalog(settings)
    spark = spark_session(settings, f"lamina-{job.what}")
    queries = start_all(spark, settings, catalog, [job.what])
    app_id = spark.sparkContext.applicationId
    report(jobs_dir, job_id, state="running", app_id=app_id)
    say(
        f"job {job_id} ({job.what}) running as {app_id} on {job.master}: "
        + ", ".join(q.name or "?" for q in queries)
    )
    failed = run_until_stopped(spark, queries, say, settings.spark.stop_timeout_s)
    if failed is not None:
        report(jobs_dir, job_id, final="failed", message=failed, ended_at=time.time())
        return 1
    report(jobs_dir, job_id, final="stopped", message="stopped on request", ended_at=time.time())
    say(f"job {job_id} stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
