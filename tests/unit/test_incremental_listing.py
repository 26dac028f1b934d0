"""What makes an incremental build fall back to a full one on the master dataset's side: the
listing of the files below a cutoff (``batch.incremental.listing``) changes with every file
added, replaced or removed there, and with nothing at or after the cutoff. Files only."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pytest

from batch.incremental import listing
from lamina.master import archive_dir, arrow_schema, write_epoch
from lamina.settings import Settings, load_settings
from lamina.views import load_views

ROOT = Path(__file__).resolve().parents[2]
SOURCE = load_views(ROOT / "conf" / "views.toml").sources["metering"]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = load_settings(ROOT / "conf" / "lamina.toml")
    return s.model_copy(
        update={"pipeline": s.pipeline.model_copy(update={"master_dir": tmp_path / "master"})}
    )


def table(n: int) -> pa.Table:
    rows = {
        "usage_id": [f"u{i}" for i in range(n)],
        "ts": [1.0e9 + i for i in range(n)],
        "customer": ["c"] * n,
        "instance_type": ["m5"] * n,
        "instance_seconds": [60] * n,
        "_event_time": [1.0e9 + i for i in range(n)],
        "topic": [None] * n,
        "partition": [None] * n,
        "offset": [None] * n,
    }
    return pa.table(rows, schema=arrow_schema(SOURCE))


def test_listing_sees_every_change_below_the_cutoff_only(settings: Settings) -> None:
    write_epoch(settings, SOURCE, 100, table(3), "a")
    archived = archive_dir(settings, SOURCE) / "ingest_epoch=110" / "b000000000001-00000.parquet"
    archived.parent.mkdir(parents=True)
    archived.write_bytes(b"PAR1 data PAR1")
    base = listing(settings, SOURCE, 120)
    assert base.files == 3  # the import's file and manifest, the archive file
    assert listing(settings, SOURCE, 120) == base

    # At or after the cutoff: new epochs, never a change of what the base read.
    write_epoch(settings, SOURCE, 120, table(2), "later")
    assert listing(settings, SOURCE, 120) == base

    # Below it: an import (only tests and benchmarks choose the epoch), ...
    late = write_epoch(settings, SOURCE, 100, table(1), "late")
    changed = listing(settings, SOURCE, 120)
    assert changed != base and changed.files == base.files + 2
    # ... a file removed, ...
    late.unlink()
    assert listing(settings, SOURCE, 120) not in (base, changed)
    for f in late.parent.iterdir():
        f.unlink()
    late.parent.rmdir()
    assert listing(settings, SOURCE, 120) == base
    # ... a file replaced in place (a replayed micro-batch's rename over it), ...
    st = archived.stat()
    archived.write_bytes(b"PAR1 atad PAR1")
    os.utime(archived, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    replaced = listing(settings, SOURCE, 120)
    assert replaced != base and replaced.files == base.files
    # ... a record archived into an epoch already complete.
    (archived.parent / "b000000000002-00000.parquet").write_bytes(b"PAR1 PAR1")
    assert listing(settings, SOURCE, 120) not in (base, replaced)
