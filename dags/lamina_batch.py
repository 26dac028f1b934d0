"""One batch pipeline DAG per view in conf/views.toml: ``lamina_batch_<view>``.

wait for the archiver's complete epochs -> recompute -> validate -> publish -> purge + GC.
Orchestration only: every step calls :mod:`batch.pipeline`.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import PokeReturnValue, dag, task

from batch.pipeline import context


def make_dag(view_name: str, schedule: str) -> object:
    @dag(
        dag_id=f"lamina_batch_{view_name}",
        schedule=schedule,
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        catchup=False,
        max_active_runs=1,
        default_args={"retries": 2, "retry_delay": pendulum.duration(seconds=30)},
        tags=["lamina", "batch", view_name],
        doc_md=f"Recompute and publish Lamina view `{view_name}`.",
    )
    def pipeline() -> None:
        @task.sensor(poke_interval=10, timeout=3600, mode="poke", retries=0)
        def wait_for_archiver() -> PokeReturnValue:
            from batch.pipeline import pending_cutoff

            cut = pending_cutoff(view_name)
            return PokeReturnValue(is_done=cut is not None, xcom_value=cut)

        @task
        def recompute(cutoff: int) -> int:
            from batch.pipeline import build

            return build(view_name, cutoff)

        @task(retries=0)
        def validate(version: int) -> int:
            from batch.pipeline import validate as check

            check(view_name, version)
            return version

        @task
        def publish(version: int) -> dict[str, object]:
            from batch.pipeline import publish as do_publish

            return do_publish(view_name, version)

        @task
        def purge_and_gc() -> dict[str, object]:
            from batch.pipeline import maintain

            return maintain(view_name)

        published = publish(validate(recompute(wait_for_archiver())))
        published >> purge_and_gc()

    return pipeline()


_settings, _catalog = context()
for _view in _catalog.views.values():
    globals()[f"lamina_batch_{_view.name}"] = make_dag(_view.name, _view.schedule)
