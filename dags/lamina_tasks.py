"""Building blocks shared by Lamina's DAGs in ``dags/`` (imported only by them: Airflow).

- endpoints: Airflow connections ``[airflow] spark_conn_id`` / ``cassandra_conn_id`` /
  ``kafka_conn_id`` (e.g. ``AIRFLOW_CONN_LAMINA_CASSANDRA='cassandra://node1:9042'``), when
  defined, override the settings' endpoints for a task, as ``LAMINA_*`` variables;
- task defaults: retries with a delay, execution timeouts from ``[airflow]``;
- :func:`build_chain`: one recompute of some views -> per view validate -> publish ->
  purge + GC, with the recompute run in the worker (``runner = "taskflow"``) or by
  ``SparkSubmitOperator`` (``runner = "spark_submit"``).

Orchestration only: every task calls :mod:`batch.steps`.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from datetime import timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import Connection, TaskGroup, get_current_context, task
from airflow.sdk.exceptions import (
    AirflowFailException,
    AirflowNotFoundException,
    AirflowSkipException,
)

import batch
from lamina.settings import AirflowSettings, Settings, environment

BATCH_DRIVER = Path(batch.__file__).with_name("driver.py")
"""The application ``spark-submit`` runs for a build (:mod:`batch.driver`)."""

alerts = logging.getLogger("lamina.alerts")


def default_args(af: AirflowSettings) -> dict[str, Any]:
    """Retries with a delay and the short-step execution timeout, for every task."""
    return {
        "retries": 2,
        "retry_delay": timedelta(seconds=30),
        "execution_timeout": timedelta(seconds=af.step_timeout_s),
    }


def spark_master(conn: Any) -> str:
    """The master URL of a Spark connection, resolved as the Spark provider's hook does:
    a ``spark`` connection's host may hold the whole URL (``local[2]``, ``yarn``,
    ``k8s://https://...``); otherwise the connection type is the scheme, plus the port."""
    if conn.conn_type == "spark" and conn.host and ("://" in conn.host or not conn.port):
        master = str(conn.host)
    else:
        master = f"{conn.conn_type}://{conn.host or ''}"
    return f"{master}:{conn.port}" if conn.port else master


def _connection(conn_id: str) -> Any | None:
    try:
        return Connection.get(conn_id)
    except AirflowNotFoundException:
        return None


def require_spark_connection(af: AirflowSettings, master: str) -> None:
    """Fail the task at once (no retries) when ``runner = "spark_submit"`` has no Spark
    connection: the Spark provider would otherwise submit to ``yarn`` and fail every try."""
    if _connection(af.spark_conn_id) is not None:
        return
    example = json.dumps({"conn_type": "spark", "host": master})
    raise AirflowFailException(
        f"runner 'spark_submit' needs the Airflow connection {af.spark_conn_id!r} (without "
        "it the Spark provider submits to 'yarn'): define it, e.g. "
        f"AIRFLOW_CONN_{af.spark_conn_id.upper()}='{example}' for [spark] master, or set "
        '[airflow] runner = "taskflow"'
    )


def endpoint_env(af: AirflowSettings) -> dict[str, str]:
    """``LAMINA_*`` overrides from the endpoint connections that exist (empty if none).

    Call it in a task (it reads connections at run time, never at parse time).
    """
    env: dict[str, str] = {}
    spark = _connection(af.spark_conn_id)
    if spark is not None:
        env["LAMINA_SPARK__MASTER"] = spark_master(spark)
    for conn_id, section in ((af.cassandra_conn_id, "CASSANDRA"), (af.kafka_conn_id, "KAFKA")):
        conn = _connection(conn_id)
        if conn is not None and conn.host:
            env[f"LAMINA_{section}__HOST"] = str(conn.host)
        if conn is not None and conn.port:
            env[f"LAMINA_{section}__PORT"] = str(conn.port)
    return env


@contextmanager
def lamina_endpoints(af: AirflowSettings) -> Iterator[dict[str, str]]:
    """Run a block with :func:`endpoint_env` applied to ``os.environ`` (restored after), so
    the :mod:`batch.steps` steps' settings use the connections' endpoints."""
    env = endpoint_env(af)
    with environment(env):
        yield env


def alert(ti: Any, reason: object) -> None:
    """One ``ALERT`` line for operators (log aggregation and paging pick it up), naming the
    DAG, the task and the reason."""
    line = f"ALERT lamina {ti.dag_id}.{ti.task_id}: {reason}"
    alerts.error(line)
    print(line, file=sys.stderr, flush=True)


def alert_on_failure(context: Any) -> None:
    """``on_failure_callback``: :func:`alert` with the task's exception."""
    alert(context["ti"], context.get("exception") or "failed")


