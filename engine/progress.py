"""Progress of a Spark action as a :class:`lamina.progress.Task`: the tasks of its last
stage done so far, read from Spark's status tracker while the action runs."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import TypeVar

from pyspark.sql import SparkSession

from lamina.progress import Task

T = TypeVar("T")

POLL_S = 0.5


def watched(
    spark: SparkSession,
    task: Task,
    action: Callable[[], T],
    status: Callable[[], str | None] = lambda: None,
    *,
    live: bool = True,
) -> T:
    """Run ``action`` (Spark jobs started from this thread) and, while it runs, set
    ``task``'s counts to the completed and total tasks of the last stage of its newest job
    (the stage that writes, for a write), and its status to ``status()`` when that is not
    ``None``, every :data:`POLL_S` seconds. ``live=False`` (plain output: nobody sees the
    counts) runs ``action`` alone. Returns what ``action`` returns; the job group it sets
    for the block is cleared after."""
    if not live:
        return action()
    sc = spark.sparkContext
    group = f"lamina-progress-{uuid.uuid4().hex}"
    sc.setJobGroup(group, task.description)
    stop = threading.Event()

    def poll() -> None:
        tracker = sc.statusTracker()
        while not stop.wait(POLL_S):
            try:
                jobs = tracker.getJobIdsForGroup(group)
                info = tracker.getJobInfo(max(jobs)) if jobs else None
                stage = tracker.getStageInfo(max(info.stageIds)) if info and info.stageIds else None
                if stage is not None:
                    task.update(completed=stage.numCompletedTasks, total=stage.numTasks)
                text = status()
                if text is not None:
                    task.status(text)
            except Exception:  # the JVM going away at the end of a run: nothing to show
                return

    thread = threading.Thread(target=poll, name=group, daemon=True)
    thread.start()
    try:
        return action()
    finally:
        stop.set()
        thread.join()
        sc.setLocalProperty("spark.jobGroup.id", None)  # type: ignore[arg-type]
        sc.setLocalProperty("spark.job.description", None)  # type: ignore[arg-type]
