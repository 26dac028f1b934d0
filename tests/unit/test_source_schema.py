"""A source's master dataset is written under one definition (issue #12, hole 6): a change
to its fields, types or event-time rule is refused by every writer and by the batch until
the user accepts that stored events keep their old parse. Files only: no services."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from batch.imports import import_files
from lamina.errors import ConfigError
from lamina.master import SCHEMA_FILE, accept_schema, check_schema, source_dir
from lamina.settings import Settings, load_settings
from lamina.views import Source, load_views

ROOT = Path(__file__).resolve().parents[2]
PV = load_views(ROOT / "conf" / "views.toml").sources["pageviews"]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = load_settings(ROOT / "conf" / "lamina.toml")
    return s.model_copy(
        update={"pipeline": s.pipeline.model_copy(update={"master_dir": tmp_path / "master"})}
    )


def changed(source: Source, **update: object) -> Source:
    return Source(**(source.model_dump() | update))


def test_the_first_writer_records_the_definition_and_the_same_one_passes(
    settings: Settings, tmp_path: Path
) -> None:
    check_schema(settings, PV)
    record = json.loads((source_dir(settings, PV) / SCHEMA_FILE).read_text())
    assert record["hash"] == PV.schema_hash and record["schema"]["fields"]
    check_schema(settings, PV)  # same definition: fine
    # The topic is where events come from, not how they parse.
    check_schema(settings, changed(PV, topic="elsewhere"))


@pytest.mark.parametrize(
    ("update", "named"),
    [
        ({"fields": {**PV.fields, "referrer": "string"}}, "field referrer"),
        ({"fields": {**PV.fields, "status": "string"}}, "type of status"),
        ({"event_id": "url"}, "event id"),
    ],
)
def test_a_changed_definition_is_refused_everywhere_until_accepted(
    settings: Settings, tmp_path: Path, update: dict[str, object], named: str
) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text('{"event_id":"a","ts":"2026-11-27T10:00:00Z","url":"/"}\n')
    import_files(settings, PV, [path])
    new = changed(PV, **update)
    with pytest.raises(ConfigError, match=named) as refused:
        check_schema(settings, new)
    assert "accept-schema pageviews" in (refused.value.hint or "")
    with pytest.raises(ConfigError, match=named):
        import_files(settings, new, [path])
    record = accept_schema(settings, new)
    assert record["history"] == [PV.schema_hash]
    check_schema(settings, new)
    import_files(settings, new, [path])
    # Going back is a change too.
    with pytest.raises(ConfigError):
        check_schema(settings, PV)
