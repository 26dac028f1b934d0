"""The steps of a view's batch pipeline, as self-contained calls for orchestrators.

Each step loads settings and views itself and opens (and closes) its own Spark session or
Cassandra connection, so an Airflow task (or any scheduler) only passes the view name and
small values (cutoff, version) between steps. No aggregation logic lives in the DAGs.

Also here, for every orchestrator: which views a recompute covers (:func:`select_views`,
:func:`recompute_plan`). How stale a view is lives in :mod:`batch.freshness`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from batch.reconcile import stored_verdict
from lamina.context import load_context
from lamina.errors import NotFoundError, PublishError
from lamina.master import complete_cutoff
from lamina.settings import Settings
from lamina.views import ViewCatalog
from serving.store import PUBLISHABLE, open_store

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parent.parent


def context() -> tuple[Settings, ViewCatalog]:
    """Settings and views of a step (see :mod:`lamina.context`; this repository is the root)."""
    return load_context(root=ROOT)


def pending_cutoff(view_name: str) -> int | None:
    """The cutoff a new batch would use, if the archiver completed epochs past the
    published version's cutoff; ``None`` while there is nothing new to cover
    (:func:`recompute_plan` of the one view)."""
    return recompute_plan([view_name], from_scratch=False).get(view_name)


def select_views(names: Sequence[str] | None) -> list[str]:
    """The views a run should cover: ``names`` in order, or every view when empty/``None``.

    Raises :class:`NotFoundError` naming every unknown view and the known ones.
    """
    _, catalog = context()
    if not names:
        return list(catalog.views)
    unknown = [n for n in names if n not in catalog.views]
    if unknown:
        raise NotFoundError(
            f"unknown view(s) {', '.join(repr(n) for n in unknown)}",
            hint=f"known views: {', '.join(catalog.views)}",
        )
    return list(dict.fromkeys(names))


def recompute_plan(view_names: Sequence[str], from_scratch: bool) -> dict[str, int]:
    """The views of ``view_names`` a recompute should build, each with its cutoff: its
    source's complete cutoff, read once per source, so the views of a source are built at
    the same cutoff and share one read of it (:func:`build_views`).

    ``from_scratch=False``: only the views whose source completed epochs past their
    published cutoff. ``from_scratch=True``: every view
    whose source has a complete epoch, even if nothing new arrived (after a change of a
    view's definition, or to repair a published version). Views left out are skipped."""
    settings, catalog = context()
    views = [catalog.view(n) for n in view_names]
    cuts: dict[str, int | None] = {}
    plan: dict[str, int] = {}
    # A from-scratch plan does not look at the published versions: no Cassandra.
    with nullcontext() if from_scratch else open_store(settings.cassandra, catalog) as store:
        for view in views:
            if view.source.name not in cuts:
                cuts[view.source.name] = complete_cutoff(settings, view.source)
            cut = cuts[view.source.name]
            if cut is None:
                continue
            pub = None if store is None else store.published(view)
            if pub is None or cut > pub.cutoff:
                plan[view.name] = cut
    return plan


def build(view_name: str, cutoff: int | None = None, *, full: bool = False) -> int:
    """Recompute the view into a new unpublished version; returns its number. Incremental
    where ``[batch] incremental`` allows it (:mod:`batch.incremental`), unless ``full`` (a
    from-scratch recompute)."""
    return build_views({view_name: cutoff}, full=full)[view_name]


def build_views(plan: Mapping[str, int | None], *, full: bool = False) -> dict[str, int]:
    """Recompute each view of ``plan`` (view name -> cutoff; ``None``: its source's complete
    cutoff, taken once per source before the first build) into a new unpublished version,
    in one Spark session; returns view name -> version. The views of a source built at the
    same cutoff read and deduplicate it once (:class:`batch.recompute.SourceReads`). Builds
    run in ``plan``'s order and the first failure raises: the versions built before it stay
    unpublished (``ready``) and are collected like any unpublished version."""
    from batch.recompute import SourceReads, build_view, resolve_cutoff
    from engine.session import spark_session

    settings, catalog = context()
    views = [catalog.view(n) for n in plan]
    names = ", ".join(plan)
    spark = spark_session(settings, f"lamina-batch-{names}")
    try:
        cuts: dict[str, int] = {}
        for view in views:
            if plan[view.name] is None and view.source.name not in cuts:
                cuts[view.source.name] = resolve_cutoff(settings, view, None)
        built: dict[str, int] = {}
        with (
            open_store(settings.cassandra, catalog) as store,
            SourceReads(spark, settings, views) as reads,
        ):
            for view in views:
                cut = plan[view.name]
                built[view.name] = build_view(
                    spark,
                    settings,
                    store,
                    view,
                    cutoff=cuts[view.source.name] if cut is None else cut,
                    incremental=False if full else None,
                    reads=reads,
                ).version
        return built
    finally:
        spark.stop()


def built_version(view_name: str, cutoff: int, since: float) -> int:
    """The newest version of ``view_name`` built at ``cutoff`` from the current definition
    and started at or after ``since`` (epoch seconds): how an orchestrator that ran the build
    out of process (``spark-submit``) finds its number. Any such version has the same
    content, since it is a function of the definition and the (immutable) epochs before
    the cutoff. Raises :class:`PublishError` when there is none.
    """
    settings, catalog = context()
    view = catalog.view(view_name)
    with open_store(settings.cassandra, catalog) as store:
        versions = store.versions(view)
    found = [
        v.version
        for v in versions  # newest first
        if (v.cutoff, v.definition_hash) == (cutoff, view.definition_hash) and v.started_at >= since
    ]
    if found:
        return found[0]
    raise PublishError(
        f"view {view_name!r}: no version was built at cutoff {cutoff} since {since:.0f}",
        hint="see the recompute task's log and `lamina batch versions VIEW`",
    )


def validate(view_name: str, version: int, *, allow_older_cutoff: bool = False) -> dict[str, Any]:
    """Check a built version before it is published; raise :class:`PublishError` if not sane.

    Checks: the build completed, its definition hash matches the current view definition,
    it has rows when it read events and no more rows than events, and it passed its
    self-check against the master dataset it was built from (stored by the build with its
    reconciliation, see :mod:`batch.reconcile`): a batch that disagrees with its master
    dataset is broken and refused. Its divergence from the real-time view never blocks: the
    batch is what corrects the speed layer. Beyond ``[airflow] max_divergence`` of the
    compared cells the report's ``verdict`` says the speed layer diverged and its
    ``warnings`` say so (logged here; the DAG raises an alert).

    A cutoff older than the published one is refused, unless ``allow_older_cutoff`` (a
    from-scratch recompute) and the real-time rows it needs are still there: its cutoff is
    not older than any other retained version's, nor than the purge floor recorded in the
    catalog, so no purge removed epochs it relies on. (The publish checks the same again,
    atomically: :meth:`serving.store.Store.publish`.)

    Returns the report (with the reconciliation and the verdict), also when it raises (as
    the log line).
    """
    settings, catalog = context()
    view = catalog.view(view_name)
    with open_store(settings.cassandra, catalog) as store:
        v = store.version(view, version)
        pub = store.published(view)
        rec = store.reconciliation(view, version)
        others = [
            x.cutoff
            for x in store.versions(view)
            if x.state in PUBLISHABLE and x.version != version
        ]
    if v is None:
        raise PublishError(f"view {view_name!r} has no version {version}")
    events = int(v.timings.get("events", 0))
    report = {
        "view": view_name,
        "version": version,
        "state": v.state,
        "rows": v.rows,
        "events": events,
        "cutoff": v.cutoff,
        "previous": None
        if pub is None
        else {"version": pub.version, "rows": pub.rows, "cutoff": pub.cutoff},
        "reconciliation": rec,
    }
    problems = []
    if v.state != "ready":
        problems.append(f"state is {v.state}, not ready")
    if v.definition_hash != view.definition_hash:
        problems.append("built from another definition of the view")
    if events and not v.rows:
        problems.append(f"read {events} events but wrote no rows")
    if v.rows > events:
        problems.append(f"{v.rows} rows from {events} events")
    if pub is not None and pub.purged_before is not None and v.cutoff < pub.purged_before:
        problems.append(
            f"cutoff {v.cutoff} is older than {pub.purged_before}, before which the real-time "
            "rows were purged"
        )
    elif pub is not None and v.cutoff < pub.cutoff:
        floor = min(others, default=pub.cutoff)
        if not allow_older_cutoff:
            problems.append(f"cutoff {v.cutoff} is older than the published {pub.cutoff}")
        elif v.cutoff < floor:
            problems.append(
                f"cutoff {v.cutoff} is older than the published {pub.cutoff} and than every "
                f"retained version ({floor}): real-time epochs it needs may be purged"
            )
    verdict = stored_verdict(rec, settings.airflow.max_divergence)
    report["verdict"] = verdict.to_dict()
    problems += verdict.problems
    if problems:
        log.error("validation failed %s", report)
        raise PublishError(
            f"view {view_name!r} version {version} failed validation: " + "; ".join(problems)
        )
    for line in verdict.warnings:
        log.warning("view %r version %s: %s", view_name, version, line)
    log.info("validated %s", report)
    return report


def publish(view_name: str, version: int, *, allow_older_cutoff: bool = False) -> dict[str, Any]:
    """Publish a validated version (:meth:`serving.store.Store.publish_version`): refused at a
    cutoff older than the published one unless ``allow_older_cutoff`` (a from-scratch
    recompute), and always below the catalog's purge floor."""
    settings, catalog = context()
    view = catalog.view(view_name)
    with open_store(settings.cassandra, catalog) as store:
        pub = store.publish_version(view, version, allow_older_cutoff=allow_older_cutoff)
    return {"view": view_name, "version": pub.version, "cutoff": pub.cutoff, "rows": pub.rows}


def collect_and_purge(view_name: str) -> dict[str, Any]:
    """Garbage-collect old versions and purge covered real-time epochs."""
    from batch.recompute import collect_and_purge

    settings, catalog = context()
    view = catalog.view(view_name)
    with open_store(settings.cassandra, catalog) as store:
        dropped, purged = collect_and_purge(store, view)
    return {"view": view_name, "collected": dropped, "purged_rows": purged}
