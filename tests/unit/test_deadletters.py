"""Reading dead letters: Lamina's own records decode; anything else in the topic is shown,
not hidden and not a crash."""

from __future__ import annotations

import base64
import json
from typing import NamedTuple

from speed.deadletters import _letter, summarize


class Record(NamedTuple):
    topic: str
    partition: int
    offset: int
    value: bytes


def test_a_lamina_dead_letter_decodes() -> None:
    body = {
        "reason": "invalid JSON",
        "raw_base64": base64.b64encode(b"{oops").decode(),
        "topic": "pageviews",
        "partition": 1,
        "offset": 42,
        "timestamp": "2026-11-27T10:00:00.000Z",
    }
    d = _letter(Record("pageviews.deadletters", 0, 7, json.dumps(body).encode()))
    assert d["raw"] == "{oops" and (d["topic"], d["partition"], d["offset"]) == ("pageviews", 1, 42)
    assert "raw_base64" not in d
    assert (d["raw_size"], d["raw_truncated"]) == (5, False)  # a letter without raw_size


def test_a_cut_record_says_its_whole_size() -> None:
    body = {
        "reason": "not valid JSON",
        "raw_base64": base64.b64encode(b"[[[").decode(),
        "raw_size": 900_000,
        "topic": "pageviews",
        "partition": 0,
        "offset": 1,
        "timestamp": "2026-11-27T10:00:00.000Z",
    }
    d = _letter(Record("pageviews.deadletters", 0, 7, json.dumps(body).encode()))
    assert (d["raw"], d["raw_size"], d["raw_truncated"]) == ("[[[", 900_000, True)


def test_foreign_records_are_kept_with_their_own_origin() -> None:
    for value in (b'{"n": 1}', b"not json", b"[1, 2]", b'{"raw_base64": "!!"}'):
        d = _letter(Record("pageviews.deadletters", 1, 9, value))
        assert d["reason"].startswith("not a Lamina dead letter")
        assert (d["topic"], d["partition"], d["offset"]) == ("pageviews.deadletters", 1, 9)
        assert d["raw"] == value.decode()


def letter(reason: str, offset: int) -> dict[str, object]:
    return {"reason": reason, "topic": "pageviews", "partition": 0, "offset": offset}


def test_summarize_counts_kinds_and_shows_the_newest_distinct_reasons() -> None:
    """``lamina deadletters`` and ``GET /deadletters`` both group this way: by kind (the
    reason without its value), most frequent first, with up to two newest distinct reasons
    that say more than the kind."""
    bad = "field 'load_ms' should be double, got str"
    letters = [
        letter(f"{bad} 'a'", 1),
        letter("not valid JSON", 2),
        letter(f"{bad} 'b'", 3),
        letter(f"{bad} 'b'", 4),
        letter(f"{bad} 'c'", 5),
    ]
    [values, json_] = summarize(letters)
    assert (values["kind"], values["count"]) == (bad, 4)
    assert [(d["reason"], d["offset"]) for d in values["examples"]] == [
        (f"{bad} 'c'", 5),
        (f"{bad} 'b'", 4),
    ]
    assert json_ == {"kind": "not valid JSON", "count": 1, "examples": []}
    assert summarize([]) == []
