"""lamina_freshness: alert when a view's published batch is older than its schedule allows.

One task per view, ``check_<view>``, on a short schedule (``[airflow] freshness_schedule``):
it fails when the published cutoff is older than the view's ``max_staleness_s`` (about two
schedule intervals plus slack) or nothing is published, and its ``on_failure_callback``
logs one ``ALERT lamina ...`` line. No retries: the next run checks again. The staleness
arithmetic lives in :func:`batch.freshness.freshness` (the serving metrics export the same
cutoff age, :meth:`serving.store.Published.cutoff_age_s`).

Why not Airflow's Deadline Alerts: they fire when a DAG *run* has not finished by a time
relative to its logical date or queue time. Staleness is a property of the published data:
it also grows when no run is even attempted, or when runs succeed without new epochs (a
stopped archiver), which no run deadline sees.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import dag, task

from batch.steps import context
from dags.lamina_tasks import alert_on_failure, default_args, lamina_endpoints

_settings, _catalog = context()


@dag(
    dag_id="lamina_freshness",
    schedule=_settings.airflow.freshness_schedule,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={
        **default_args(_settings.airflow),
        "retries": 0,
        "on_failure_callback": alert_on_failure,
    },
    tags=["lamina", "freshness", "alert"],
    doc_md=__doc__,
)
def lamina_freshness() -> None:
    @task
    def check(view_name: str) -> dict[str, object]:
        from batch.freshness import check_freshness

        with lamina_endpoints(_settings.airflow):
            return check_freshness(view_name)

    for name in _catalog.views:
        check.override(task_id=f"check_{name}")(name)


lamina_freshness()
