"""Integration fixtures: a private, populated world (master dataset + published batch)."""

from __future__ import annotations

from typing import Any

import pytest

from batch.master import import_files
from batch.run import run_batch
from lamina.settings import Settings
from lamina.views import load_views
from tests import truth
from tests.conftest import ROOT, isolated

GENERATORS = {
    "web_pageviews": ("pageviews", truth.pageviews),
    "iot_temperature": ("sensors", truth.sensors),
    "cloud_metering": ("metering", truth.metering),
}


@pytest.fixture(scope="session")
def world(stack: Settings, tmp_path_factory: pytest.TempPathFactory, spark: Any) -> dict[str, Any]:
    """Generated data imported into a private master dataset, and one batch run published."""
    tmp = tmp_path_factory.mktemp("world")
    settings = isolated(stack, tmp)
    catalog = load_views(ROOT / "conf" / "views.toml")
    data = {}
    for view, (source, gen) in GENERATORS.items():
        g = gen(3000)
        path = tmp / f"{source}.jsonl"
        path.write_bytes(b"\n".join(g.raw) + b"\n")
        report = import_files(settings, catalog.sources[source], [path])
        assert report.accepted == len(g.raw) - len(g.bad)
        assert report.rejected == len(g.bad)
        data[view] = g
    results = run_batch(spark, settings, catalog)
    return {"settings": settings, "catalog": catalog, "data": data, "results": results}
