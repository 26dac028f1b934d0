"""The views of one source built in one run read and deduplicate the source once
(:class:`batch.recompute.SourceReads`), full and incremental builds alike, and each view's
version equals its own full recompute, cell for cell."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from batch.recompute import SourceReads, build_view, run_batch
from lamina.settings import Settings
from lamina.views import load_views
from serving.store import open_store
from tests import truth
from tests.conftest import ROOT
from tests.integration.conftest import archive, drop_keyspace
from tests.integration.test_incremental import (
    RESENT,
    assert_same_cells,
    complete,
    first_epoch,
    incremental,
    table_cells,
)

# A second view of the pageviews source, on other keys, filter and fields than
# web_pageviews: the shared read carries the columns of both.
VISITORS = """
[views.web_visitors]
source = "pageviews"
keys = ["visitor"]
bucket = "day"
filter = [{ field = "status", op = "==", value = 200 }]
[views.web_visitors.aggregations]
views = { fn = "count" }
urls = { fn = "distinct", field = "url" }
load_ms_max = { fn = "max", field = "load_ms" }
"""


def test_views_of_one_source_share_one_read_and_equal_their_own_recompute(
    stack: Settings, tmp_path: Path, spark: Any
) -> None:
    settings = incremental(stack, tmp_path)
    views_toml = tmp_path / "views.toml"
    views_toml.write_text((ROOT / "conf" / "views.toml").read_text() + VISITORS)
    catalog = load_views(views_toml)
    names = ["web_pageviews", "web_visitors"]
    pageviews, visitors = (catalog.view(n) for n in names)
    source = pageviews.source
    es = settings.pipeline.epoch_seconds
    e0 = first_epoch(settings)
    events = truth.pageviews(900, seed=61).good
    base, new = events[:600], events[600:]
    # A key too long for Cassandra for web_pageviews (its url), not for web_visitors.
    long_url = {**base[0], "event_id": "long-url", "url": "/" + "x" * 70_000}
    resent = [{**ev, **RESENT["web_pageviews"]} for ev in base[:30:2]] + base[1:30:2]
    again = [{**ev, "load_ms": 3.0} for ev in new[:15]]  # later copies in the new epochs
    try:
        archive(settings, source, [*base[:300], long_url], e0)
        archive(settings, source, base[300:] + base[:20], e0 + es)  # duplicates
        complete(settings, pageviews, e0 + 2 * es)
        said: list[str] = []
        first = run_batch(spark, settings, catalog, names, progress=said.append)
        assert [r.timings["read_views"] for r in first] == [2, 2], said
        # The second view took the read the first one made: one read, one dedup.
        assert [r.timings["read_shared"] for r in first] == [0.0, 1.0], said
        assert [r.timings["oversize_keys"] for r in first] == [1, 0]
        assert [r.events for r in first] == [len(base) + 1] * 2

        archive(settings, source, new[:150] + resent, e0 + 2 * es)
        archive(settings, source, new[150:] + again, e0 + 3 * es)
        complete(settings, pageviews, e0 + 4 * es)
        with (
            open_store(settings.cassandra, catalog) as store,
            SourceReads(spark, settings, [pageviews, visitors]) as reads,
        ):
            inc = [
                build_view(spark, settings, store, v, reads=reads, progress=said.append)
                for v in (pageviews, visitors)
            ]
            assert [v.timings["incremental"] for v in inc] == [1.0, 1.0], said
            assert [v.timings["read_shared"] for v in inc] == [0.0, 1.0]
            assert [v.timings["resent_dropped"] for v in inc] == [len(resent)] * 2
            cut = inc[0].cutoff
            # One read of the new epochs for both views, none of the whole source.
            assert reads.passes == {(source.name, first[0].cutoff, cut): 1}
            assert [v.timings["events"] for v in inc] == [len(events) + 1] * 2

            for view, built in zip((pageviews, visitors), inc, strict=True):
                # Its own full recompute: its own read, made for it alone.
                own = build_view(spark, settings, store, view, incremental=False)
                assert own.timings["read_views"] == 1 and own.cutoff == built.cutoff
                assert own.rows == built.rows and own.timings["events"] == built.timings["events"]
                assert own.timings["oversize_keys"] == built.timings["oversize_keys"]
                got = table_cells(settings, view, built.version)
                assert got, view.name
                assert_same_cells(view, got, table_cells(settings, view, own.version))
            for view, built in zip((pageviews, visitors), first, strict=True):
                own = build_view(
                    spark, settings, store, view, cutoff=built.cutoff, incremental=False
                )
                assert own.rows == built.rows
                assert_same_cells(
                    view,
                    table_cells(settings, view, built.version),
                    table_cells(settings, view, own.version),
                )
        assert reads.passes == {(source.name, first[0].cutoff, cut): 1}
    finally:
        drop_keyspace(settings)
