"""One batch pipeline DAG per view in conf/views.toml: ``lamina_batch_<view>``.

wait for the archiver's complete epochs -> recompute -> validate -> publish -> purge + GC
(:func:`dags.lamina_tasks.build_chain`; ``[airflow] runner`` picks where the recompute runs).
Orchestration only: every step calls :mod:`batch.steps`.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import PokeReturnValue, dag, task

from batch.steps import context
from dags.lamina_tasks import build_chain, default_args, lamina_endpoints
from lamina.settings import Settings

SENSOR_TIMEOUT_S = 3600
"""How long a run waits for the archiver to complete new epochs before it fails."""


def make_dag(view_name: str, schedule: str, settings: Settings) -> object:
    af = settings.airflow

    @dag(
        dag_id=f"lamina_batch_{view_name}",
        schedule=schedule,
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        catchup=False,
        max_active_runs=1,
        default_args=default_args(af),
        tags=["lamina", "batch", view_name],
        doc_md=f"Recompute and publish Lamina view `{view_name}`.",
    )
    def pipeline() -> None:
        @task.sensor(
            poke_interval=10,
            timeout=SENSOR_TIMEOUT_S,
            mode="poke",
            retries=0,
            execution_timeout=timedelta(seconds=SENSOR_TIMEOUT_S + 60),
        )
        def wait_for_archiver() -> PokeReturnValue:
            from batch.steps import pending_cutoff

            with lamina_endpoints(af):
                cut = pending_cutoff(view_name)
            return PokeReturnValue(is_done=cut is not None, xcom_value={view_name: cut})

        build_chain([view_name], wait_for_archiver(), settings)

    return pipeline()


_settings, _catalog = context()
for _view in _catalog.views.values():
    globals()[f"lamina_batch_{_view.name}"] = make_dag(_view.name, _view.schedule, _settings)
