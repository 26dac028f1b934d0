"""Reconciliation, the self-check and the verdict, sketch agreement, staleness arithmetic."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from batch.freshness import freshness
from batch.reconcile import (
    Reconciliation,
    SelfCheck,
    Verdict,
    judge,
    realtime_overlap,
    reconcile,
    self_check,
    stored_verdict,
)
from lamina.master import (
    EpochFiles,
    archive_dir,
    arrow_schema,
    footer_rows,
    imports_dir,
    write_epoch,
)
from lamina.monoids import Distinct, Mean, Quantiles, Sum
from lamina.settings import load_settings
from lamina.views import View, load_views
from serving.merge import encode, plus, zero
from serving.store import Published

ROOT = Path(__file__).resolve().parents[2]
CATALOG = load_views(ROOT / "conf" / "views.toml")
METERING = CATALOG.view("cloud_metering")  # sum(long) + count: exact
SENSORS = CATALOG.view("iot_temperature")  # min, max, mean, KLL quantiles
PAGEVIEWS = CATALOG.view("web_pageviews")  # count, HLL distinct, mean


def fold(view: View, events: list[dict[str, Any]]) -> dict[str, Any]:
    """States of ``events`` (field values by aggregation field) folded with ``lift``/``plus``."""
    s = zero(view)
    for ev in events:
        lifted = {
            n: m.lift(ev.get(view.aggregations[n].field or "")) for n, m in view.monoids.items()
        }
        s = plus(view, s, lifted)
    return s


Event = tuple[str, int, int, int | None]  # customer, bucket, epoch, instance_seconds

events_st = st.lists(
    st.tuples(
        st.sampled_from(["c0", "c1", "c2"]),
        st.sampled_from([0, 3600, 7200]),
        st.sampled_from([100, 110, 120]),
        st.one_of(st.none(), st.integers(0, 10_000)),
    ),
    max_size=60,
)


def sides(
    view: View, events: list[Event]
) -> tuple[list[tuple[tuple[str], int, tuple[Any, ...]]], list[Any]]:
    """Batch cells (one pass per cell) and real-time rows (one per cell and epoch)."""
    cells: dict[tuple[str, int], list[dict[str, Any]]] = {}
    epochs: dict[tuple[str, int, int], list[dict[str, Any]]] = {}
    for key, bucket, epoch, secs in events:
        ev = {"instance_seconds": secs}
        cells.setdefault((key, bucket), []).append(ev)
        epochs.setdefault((key, bucket, epoch), []).append(ev)
    batch = [((k,), b, encode(view, fold(view, evs))) for (k, b), evs in cells.items()]
    rt = [((k,), b, e, encode(view, fold(view, evs))) for (k, b, e), evs in epochs.items()]
    return batch, rt


@given(events_st)
def test_agreeing_layers_reconcile_equal(events: list[Event]) -> None:
    batch, rt = sides(METERING, events)
    overlap = realtime_overlap(METERING, rt)
    report = reconcile(METERING, 7, 130, overlap, batch)
    assert (report.cells, report.equal, report.diverging) == (len(batch), len(batch), 0)
    assert report.realtime_rows == len(rt)
    assert report.epoch_from == (min(e for _, _, e, _ in events) if events else None)
    assert report.samples == []


def test_each_kind_of_divergence_is_counted_and_sampled() -> None:
    events: list[Event] = [
        ("c0", 0, 100, 60),
        ("c0", 0, 110, 300),
        ("c1", 0, 100, 60),
        ("c1", 3600, 100, None),
        ("c2", 0, 120, 3600),
    ]
    batch, rt = sides(METERING, events)
    rt = [r for r in rt if r[0] != ("c2",)]  # c2: only the batch has it
    rt = [(k, b, e, (v[0] + 1, v[1]) if k == ("c0",) and e == 110 else v) for k, b, e, v in rt]
    rt.append((("c9",), 0, 100, (5, 1)))  # only real time has it
    report = reconcile(METERING, 7, 130, realtime_overlap(METERING, rt), batch)
    assert (report.cells, report.equal, report.differing) == (5, 2, 1)
    assert (report.missing_realtime, report.missing_batch, report.diverging) == (1, 1, 3)
    assert report.divergence == pytest.approx(3 / 5)
    assert report.samples == [
        {
            "kind": "differing",
            "key": ["c0"],
            "bucket": 0,
            "aggregations": ["instance_seconds"],
            "batch": {"instance_seconds": 360, "records": 2},
            "realtime": {"instance_seconds": 361, "records": 2},
        },
        {
            "kind": "missing_realtime",
            "key": ["c2"],
            "bucket": 0,
            "aggregations": ["instance_seconds", "records"],
            "batch": {"instance_seconds": 3600, "records": 1},
            "realtime": None,
        },
        {
            "kind": "missing_batch",
            "key": ["c9"],
            "bucket": 0,
            "aggregations": ["instance_seconds", "records"],
            "batch": None,
            "realtime": {"instance_seconds": 5, "records": 1},
        },
    ]
    again = Reconciliation.from_dict(report.to_dict())
    assert again == report
    assert (
        reconcile(METERING, 7, 130, realtime_overlap(METERING, rt), batch, 1).samples
        == (report.samples[:1])
    )


def test_nothing_to_compare_is_an_empty_report() -> None:
    report = reconcile(METERING, 1, 50, realtime_overlap(METERING, []), [])
    assert (report.epoch_from, report.cells, report.divergence) == (None, 0, 0.0)


def test_float_sums_agree_within_rounding_not_beyond() -> None:
    m = Sum("double")
    forward, backward = (0.1 + 0.2) + 0.3, 0.1 + (0.2 + 0.3)  # another order of addition
    assert forward != backward and m.agrees(forward, backward)
    assert not m.agrees(4e8, 4e8 + 10.0)  # 2.5e-8 relative: a real difference, not rounding
    assert Mean("double").agrees((forward, 3), (backward, 3))
    assert not Mean("double").agrees((forward, 3), (forward, 2))
    assert m.agrees(None, None) and not m.agrees(None, 0.0)


def test_sketches_of_the_same_values_agree_whichever_way_built() -> None:
    rng = random.Random(11)
    for view, name, values in (
        (PAGEVIEWS, "visitors", [f"v{rng.randrange(5000)}" for _ in range(4000)]),
        (SENSORS, "temp_q", [rng.gauss(20, 6) for _ in range(4000)]),
    ):
        m = view.monoids[name]
        whole = m.total(m.lift(v) for v in values)
        halves = m.plus(
            m.total(m.lift(v) for v in values[::2]), m.total(m.lift(v) for v in values[1::2])
        )
        assert m.agrees(whole, halves), name
        fewer = m.total(m.lift(v) for v in values[: len(values) * 9 // 10])
        assert not m.agrees(whole, fewer), name
        assert m.agrees(None, None) and not m.agrees(whole, None)


def test_small_distinct_sets_must_match_exactly() -> None:
    m = Distinct("string")
    three = m.total(m.lift(v) for v in ("a", "b", "c"))
    assert m.agrees(three, m.plus(m.lift("a"), m.total(m.lift(v) for v in ("b", "c"))))
    assert not m.agrees(three, m.total(m.lift(v) for v in ("a", "b")))


def test_quantile_sketches_with_other_extremes_disagree() -> None:
    m = Quantiles("double")
    base = [float(i) for i in range(100)]
    assert not m.agrees(
        m.total(m.lift(v) for v in base), m.total(m.lift(v) for v in [*base[1:], 0.5])
    )


def report_with(diverging: int, cells: int) -> Reconciliation:
    return Reconciliation(
        "v", 3, 100, 50, cells=cells, equal=cells - diverging, differing=diverging
    )


def passed(events: int = 10) -> SelfCheck:
    return self_check({50: EpochFiles(1, events)}, {50: (events, events)}, events, event_id="id")


def test_speed_layer_divergence_is_published_and_alerted_not_blocked() -> None:
    # The case: the speed layer counted late re-sends twice, 19.6% of cells diverge.
    assert judge(report_with(196, 1000), passed(), 0.1).diverged == "speed_layer"
    verdict = judge(report_with(196, 1000), passed(), 0.1)
    assert verdict.publishable and verdict.problems == []
    (warning,) = verdict.warnings
    assert warning.startswith("the speed layer diverged: 196 of 1000 (key, bucket) cells")
    assert "19.6%) > max_divergence 10.0%" in warning
    assert "lamina batch report v --version 3" in warning
    assert judge(report_with(1, 10), passed(), 0.1) == Verdict("none", [], [])
    assert judge(report_with(10, 10), passed(), 1.0) == Verdict("none", [], [])
    assert judge(report_with(0, 0), passed(), 0.0) == Verdict("none", [], [])


def test_a_batch_failing_its_self_check_is_refused_whatever_the_divergence() -> None:
    broken = self_check({50: EpochFiles(2, 20)}, {50: (10, 10)}, 10, event_id="id")
    for diverging in (0, 5):
        verdict = judge(report_with(diverging, 10), broken, 1.0)
        assert (verdict.diverged, verdict.publishable, verdict.warnings) == ("batch", False, [])
        assert verdict.problems[0].startswith(
            "the batch disagrees with its master dataset: epoch 50: the master dataset's 2 "
            "file(s) hold 20 rows by their footers, the build read 10"
        )
    assert len(verdict.problems) == 2 and "not held against the speed layer" in verdict.problems[1]
    # A version built before the self-check existed: nothing vouches for it.
    (old,) = judge(report_with(0, 10), None, 1.0).problems
    assert "no self-check against the master dataset" in old
    assert stored_verdict(None, 0.1).diverged == "batch"
    stored = report_with(5, 10).to_dict() | {"self_check": broken.to_dict()}
    assert stored_verdict(stored, 0.1) == judge(report_with(5, 10), broken, 0.1)
    assert Reconciliation.from_dict(stored) == report_with(5, 10)
    assert SelfCheck.from_dict(broken.to_dict()) == broken


def test_self_check_compares_footers_with_the_read_epoch_by_epoch() -> None:
    footers = {10: EpochFiles(2, 7), 20: EpochFiles(1, 5), 30: EpochFiles(1, 0, ("f: bad",))}
    ok = self_check(
        {10: EpochFiles(2, 7), 20: EpochFiles(1, 5)}, {10: (7, 7), 20: (5, 5)}, 11, event_id="id"
    )
    assert ok.ok and ok.problems == [] and (ok.footer_rows, ok.read_rows, ok.events) == (12, 12, 11)
    assert ok.duplicates == 1
    assert ok.to_dict()["epochs"][0] == {
        "epoch": 10,
        "files": 2,
        "footer_rows": 7,
        "read_rows": 7,
        "without_id": 0,
        "unreadable": [],
    }
    # Epoch 10 gained a file after the read; 20 lost its file; 30 has an unreadable file;
    # 40 was read with rows lacking an id.
    bad = self_check(footers, {10: (4, 4), 20: (5, 5), 40: (3, 1)}, 2, event_id="id")
    assert not bad.ok
    assert bad.problems == [
        "epoch 10: the master dataset's 2 file(s) hold 7 rows by their footers, the build read"
        " 4 (files changed under the build, or Spark skipped some:"
        " spark.sql.files.ignoreCorruptFiles / ignoreMissingFiles)",
        "epoch 30: 1 file(s) whose footer cannot be read: f: bad",
        "epoch 40: the master dataset's 0 file(s) hold 0 rows by their footers, the build read"
        " 3 (files changed under the build, or Spark skipped some:"
        " spark.sql.files.ignoreCorruptFiles / ignoreMissingFiles)",
        "epoch 40: 2 row(s) without an event id ('id'): the dedup would merge them into one event",
    ]
    # A file Spark skipped while reading other columns than the id: the dedup got fewer rows.
    (short,) = self_check(
        {1: EpochFiles(2, 6)}, {1: (6, 6)}, 3, event_id="id", deduped_rows=3
    ).problems
    assert short == (
        "the dedup consumed 3 rows, 6 were read (Spark skipped part of a file while reading "
        "columns other than the event id)"
    )
    # Totals: more events than rows is impossible; no event out of rows is a broken dedup.
    assert self_check({}, {}, 0, event_id="id").ok
    assert self_check({}, {}, 5, event_id="id", legacy_rows=5).ok
    (more,) = self_check({}, {}, 6, event_id="id", legacy_rows=5).problems
    assert more == "6 events after the dedup from 5 rows read"
    (none,) = self_check({1: EpochFiles(1, 3)}, {1: (3, 3)}, 0, event_id="id").problems
    assert none == "no event left after the dedup of 3 rows read"


def test_footer_rows_reads_what_spark_reads(tmp_path: Path) -> None:
    s = load_settings(ROOT / "conf" / "lamina.toml")
    s = s.model_copy(
        update={"pipeline": s.pipeline.model_copy(update={"master_dir": tmp_path / "m"})}
    )
    src = METERING.source
    table = pa.table({"usage_id": ["a", "b", "c"]})
    for root, epoch, name in (
        (archive_dir(s, src), 100, "b000000000001-00000.parquet"),
        (imports_dir(s, src), 100, "import-x.parquet"),
        (imports_dir(s, src), 200, "import-y.parquet"),
        (imports_dir(s, src), 300, "import-z.parquet"),  # at the cutoff: not read
    ):
        (root / f"ingest_epoch={epoch}").mkdir(parents=True, exist_ok=True)
        pq.write_table(table, root / f"ingest_epoch={epoch}" / name)
    d = imports_dir(s, src) / "ingest_epoch=200"
    pq.write_table(table, d / ".being-written.parquet.tmp")  # hidden: Spark skips it too
    pq.write_table(table, d / "_SUCCESS")
    (d / "cut-short.parquet").write_bytes((d / "import-y.parquet").read_bytes()[:-20])
    got = footer_rows(s, src, 300)
    assert list(got) == [100, 200]
    assert got[100] == EpochFiles(2, 6)
    assert (got[200].files, got[200].rows) == (2, 3)
    (bad,) = got[200].unreadable
    assert bad.startswith(f"{d / 'cut-short.parquet'}: ")


def test_footer_rows_lists_committed_imports_and_flags_a_lost_manifest(tmp_path: Path) -> None:
    """Imports with a manifest count with their files (in the writer's directory); an import
    directory whose manifest is unreadable is a problem of its epoch, not silently absent
    from both the read and the footers."""
    s = load_settings(ROOT / "conf" / "lamina.toml")
    s = s.model_copy(
        update={"pipeline": s.pipeline.model_copy(update={"master_dir": tmp_path / "m"})}
    )
    src = METERING.source
    table = pa.Table.from_pylist(
        [{"usage_id": u, "_event_time": 0} for u in "abc"], schema=arrow_schema(src)
    )
    write_epoch(s, src, 100, table, "import-a")
    lost = write_epoch(s, src, 200, table, "import-b").parent
    got = footer_rows(s, src, 300)
    assert got == {100: EpochFiles(1, 3), 200: EpochFiles(1, 3)}
    (lost / "_manifest.json").unlink()
    got = footer_rows(s, src, 300)
    assert (got[200].files, got[200].rows) == (0, 0)
    (problem,) = got[200].unreadable
    assert problem.startswith(f"{lost}: no readable")


def published(cutoff: int) -> Published:
    return Published("cloud_metering", 4, cutoff, 10, 0.0, "h")


def test_staleness_arithmetic() -> None:
    view = METERING  # max_staleness_s: the default 3 h
    now = 1_800_000_000.0
    fresh = freshness(view, published(int(now) - 3 * 3600), now)
    assert (fresh.age_s, fresh.limit_s, fresh.stale) == (3 * 3600, 3 * 3600, False)
    stale = freshness(view, published(int(now) - 3 * 3600 - 1), now)
    assert stale.stale
    assert stale.describe() == (
        "view 'cloud_metering' version 4: published cutoff 1799989199 is 10801s old (limit 10800s)"
    )
    ahead = freshness(view, published(int(now) + 10), now)  # an import's cutoff runs ahead
    assert not ahead.stale and ahead.age_s == -10
    empty = freshness(view, None, now)  # a fresh install: no data, nothing to publish
    assert not empty.stale and empty.age_s is None and empty.version is None
    assert empty.describe() == (
        "view 'cloud_metering' has no published batch version yet, and its source has no "
        "data in the master dataset: nothing to publish"
    )
    new = freshness(view, None, now, first_epoch=int(now) - 3 * 3600)  # before a batch ran
    assert not new.stale and new.waiting_s == 3 * 3600
    never = freshness(view, None, now, first_epoch=int(now) - 3 * 3600 - 1)
    assert never.stale and never.age_s is None and never.version is None
    assert never.describe() == (
        "view 'cloud_metering' has no published batch version; its source's master dataset "
        "has held data for 10801s (limit 10800s)"
    )
    assert not freshness(view, published(int(now)), now, first_epoch=0).stale
    strict = view.model_copy(update={"max_staleness_s": 60})
    assert freshness(strict, published(int(now) - 61), now).stale
