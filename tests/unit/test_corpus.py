"""The fuzz corpus (bench/corpus.py): every record it draws is rejected by the validator, the
same seed draws the same records, and the dead-letter match counts what it should."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

from lamina.events import Rejection, parse_event
from lamina.views import load_views

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import corpus  # noqa: E402

CAT = load_views(ROOT / "conf" / "views.toml")


@pytest.mark.parametrize("source", list(CAT.sources.values()), ids=list(CAT.sources))
@pytest.mark.parametrize("kind", list(corpus.KINDS))
def test_every_kind_is_rejected_with_a_reason(source: object, kind: str) -> None:
    rng = random.Random(kind)
    for _ in range(40 if kind != "huge_record" else 4):
        got_kind, raw = corpus.malformed(source, rng, kind=kind)  # type: ignore[arg-type]
        assert got_kind == kind and len(raw) <= corpus.MAX_RECORD_BYTES
        r = parse_event(raw, source)  # type: ignore[arg-type]
        assert isinstance(r, Rejection), (kind, raw[:200])
        assert r.reason and "could not be parsed" not in r.reason, (kind, r.reason)


def test_the_corpus_is_seeded_and_has_every_kind() -> None:
    src = CAT.sources["pageviews"]
    n = corpus.CYCLE * len(corpus.KINDS)
    a = list(corpus.corpus(src, n, seed=3))
    assert a == list(corpus.corpus(src, n, seed=3))
    assert a != list(corpus.corpus(src, n, seed=4))
    assert {k for k, _ in a} == set(corpus.KINDS)


def test_lines_are_one_json_line_each() -> None:
    got = list(corpus.corpus(CAT.sources["sensors"], 2000, seed=1, lines=True))
    assert len(got) == 2000
    assert all(b"\n" not in raw and raw.strip(b" \t\r") for _, raw in got)
    assert {k for k, _ in got} == set(corpus.KINDS) - {"empty"}


def test_match_counts_missing_unexpected_and_reasonless_letters() -> None:
    sent = [b"{bad", b"{bad", b"\xff{}", b"[1]", b"gone"]
    letters = [
        {"raw": "{bad", "reason": "not valid JSON: x"},
        {"raw": "{bad\n", "reason": "not valid JSON: x"},  # an import line keeps no newline
        {"raw": "\ufffd{}", "reason": "not valid JSON: not valid UTF-8"},
        {"raw": "[1]", "reason": ""},
        {"raw": "{valid}", "reason": "something"},
    ]
    r = corpus.match_dead_letters(sent, letters)
    assert (r.matched, r.missing, r.unexpected, r.no_reason) == (4, 1, 1, 1)
    assert not r.ok and r.missing_samples == ["'gone'"]
    assert corpus.match_dead_letters(sent[:3], letters[:3]).ok


def test_a_cut_letter_matches_the_long_record_it_starts() -> None:
    big = b"[" * (corpus.DEADLETTER_RAW_MAX + 10)
    other = b"[" * (corpus.DEADLETTER_RAW_MAX + 11)
    head = "[" * corpus.DEADLETTER_RAW_MAX
    letters = [
        {"raw": head, "raw_size": len(big), "raw_truncated": True, "reason": "deep"},
        {"raw": head, "raw_size": len(big), "raw_truncated": True, "reason": "deep"},
    ]
    r = corpus.match_dead_letters([big, other], letters)
    assert (r.matched, r.missing, r.unexpected) == (1, 1, 1)
