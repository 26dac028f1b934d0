"""How a source job counts records Kafka deleted before it read them (``_lost``): from the
checkpoint's offset log (Spark's layout) and the partitions' earliest offsets. The Kafka
side (``_earliest``) is the real broker in tests/integration/test_streaming.py; here it is
given, to cover the offset arithmetic case by case."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from lamina.errors import DataLossError
from lamina.settings import Settings
from lamina.views import load_views
from speed.microbatch import SourceBatches
from tests.conftest import ROOT

SOURCE = load_views(ROOT / "conf" / "views.toml").sources["pageviews"]
QUERY = "source-pageviews"


class Judged(SourceBatches):
    """The job with the partitions' earliest offsets given, and the calls to Kafka kept."""

    earliest: dict[int, int]
    asked: list[list[int]]

    def _earliest(self, partitions: list[int]) -> dict[int, int]:
        self.asked.append(sorted(partitions))
        return {p: self.earliest.get(p, 0) for p in partitions}


def _job(settings: Settings, tmp: Path, fail: bool = True) -> Judged:
    s = settings.model_copy(
        update={
            "spark": settings.spark.model_copy(update={"checkpoint_dir": tmp}),
            "pipeline": settings.pipeline.model_copy(update={"fail_on_data_loss": fail}),
        }
    )
    job = Judged(None, s, SOURCE, [], QUERY)  # type: ignore[arg-type]
    job.earliest, job.asked = {}, []
    return job


def _offsets(tmp: Path, batch_id: int, offsets: dict[int, int]) -> None:
    """Micro-batch ``batch_id``'s planned offsets in the offset log under checkpoint dir
    ``tmp``, as Spark writes them."""
    d = tmp / QUERY / "offsets"
    d.mkdir(parents=True, exist_ok=True)
    body = json.dumps({SOURCE.topic: {str(p): o for p, o in offsets.items()}})
    (d / str(batch_id)).write_text(f"v1\n{{}}\n{body}")


def _read(pairs: list[tuple[int, int]]) -> pa.Table:
    return pa.table(
        {"partition": [p for p, _ in pairs], "offset": [o for _, o in pairs]},
        schema=pa.schema([("partition", pa.int32()), ("offset", pa.int64())]),
    )


def test_nothing_lost_asks_kafka_nothing(settings: Settings, tmp_path: Path) -> None:
    job = _job(settings, tmp_path)
    _offsets(tmp_path, 4, {0: 100, 1: 50})
    _offsets(tmp_path, 5, {0: 103, 1: 52})
    assert job._lost(5, _read([(0, 100), (0, 101), (0, 102), (1, 50), (1, 51)])) == 0
    assert job.asked == []


def test_a_deleted_prefix_and_a_gap_inside_a_range_are_lost(
    settings: Settings, tmp_path: Path
) -> None:
    _offsets(tmp_path, 4, {0: 100, 1: 50})
    _offsets(tmp_path, 5, {0: 200, 1: 60})
    # Partition 0: 100..109 read, then retention moved to 150 while the range was read.
    read = [(0, o) for o in (*range(100, 110), *range(150, 200))]
    read += [(1, o) for o in range(55, 60)]  # partition 1: 50..54 deleted before the read
    job = _job(settings, tmp_path)
    job.earliest = {0: 150, 1: 55}
    with pytest.raises(
        DataLossError, match=r"deleted 45 record\(s\).*partition 0 offsets 100..149"
    ):
        job._lost(5, _read(read))
    going_on = _job(settings, tmp_path, fail=False)
    going_on.earliest = {0: 150, 1: 55}
    assert going_on._lost(5, _read(read)) == 40 + 5


def test_a_partition_added_while_the_job_was_down_is_checked_from_offset_0(
    settings: Settings, tmp_path: Path
) -> None:
    _offsets(tmp_path, 7, {0: 10})
    _offsets(tmp_path, 8, {0: 12, 1: 30})
    job = _job(settings, tmp_path, fail=False)
    job.earliest = {1: 20}  # partition 1's records 0..19 were deleted before it was read
    assert job._lost(8, _read([(0, 10), (0, 11), *((1, o) for o in range(20, 30))])) == 20
    assert job.asked == [[1]]


def test_the_first_micro_batch_and_a_missing_offset_log_are_not_judged(
    settings: Settings, tmp_path: Path
) -> None:
    job = _job(settings, tmp_path)
    assert job._lost(0, _read([])) == 0
    assert job._lost(3, _read([])) == 0  # no offset log: a warning, not a verdict
    assert job.asked == []
