"""lamina_recompute: recompute / backfill chosen views on demand (no schedule).

Trigger with params ``views`` (view names; default every view) and ``from_scratch``:

- ``from_scratch = false``: recompute only the chosen views whose source has newly complete
  epochs past the published cutoff; the others are skipped.
- ``from_scratch = true``: rebuild every chosen view from the whole master dataset at its
  current complete cutoff, even if nothing new arrived: after a change of a view's
  definition, or to repair a published version; always a full recompute, never an
  incremental build (``[batch] incremental``). Validation then also accepts a cutoff
  older than the published one where that is safe (the real-time epochs it needs were
  not purged), see :func:`batch.steps.validate`, and so does the publish (which checks the
  purge floor recorded in the catalog again, atomically).

``select_views`` fails the run at once, naming the unknown views and the known ones. Each
source has a task group ``<source>``: ``plan`` (which of its chosen views have something to
do, at one cutoff; skips when none) -> ``recompute`` of those views in one Spark
application, so the views of a source read and deduplicate it once -> a task group
``<view>`` per view: validate -> publish -> purge + GC (:func:`dags.lamina_tasks.build_chain`).
Orchestration only: every step calls :mod:`batch.steps`.

    airflow dags trigger lamina_recompute -c '{"views": ["web_pageviews"], "from_scratch": true}'
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Param, TaskGroup, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowSkipException

from batch.steps import context
from dags.lamina_tasks import build_chain, default_args, lamina_endpoints

_settings, _catalog = context()
_VIEWS = list(_catalog.views)
_SOURCES: dict[str, list[str]] = {}
for _view in _catalog.views.values():
    _SOURCES.setdefault(_view.source.name, []).append(_view.name)


@dag(
    dag_id="lamina_recompute",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=default_args(_settings.airflow),
    params={
        "views": Param(
            _VIEWS,
            type="array",
            items={"type": "string"},
            description=f"views to recompute (known: {', '.join(_VIEWS)}); empty = all",
        ),
        "from_scratch": Param(
            False,
            type="boolean",
            description="rebuild even without new epochs (e.g. after a definition change)",
        ),
    },
    tags=["lamina", "batch", "backfill"],
    doc_md=__doc__,
)
def lamina_recompute() -> None:
    @task(retries=0)
    def select_views() -> list[str]:
        from batch.steps import select_views as select

        return select(get_current_context()["params"]["views"])

    selected = select_views()
    for source, names in _SOURCES.items():
        with TaskGroup(group_id=source):

            @task
            def plan(selected: list[str], names: list[str] = names) -> dict[str, int]:
                from batch.steps import recompute_plan

                chosen = [n for n in names if n in selected]
                if not chosen:
                    raise AirflowSkipException(
                        f"no view of this source is among the chosen ({names})"
                    )
                from_scratch = bool(get_current_context()["params"]["from_scratch"])
                with lamina_endpoints(_settings.airflow):
                    todo = recompute_plan(chosen, from_scratch)
                if not todo:
                    raise AirflowSkipException(
                        f"{', '.join(chosen)}: no complete epoch past the published cutoff"
                        if not from_scratch
                        else f"{', '.join(chosen)}: the master dataset has no complete epoch yet"
                    )
                return todo

            build_chain(names, plan(selected), _settings, view_groups=True)


lamina_recompute()
