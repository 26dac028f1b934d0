"""How stale a view's published batch is, and the check the freshness DAG runs."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from batch.steps import context
from lamina.errors import StaleViewError
from lamina.master import first_epoch
from lamina.views import View
from serving.store import Published, open_store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Freshness:
    """How old a view's published batch is, against the view's ``max_staleness_s``.

    ``age_s`` is the time since the published cutoff (the end of the ingest time the batch
    covers, :meth:`serving.store.Published.cutoff_age_s`); ``None`` when no version is
    published. A view never published is judged by ``waiting_s``, how long its source's
    master dataset has held data (since the start of its first ingest epoch): a new view,
    or a fresh install, is not stale before a batch could have run on its data; a view whose
    data has waited longer than the limit without a publish is.
    """

    view: str
    version: int | None
    cutoff: int | None
    age_s: float | None
    limit_s: float
    waiting_s: float | None = None

    @property
    def stale(self) -> bool:
        if self.age_s is None:
            return self.waiting_s is not None and self.waiting_s > self.limit_s
        return self.age_s > self.limit_s

    def describe(self) -> str:
        if self.age_s is None:
            if self.waiting_s is None:
                return (
                    f"view {self.view!r} has no published batch version yet, and its source "
                    "has no data in the master dataset: nothing to publish"
                )
            return (
                f"view {self.view!r} has no published batch version; its source's master "
                f"dataset has held data for {self.waiting_s:.0f}s (limit {self.limit_s:.0f}s)"
            )
        return (
            f"view {self.view!r} version {self.version}: published cutoff {self.cutoff} is "
            f"{self.age_s:.0f}s old (limit {self.limit_s:.0f}s)"
        )


def freshness(
    view: View, published: Published | None, now: float, first_epoch: int | None = None
) -> Freshness:
    """Pure staleness arithmetic of one view at ``now`` (epoch seconds); ``first_epoch`` is
    the first ingest epoch (its start, epoch seconds) of the view's source in the master
    dataset, which only matters while nothing is published.

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
        None if published is not None or first_epoch is None else now - first_epoch,
    )


def check_freshness(view_name: str, now: float | None = None) -> dict[str, Any]:
    """Read the published version of ``view_name`` and raise :class:`StaleViewError` if it
    is stale (see :func:`freshness`); returns the figures otherwise."""
    settings, catalog = context()
    view = catalog.view(view_name)
    with open_store(settings.cassandra, catalog) as store:
        pub = store.published(view)
    first = None if pub is not None else first_epoch(settings, view.source)
    f = freshness(view, pub, time.time() if now is None else now, first)
    if f.stale:
        raise StaleViewError(
            f"{f.describe()}: stale",
            view=f.view,
            age_s=f.age_s,
            limit_s=f.limit_s,
            hint="check the archiver and the lamina_batch_<view> DAG runs, or recompute with "
            "lamina_recompute",
        )
    log.info("%s: %s", "fresh" if f.age_s is not None else "not stale", f.describe())
    return {
        "view": f.view,
        "version": f.version,
        "age_s": f.age_s,
        "limit_s": f.limit_s,
        "waiting_s": f.waiting_s,
    }
