"""The steps of a view's batch pipeline, as self-contained calls for orchestrators.

Each step loads settings and views itself and opens (and closes) its own Spark session or
Cassandra connection, so an Airflow task (or any scheduler) only passes the view name and
small values (cutoff, version) between steps. No aggregation logic lives in the DAGs.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from batch.master import complete_cutoff
from lamina.errors import PublishError
from lamina.settings import Settings, load_settings
from lamina.views import ViewCatalog, load_views
from serving.store import open_store

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parent.parent


def context() -> tuple[Settings, ViewCatalog]:
    """Settings ($LAMINA_CONFIG, else the repository's conf/lamina.toml) and the views."""
    settings = load_settings(None if _has_config() else ROOT / "conf" / "lamina.toml")
    views = settings.pipeline.views_file
    return settings, load_views(views if views.is_absolute() else ROOT / views)


def _has_config() -> bool:
    import os

    return bool(os.environ.get("LAMINA_CONFIG")) or Path("conf/lamina.toml").is_file()


def pending_cutoff(view_name: str) -> int | None:
    """The cutoff a new batch would use, if the archiver completed epochs past the
    published version's cutoff; ``None`` while there is nothing new to cover."""
    settings, catalog = context()
    view = catalog.view(view_name)
    cut = complete_cutoff(settings, view.source)
    with open_store(settings.cassandra, catalog) as store:
        pub = store.published(view)
    if cut is None or (pub is not None and cut <= pub.cutoff):
        return None
    return cut


def build(view_name: str, cutoff: int | None = None) -> int:
    """Recompute the view into a new unpublished version; returns its number."""
    from batch.run import build_view
    from batch.spark import spark_session

    settings, catalog = context()
    view = catalog.view(view_name)
    spark = spark_session(settings, f"lamina-batch-{view_name}")
    try:
        with open_store(settings.cassandra, catalog) as store:
            return build_view(spark, settings, store, view, cutoff=cutoff).version
    finally:
        spark.stop()


def validate(view_name: str, version: int) -> dict[str, Any]:
    """Check a built version before it is published; raise :class:`PublishError` if not sane.

    Checks: the build completed, its definition hash matches the current view definition,
    it has rows when it read events and no more rows than events. Returns the report.
    """
    settings, catalog = context()
    view = catalog.view(view_name)
    with open_store(settings.cassandra, catalog) as store:
        v = store.version(view, version)
        pub = store.published(view)
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
    if pub is not None and v.cutoff < pub.cutoff:
        problems.append(f"cutoff {v.cutoff} is older than the published {pub.cutoff}")
    if problems:
        raise PublishError(
            f"view {view_name!r} version {version} failed validation: " + "; ".join(problems)
        )
    log.info("validated %s", report)
    return report


def publish(view_name: str, version: int) -> dict[str, Any]:
    settings, catalog = context()
    view = catalog.view(view_name)
    with open_store(settings.cassandra, catalog) as store:
        pub = store.publish_version(view, version)
    return {"view": view_name, "version": pub.version, "cutoff": pub.cutoff, "rows": pub.rows}


def maintain(view_name: str) -> dict[str, Any]:
    """Garbage-collect old versions and purge covered real-time epochs."""
    from batch.run import maintain as run_maintain

    settings, catalog = context()
    view = catalog.view(view_name)
    with open_store(settings.cassandra, catalog) as store:
        dropped, purged = run_maintain(store, view)
    return {"view": view_name, "collected": dropped, "purged_rows": purged}