def build_chain(
    views: Sequence[str], plan: Any, settings: Settings, *, view_groups: bool = False
) -> Any:
    """One recompute of ``views`` -> per view: validate -> publish -> purge + GC, at the
    cutoffs of ``plan`` (the XCom of an upstream task: view name -> cutoff; a view it
    leaves out is skipped from ``validate`` on); returns the chain's first task.
    ``view_groups``: each view's tasks in a task group named after it (several views).

    The recompute builds every planned view in one Spark application, so the views of a
    source read and deduplicate it once (:func:`batch.steps.build_views`).
    ``taskflow``: ``recompute`` builds in the worker and returns the versions.
    ``spark_submit``: a ``submission`` task resolves the arguments and the driver's
    endpoint variables, the ``SparkSubmitOperator`` ``recompute`` runs
    :mod:`batch.driver`, and ``validate`` finds the version built at that cutoff during
    this run. ``validate`` refuses a batch that fails its self-check against the master
    dataset (the task fails with an ``ALERT`` line) and alerts, without blocking, when the
    speed layer diverged beyond ``max_divergence``; the recompute is incremental where
    ``[batch] incremental`` allows it, and always full in a ``from_scratch`` run;
    ``validate`` lets an older cutoff through only for a ``from_scratch`` run (see
    :func:`batch.steps.validate`), and so does ``publish``; a build holds each view's lease
    (one build of a view at a time).
    """
    af = settings.airflow
    build_timeout = timedelta(seconds=af.build_timeout_s)
    first: Any
    recomputed: Any
    if af.runner == "spark_submit":
        from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

        @task(multiple_outputs=True)
        def submission(plan: dict[str, int]) -> dict[str, Any]:
            require_spark_connection(af, settings.spark.master)
            python = {"PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
            full = ["--full"] if get_current_context()["params"].get("from_scratch") else []
            cutoffs = set(plan.values())
            if len(cutoffs) != 1:
                raise AirflowFailException(f"one cutoff per submission, the plan has {plan}")
            args = [*plan, "--cutoff", str(cutoffs.pop()), *full]
            return {"args": args, "env": python | endpoint_env(af)}

        first = submission(plan)
        recompute = SparkSubmitOperator(
            task_id="recompute",
            application=str(BATCH_DRIVER),
            application_args=first["args"],
            env_vars=first["env"],
            conn_id=af.spark_conn_id,
            conf=dict(settings.spark.conf),
            driver_memory=settings.spark.driver_memory,
            name=f"lamina-batch-{'-'.join(views)}",
            execution_timeout=build_timeout,
        )
        recomputed = None
    else:

        @task(execution_timeout=build_timeout)
        def recompute_in_worker(plan: dict[str, int]) -> dict[str, int]:
            from batch.steps import build_views

            full = bool(get_current_context()["params"].get("from_scratch"))
            with lamina_endpoints(af):
                return build_views(plan, full=full)

        recompute = first = recompute_in_worker.override(task_id="recompute")(plan)
        recomputed = recompute

    for view_name in views:
        with TaskGroup(group_id=view_name) if view_groups else nullcontext():
            _view_chain(view_name, plan, recompute, recomputed, af)
    return first


def _view_chain(
    view_name: str, plan: Any, recompute: Any, recomputed: Any, af: AirflowSettings
) -> None:
    """validate -> publish -> purge + GC of one view, after the ``recompute`` task."""

    @task(retries=0, on_failure_callback=alert_on_failure)
    def validate(plan: dict[str, int], versions: dict[str, int] | None) -> int:
        from batch.steps import built_version
        from batch.steps import validate as check

        if view_name not in plan:
            raise AirflowSkipException(f"{view_name}: nothing to build in this run")
        ctx = get_current_context()
        with lamina_endpoints(af):
            if versions is None:
                started = ctx["dag_run"].start_date
                version = built_version(view_name, plan[view_name], since=started.timestamp())
            else:
                version = versions[view_name]
            report = check(
                view_name, version, allow_older_cutoff=bool(ctx["params"].get("from_scratch"))
            )
        for line in report["verdict"]["warnings"]:
            alert(ctx["ti"], f"view {view_name!r} version {version}: {line}")
        return version

    @task
    def publish(version: int) -> dict[str, object]:
        from batch.steps import publish as do_publish

        from_scratch = bool(get_current_context()["params"].get("from_scratch"))
        with lamina_endpoints(af):
            return do_publish(view_name, version, allow_older_cutoff=from_scratch)

    @task
    def purge_and_gc() -> dict[str, object]:
        from batch.steps import collect_and_purge

        with lamina_endpoints(af):
            return collect_and_purge(view_name)

    validated = validate(plan, recomputed)
    recompute >> validated
    last = purge_and_gc()
    publish(validated) >> last
