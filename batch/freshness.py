"""How stale a view's published batch is, and the check the freshness DAG runs."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from batch.steps import context
from lamina.errors import StaleViewError
from lamina.views import View
from serving.store import Published, open_store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Freshness:
    """How old a view's published batch is, against the view's ``max_staleness_s``.

    ``age_s`` is the time since the published cutoff (the end of the ingest time the batch
    covers, :meth:`serving.store.Published.cutoff_age_s`); ``None`` when no version is
    published, which counts as stale.
    """

    view: str
    version: int | None
    cutoff: int | None
    age_s: float | None
    limit_s: float

    @property
    def stale(self) -> bool:
        return self.age_s is None or self.age_s > self.limit_s

    def describe(self) -> str:
        if self.age_s is None:
            return f"view {self.view!r} has no published batch version"
        return (
            f"view {self.view!r} version {self.version}: published cutoff {self.cutoff} is "
            f"{self.age_s:.0f}s old (limit {self.limit_s:.0f}s)"
        )


def freshness(view: View, published: Published | None, now: float) -> Freshness:
    """Pure staleness arithmetic of one view at ``now`` (epoch seconds).

    The limit is the view definition's ``max_staleness_s``: set it to about two schedule
    intervals plus slack (the default, 3 h, is two ``@hourly`` runs plus one hour), so one
    failed or skipped run does not alert but two do.
    """
    return Freshness(
        view.name,
        None if published is None else published.version,
        None if published is None else published.cutoff,
        None if published is None else published.cutoff_age_s(now),
        float(view.max_staleness_s),
    )


def check_freshness(view_name: str, now: float | None = None) -> dict[str, Any]:
    """Read the published version of ``view_name`` and raise :class:`StaleViewError` if it
    is stale (see :func:`freshness`); returns the figures otherwise."""
    settings, catalog = context()
    view = catalog.view(view_name)
    with open_store(settings.cassandra, catalog) as store:
        pub = store.published(view)
    f = freshness(view, pub, time.time() if now is None else now)
    if f.stale:
        raise StaleViewError(
            f"{f.describe()}: stale",
            view=f.view,
            age_s=f.age_s,
            limit_s=f.limit_s,
            hint="check the archiver and the lamina_batch_<view> DAG runs, or recompute with "
            "lamina_recompute",
        )
    log.info("fresh: %s", f.describe())
    return {"view": f.view, "version": f.version, "age_s": f.age_s, "limit_s": f.limit_s}
