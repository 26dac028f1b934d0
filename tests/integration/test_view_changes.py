"""A view's definition changes after its real-time table exists (issue #12, hole 6): a new
aggregation's columns are added; a changed key is refused with the way out; a sum column left
as bigint by an older Lamina is a warning."""

from __future__ import annotations

import copy
import logging
import tomllib
from pathlib import Path
from typing import Any

import pytest

from lamina.errors import ConfigError
from lamina.settings import Settings
from lamina.views import parse_views
from serving.schema import realtime_table
from serving.store import open_store
from tests.conftest import ROOT, isolated
from tests.integration.conftest import drop_keyspace

DOC = tomllib.loads((ROOT / "conf" / "views.toml").read_text())


def _columns(store: Any, table: str) -> dict[str, str]:
    rows = store.session.execute(
        "SELECT column_name, type FROM system_schema.columns "
        "WHERE keyspace_name = %s AND table_name = %s",
        (store.ks, table),
    )
    return {r.column_name: r.type for r in rows}


def test_the_real_time_table_follows_a_changed_definition(
    stack: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = isolated(stack, tmp_path)
    try:
        with open_store(settings.cassandra, parse_views(DOC)) as store:
            view = parse_views(DOC).view("web_pageviews")
            assert "errors" not in _columns(store, realtime_table(view))

        more = copy.deepcopy(DOC)
        more["views"]["web_pageviews"]["aggregations"]["errors"] = {"fn": "count"}
        more["views"]["web_pageviews"]["aggregations"]["slowest"] = {
            "fn": "max",
            "field": "load_ms",
        }
        with open_store(settings.cassandra, parse_views(more)) as store:
            cols = _columns(store, realtime_table(view))
            assert (cols["errors"], cols["slowest"]) == ("bigint", "double")

        rekeyed = copy.deepcopy(more)
        rekeyed["views"]["web_pageviews"]["keys"] = ["visitor"]
        with (
            pytest.raises(ConfigError, match="cannot change a table's key") as err,
            open_store(settings.cassandra, parse_views(rekeyed)),
        ):
            pass
        assert "DROP TABLE" in (err.value.hint or "")

        # A table of an older Lamina: a sum of longs as bigint keeps working (a warning), and
        # the micro-batch column is added.
        metering = parse_views(DOC).view("cloud_metering")
        with open_store(settings.cassandra) as store:
            table = realtime_table(metering)
            store.session.execute(f"DROP TABLE {store.ks}.{table}")
            store.session.execute(
                f"CREATE TABLE {store.ks}.{table} (customer text, bucket bigint, "
                "ingest_epoch bigint, instance_seconds bigint, records bigint, "
                "PRIMARY KEY ((customer), bucket, ingest_epoch))"
            )
        with (
            caplog.at_level(logging.WARNING, logger="serving.store"),
            open_store(settings.cassandra, parse_views(DOC)),
        ):
            pass
        assert any("instance_seconds is bigint" in r.getMessage() for r in caplog.records)
        with open_store(settings.cassandra) as store:  # a table from before applied_batch
            assert _columns(store, table)["applied_batch"] == "bigint"
    finally:
        drop_keyspace(settings)
