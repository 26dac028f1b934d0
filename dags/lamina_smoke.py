"""lamina_smoke: checks that the stack the pipelines depend on answers (Kafka, Cassandra).

Orchestration only: each task calls the stack manager's real probes; no logic lives here.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import dag, task


@dag(
    dag_id="lamina_smoke",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["lamina", "smoke"],
    doc_md=__doc__,
)
def lamina_smoke() -> None:
    @task(retries=2, retry_delay=pendulum.duration(seconds=5))
    def probe(service: str) -> dict[str, str]:
        from batch.steps import context
        from lamina.stack.manager import Stack

        settings, _ = context()  # the settings every DAG reads, whatever the directory
        status = Stack(settings, [service]).status()[0]
        if not status.healthy:
            raise RuntimeError(f"{service} is {status.state}; run `lamina stack up`")
        return {"service": service, "version": status.version or "?"}

    @task
    def report(results: list[dict[str, str]]) -> str:
        from batch.steps import ROOT
        from lamina.context import config_path

        line = ", ".join(f"{r['service']} {r['version']}" for r in results)
        print(f"lamina stack healthy: {line} (settings: {config_path(ROOT) or 'defaults'})")
        return line

    report(
        [
            probe.override(task_id="probe_kafka")("kafka"),
            probe.override(task_id="probe_cassandra")("cassandra"),
        ]
    )


lamina_smoke()
