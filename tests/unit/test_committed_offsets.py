"""A query's committed offsets come from its checkpoint: the offset log of the newest
micro-batch with a commit file (Spark's layout: ``offsets/<N>``, ``commits/<N>``)."""

from __future__ import annotations

import json
from pathlib import Path

from lamina.settings import Settings
from lamina.streams import checkpoint_path, committed_offsets, planned_offsets


def _offsets_file(root: Path, batch_id: int, offsets: dict[str, int]) -> None:
    (root / "offsets").mkdir(parents=True, exist_ok=True)
    meta = {"batchWatermarkMs": 0, "batchTimestampMs": 1, "conf": {}}
    text = f"v1\n{json.dumps(meta)}\n{json.dumps({'topic-a': offsets})}"
    (root / "offsets" / str(batch_id)).write_text(text)


def test_committed_offsets_are_those_of_the_newest_committed_micro_batch(
    settings: Settings, tmp_path: Path
) -> None:
    s = settings.model_copy(
        update={"spark": settings.spark.model_copy(update={"checkpoint_dir": tmp_path})}
    )
    root = checkpoint_path(s, "source-a")
    assert committed_offsets(s, "source-a") is None  # no checkpoint yet
    _offsets_file(root, 0, {"0": 10, "1": 12})
    _offsets_file(root, 1, {"0": 20, "1": 25})  # planned, not committed (a crash)
    (root / "commits").mkdir()
    assert committed_offsets(s, "source-a") is None
    (root / "commits" / "0").write_text("v1\n{}")
    (root / "commits" / ".0.crc").write_text("")
    assert committed_offsets(s, "source-a") == {0: 10, 1: 12}
    assert planned_offsets(s, "source-a", 1) == {0: 20, 1: 25}
    assert planned_offsets(s, "source-a", 2) is None
    (root / "commits" / "1").write_text("v1\n{}")
    assert committed_offsets(s, "source-a") == {0: 20, 1: 25}
