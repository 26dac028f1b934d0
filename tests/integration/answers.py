"""Merged answers of a world, read through the query service, and their check against the truth."""

from __future__ import annotations

from typing import Any

from lamina.settings import Settings
from lamina.views import ViewCatalog
from serving.cassandra import session
from serving.query import QueryService
from serving.store import Store
from tests import truth


def answers(
    settings: Settings,
    catalog: ViewCatalog,
    view: str,
    keys: list[str],
    *,
    q: float = 0.95,
    granularity: str | None = None,
    start: float = truth.BASE - 4 * 86400,
    end: float = truth.BASE + 3600,
) -> dict[tuple[str, int], dict[str, Any]]:
    """``{(key, bucket_start): bucket}`` of the merged answer (values and provenance)."""
    with session(settings.cassandra) as s:
        svc = QueryService(Store(s, settings.cassandra), catalog, settings)
        out = svc.query(view, keys, start, end, granularity=granularity, q=q)
    return {(r["key"], b["bucket_start"]): b for r in out["results"] for b in r["buckets"]}


def assert_exact(
    view: str,
    got: dict[tuple[str, int], dict[str, Any]],
    want: dict[tuple[str, int], dict[str, Any]],
    q: float = 0.95,
) -> None:
    """Same (key, bucket) cells, and every cell equal to the truth (:func:`truth.check`)."""
    assert set(got) == set(want), (sorted(set(got) ^ set(want)))[:10]
    problems = {k: p for k in want if (p := truth.check(view, got[k]["values"], want[k], q))}
    assert problems == {}
