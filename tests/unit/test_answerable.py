"""When a view may be answered (issue #12, hole 6): batch version and real-time table must both
be of the current definition, and the batch must reach a rebuilt table's first epoch; anything
else is an explicit 503 naming the step that ends it, never a merge of two definitions."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path

import pytest

from lamina.errors import ViewNotReadyError
from lamina.views import View, parse_views
from serving.store import Published, RealtimeTable, check_answerable

ROOT = Path(__file__).resolve().parents[2]
DOC = tomllib.loads((ROOT / "conf" / "views.toml").read_text())
VIEW = parse_views(DOC).view("cloud_metering")
OLD = copy.deepcopy(DOC)
OLD["views"]["cloud_metering"]["bucket"] = "day"
OLD_HASH = parse_views(OLD).view("cloud_metering").definition_hash


def pub(definition_hash: str = VIEW.definition_hash, cutoff: int = 3600) -> Published:
    return Published("cloud_metering", 4, cutoff, 10, 0.0, definition_hash)


def rec(
    state: str = "ready",
    definition_hash: str = VIEW.definition_hash,
    covers_from: int | None = None,
) -> RealtimeTable:
    return RealtimeTable("cloud_metering", definition_hash, state, covers_from, 3, 0.0)


@pytest.mark.parametrize(
    ("published", "table", "read"),
    [
        (pub(), rec(), True),
        (None, rec(), True),  # nothing published yet: real-time rows alone
        (pub(definition_hash=""), rec(), True),  # a version of a Lamina before the hashes
        (pub(VIEW.legacy_definition_hash), rec(), True),  # ... that hashed the topic too
        (pub(cutoff=7200), rec(covers_from=7200), True),  # the batch reaches the rebuild
        (pub(), rec("empty"), True),  # created by serving, no job wrote it
        (pub(), rec("empty", OLD_HASH), False),  # ... under another definition: no rows
    ],
)
def test_answerable(published: Published | None, table: RealtimeTable, read: bool) -> None:
    assert check_answerable(VIEW, published, table) is read


@pytest.mark.parametrize(
    ("published", "table", "message", "hint"),
    [
        (pub(OLD_HASH), rec(), "batch version 4 was built under another", "batch run --view"),
        (pub(), None, "made for another definition", "restart the source job"),
        (pub(), rec("rebuilding"), "being rebuilt", "try again"),
        (pub(), rec(definition_hash=OLD_HASH), "holds another definition", "restart"),
        (pub(cutoff=3600), rec(covers_from=7200), "holds the epochs from 7200", "batch run"),
        (None, rec(covers_from=7200), "no version is published", "batch run"),
    ],
)
def test_not_answerable(
    published: Published | None, table: RealtimeTable | None, message: str, hint: str
) -> None:
    view: View = VIEW
    with pytest.raises(ViewNotReadyError, match=message) as err:
        check_answerable(view, published, table)
    assert err.value.http_status == 503
    assert hint in (err.value.hint or "")


def test_a_view_newer_than_its_running_source_job_is_not_answered() -> None:
    """The job that runs keeps other views (it started before this one was defined): the
    events it reads reach no table of this view, so the batch alone would undercount."""
    with pytest.raises(ViewNotReadyError, match="started before this view") as err:
        check_answerable(VIEW, pub(), rec("empty"), job_views=["web_pageviews"])
    assert "restart the source job" in (err.value.hint or "")
    # The job keeps it (its table is then rebuilt, not empty), or nothing is recorded.
    assert check_answerable(VIEW, pub(), rec("empty"), job_views=["cloud_metering"]) is True
    assert check_answerable(VIEW, pub(), rec("empty"), job_views=None) is True
