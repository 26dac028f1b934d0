"""A seeded corpus of malformed records for a source, and a check that each one is a dead letter.

Used by ``bench/fuzz.py``, ``bench/soak.py`` and ``tests/integration/test_fuzz.py``:

- :func:`malformed` draws one malformed record of a source (a :class:`~lamina.views.Source`):
  ``(kind, raw bytes)``. Every kind in :data:`KINDS` is a record that
  :func:`lamina.events.parse_event` rejects, whatever the source's fields (bad JSON, not an
  object, wrong types, missing id/time, huge and deeply nested records, NaN/Infinity, numbers
  too long, non-UTF-8 bytes, lone surrogates, a BOM, NUL and control bytes, duplicate keys,
  absurd times, ...). ``tests/unit/test_corpus.py`` checks that against the validator.
- :func:`corpus` yields ``n`` of them from a seed (the same seed, the same records); every
  kind appears at least once in each :data:`CYCLE` * ``len(KINDS)`` records. With
  ``lines=True`` only records that are one line of a JSON-lines file (no ``\\n`` byte, not
  blank) are drawn, so the corpus can be imported with ``lamina master import``.
- :func:`match_dead_letters` pairs the records sent with the dead letters read back (from
  :func:`speed.deadletters.read_deadletters` or an import's dead-letter file) and says which
  records have no letter, which letters match no record, and whether every letter has a
  reason.

No record is larger than :data:`MAX_RECORD_BYTES`, under the broker's default
``message.max.bytes`` (1 MiB + 12 bytes; the stack template does not change it) and the
clients' default ``max.request.size`` (1 MiB).
"""

from __future__ import annotations

import json
import random
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lamina.events import MAX_DEPTH, MAX_KEY_LENGTH, MAX_NUMBER_DIGITS  # noqa: E402
from lamina.schema import FieldType  # noqa: E402
from lamina.streams import DEADLETTER_RAW_MAX  # noqa: E402
from lamina.views import Source  # noqa: E402

MAX_RECORD_BYTES = 1_000_000
"""Largest record drawn (the ``huge_*`` kinds): fits one Kafka request and one broker batch
with the defaults (1 MiB)."""
CYCLE = 50
"""Every ``CYCLE``-th record of :func:`corpus` is the next kind in turn (the others are drawn
by weight), so a short corpus still has every kind."""

Record = dict[str, Any]


# -- valid material -------------------------------------------------------------------------


def _valid_value(ftype: str, rng: random.Random) -> Any:
    if ftype == FieldType.LONG:
        return rng.randint(-1000, 1000)
    if ftype == FieldType.DOUBLE:
        return round(rng.uniform(-1e3, 1e3), 3)
    if ftype == FieldType.BOOLEAN:
        return rng.random() < 0.5
    return f"v{rng.randint(0, 99_999)}"


def _valid_time(source: Source, rng: random.Random) -> Any:
    seconds = rng.randint(1_700_000_000, 1_800_000_000)
    fmt, ftype = source.event_time_format, source.fields[source.event_time]
    if fmt == "iso8601":
        import datetime as dt

        return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    value: float = seconds * (1000 if fmt == "epoch_ms" else 1)
    return int(value) if ftype == FieldType.LONG else float(value)


def valid(source: Source, rng: random.Random) -> Record:
    """A record of ``source`` that the validator accepts (every declared field set)."""
    rec: Record = {f: _valid_value(t, rng) for f, t in source.fields.items()}
    eid = source.event_id
    rec[eid] = (
        f"fz-{rng.getrandbits(64):016x}"
        if source.fields[eid] == FieldType.STRING
        else _valid_value(source.fields[eid], rng)
    )
    rec[source.event_time] = _valid_time(source, rng)
    return rec


def _dump(rec: Any) -> str:
    return json.dumps(rec, separators=(",", ":"), allow_nan=True)


def _enc(text: str) -> bytes:
    return text.encode("utf-8", errors="surrogatepass")


def _some_field(source: Source, rng: random.Random, ftypes: Sequence[str] | None = None) -> str:
    names = [f for f, t in source.fields.items() if ftypes is None or t in ftypes]
    return rng.choice(names or list(source.fields))


def _replace_value(rec_text: str, fieldname: str, raw_value: str) -> str:
    """``rec_text`` (compact JSON of a record) with ``fieldname``'s value replaced by the raw
    JSON text ``raw_value`` (which ``json.dumps`` could not write: NaN, 1e400, ...)."""
    rec = json.loads(rec_text)
    marker = "\x00MARK\x00"
    rec[fieldname] = marker
    return _dump(rec).replace(json.dumps(marker), raw_value)


# -- the kinds ------------------------------------------------------------------------------


def _bad_json(source: Source, rng: random.Random) -> bytes:
    text = _dump(valid(source, rng))
    field_ = _some_field(source, rng)
    choices: list[Callable[[], str]] = [
        lambda: text[: rng.randint(1, len(text) - 1)],  # truncated
        lambda: text.replace('"', "'"),  # single quotes
        lambda: text[:-1] + ",}",  # trailing comma
        lambda: text.replace(f'"{field_}":', f"{field_}:", 1),  # unquoted key
        lambda: text.replace(":", "=", 1),
        lambda: "{" + text[1:].replace(",", " ", 1),  # missing comma
        lambda: text[:-1] + ',"x":}',  # missing value
        lambda: text[:1] + "/* c */" + text[1:],  # a comment
        lambda: text.replace("{", "{{", 1),
        lambda: _replace_value(text, field_, "undefined"),
        lambda: _replace_value(text, field_, '"\\x41"'),  # invalid escape
        lambda: _replace_value(text, field_, '"\\u12"'),  # short unicode escape
        lambda: _replace_value(text, field_, '"unterminated'),
        lambda: _replace_value(
            text, field_, rng.choice(["01", "+1", ".5", "1.", "1e", "-", "0x1F"])
        ),
        lambda: rng.choice(["hello", "<xml/>", "}", "{", ":", ",", "@", "\\", "'x'", "#!"]),
    ]
    return _enc(rng.choice(choices)())


def _not_object(source: Source, rng: random.Random) -> bytes:
    rec = valid(source, rng)
    return _enc(
        rng.choice(
            [
                _dump([rec]),
                "[]",
                '"' + _dump(rec).replace('"', '\\"') + '"',
                str(rng.randint(-(10**6), 10**6)),
                repr(rng.uniform(-1, 1)),
                "true",
                "false",
                "null",
                "  \t[1, 2]",
                "-0",
            ]
        )
    )


def _missing_field(source: Source, rng: random.Random, role: str) -> bytes:
    rec = valid(source, rng)
    name = getattr(source, role)
    how = rng.randrange(3)
    if how == 0:
        del rec[name]
    elif how == 1:
        rec[name] = None
    else:  # only a differently cased name
        rec[name.upper()] = rec.pop(name)
    if source.fields[name] == FieldType.STRING and how == 2 and name.upper() == name:
        del rec[name]
    return _enc(_dump(rec))


def _wrong_value(ftype: str, rng: random.Random) -> str:
    """JSON text of a value that is not a valid ``ftype``."""
    options = {
        FieldType.STRING: ["1", "1.5", "true", "false", "{}", "[]", '["a"]', '{"s":"x"}', "0"],
        FieldType.LONG: [
            '"1"',
            "1.5",
            "1.0",
            "1e2",
            "true",
            "false",
            "[1]",
            "{}",
            '""',
            str(2**63),
            str(-(2**63) - 1),
            str(2**64 + 7),
        ],
        FieldType.DOUBLE: ['"1.5"', '"nan"', "true", "false", "[1.5]", "{}", '""', "1e400"],
        FieldType.BOOLEAN: ['"true"', "1", "0", "1.0", '"yes"', "[true]", "{}", '""'],
    }[FieldType(ftype)]
    return rng.choice(options)


def _wrong_type(source: Source, rng: random.Random) -> bytes:
    name = _some_field(source, rng)
    text = _replace_value(_dump(valid(source, rng)), name, _wrong_value(source.fields[name], rng))
    return _enc(text)


def _bool_for_number(source: Source, rng: random.Random) -> bytes:
    numeric = [f for f, t in source.fields.items() if t in (FieldType.LONG, FieldType.DOUBLE)]
    if not numeric:
        return _wrong_type(source, rng)
    name = rng.choice(numeric)
    value = rng.choice(["true", "false"])
    return _enc(_replace_value(_dump(valid(source, rng)), name, value))


def _nan_infinity(source: Source, rng: random.Random) -> bytes:
    name = _some_field(source, rng)
    value = rng.choice(["NaN", "Infinity", "-Infinity", "nan", "inf", "-inf", "+Infinity"])
    return _enc(_replace_value(_dump(valid(source, rng)), name, value))


def _huge_number(source: Source, rng: random.Random) -> bytes:
    name = _some_field(source, rng)
    digits = MAX_NUMBER_DIGITS + rng.randint(1, 5000)
    body = str(rng.randint(1, 9)) + "".join(rng.choice("0123456789") for _ in range(digits - 1))
    value = rng.choice(
        [
            body,
            "-" + body,
            "0." + body,
            "1." + body[: digits // 2] + "e" + body[digits // 2 :][:5],
        ]
    )
    return _enc(_replace_value(_dump(valid(source, rng)), name, value))


def _deep(source: Source, rng: random.Random) -> bytes:
    how = rng.randrange(5)
    if how == 0:
        return b"[" * 50_000
    if how == 1:
        return b'{"a":' * 20_000
    depth = MAX_DEPTH + rng.choice([1, 2, 10, 1000, 20_000])
    if how == 2:  # a deep array as an extra field of an otherwise valid record
        nested = "[" * depth + "1" + "]" * depth
    elif how == 3:
        nested = '{"a":' * depth + "1" + "}" * depth
    else:  # deep, and never closed
        nested = "[" * depth
    return _enc(_replace_value(_dump(valid(source, rng)), "deep_extra", nested))


def _huge_record(source: Source, rng: random.Random) -> bytes:
    """A record near :data:`MAX_RECORD_BYTES`, malformed in a small way."""
    size = rng.choice([200_000, 700_000, 800_000, MAX_RECORD_BYTES - 200])
    rec = valid(source, rng)
    pad = "x" * size
    how = rng.randrange(3)
    if how == 0:  # a 1 MB string where a number (or boolean) belongs, or no event id
        non_string = [f for f, t in source.fields.items() if t != FieldType.STRING]
        if non_string:
            rec[rng.choice(non_string)] = pad
        else:
            rec.pop(source.event_id)
            rec["blob"] = pad
    elif how == 1:  # a huge extra field, and no event id
        rec.pop(source.event_id)
        rec["blob"] = pad
    else:  # huge and truncated
        rec["blob"] = pad
        text = _dump(rec)
        return _enc(text[: len(text) - 2])
    out = _enc(_dump(rec))
    return out[:MAX_RECORD_BYTES] if len(out) > MAX_RECORD_BYTES else out


def _long_key(source: Source, rng: random.Random) -> bytes:
    rec = valid(source, rng)
    rec["k" * (MAX_KEY_LENGTH + rng.randint(1, 1000))] = 1
    return _enc(_dump(rec))


def _non_utf8(source: Source, rng: random.Random) -> bytes:
    text = _enc(_dump(valid(source, rng)))
    bad = rng.choice(
        [
            b"\xff",
            b"\xfe\xff",
            b"\xc0\xaf",  # overlong '/'
            b"\xed\xa0\x80",  # an encoded surrogate (CESU)
            b"\xe2\x82",  # truncated 3-byte sequence
            b"\x80",
            b"\xf5\x80\x80\x80",  # beyond U+10FFFF
            b"\xf8\x88\x80\x80\x80",
            "é".encode("latin-1"),
        ]
    )
    where = rng.randrange(3)
    if where == 0:  # inside a string value
        i = text.index(b'"', text.index(b":")) + 1
        return text[:i] + bad + text[i:]
    if where == 1:  # inside a key
        return text[:2] + bad + text[2:]
    return bad + text if rng.random() < 0.5 else text.replace(b"{", b"{" + bad, 1)


def _lone_surrogate(source: Source, rng: random.Random) -> bytes:
    rec = valid(source, rng)
    esc = rng.choice(["\\ud800", "\\udfff", "\\udc00x", "x\\ud83d", "\\ud83d\\u0041"])
    strings = [f for f, t in source.fields.items() if t == FieldType.STRING]
    text = _dump(rec)
    if strings and rng.random() < 0.6:
        return _enc(_replace_value(text, rng.choice(strings), f'"{esc}"'))
    if rng.random() < 0.5:  # in a key
        return _enc(text[:-1] + f',"{esc}":1}}')
    return _enc(_replace_value(text, "extra", f'["{esc}"]'))


def _bom(source: Source, rng: random.Random) -> bytes:
    text = _enc(_dump(valid(source, rng)))
    return rng.choice(
        [
            b"\xef\xbb\xbf" + text,  # UTF-8 BOM
            b"\xff\xfe" + text.decode().encode("utf-16-le"),  # UTF-16 with a BOM
            text.decode().encode("utf-16-be"),
            text.decode().encode("utf-32"),
        ]
    )


def _empty(source: Source, rng: random.Random) -> bytes:
    return rng.choice([b"", b" ", b"\t", b"\r", b"\n", b" \r\n\t ", b"\n\n", b"   \n"])


def _nul(source: Source, rng: random.Random) -> bytes:
    text = _enc(_dump(valid(source, rng)))
    return rng.choice(
        [
            b"\x00",
            b"\x00" * rng.randint(2, 100),
            b"\x00" + text,
            text[:1] + b"\x00" + text[1:],  # between tokens
            text.replace(b'":"', b'":"\x00', 1) if b'":"' in text else b"\x00" + text,
            text[:-1] + b',"n":"a\x00b"}',  # raw NUL inside a string
        ]
    )


def _control_chars(source: Source, rng: random.Random) -> bytes:
    text = _dump(valid(source, rng))
    if rng.random() < 0.1:  # whitespace, but not JSON whitespace: a record, not a blank line
        return rng.choice([b"\x0b", b"\x0c", b"\x0b\x0c ", b"\x1c", b"\xc2\xa0"])
    ch = rng.choice(["\x01", "\x07", "\x08", "\x0b", "\x0c", "\x1b", "\x1f", "\t"])
    if rng.random() < 0.5:  # raw inside a string (JSON wants it escaped)
        return _enc(text[:-1] + f',"c":"a{ch}b"}}')
    ws = rng.choice(["\x0b", "\x0c", "\xa0", "\u2028", "\u3000", "\x1c"])
    return _enc(ws + text)  # not JSON whitespace before the value


def _duplicate_key(source: Source, rng: random.Random) -> bytes:
    rec = valid(source, rng)
    text = _dump(rec)
    name = _some_field(source, rng)
    dup = json.dumps(name) + ":" + _dump(rec[name])
    how = rng.randrange(3)
    if how == 0:
        return _enc(text[:-1] + "," + dup + "}")
    if how == 1:
        return _enc("{" + dup + "," + text[1:])
    return _enc(_replace_value(text, "nested", '{"a":1,"b":{"c":1,"c":2}}'))


def _absurd_time(source: Source, rng: random.Random) -> bytes:
    fmt, name = source.event_time_format, source.event_time
    if fmt == "iso8601":
        value = json.dumps(
            rng.choice(
                [
                    "1969-12-31T23:59:59Z",
                    "1900-01-01T00:00:00Z",
                    "0001-01-01T00:00:00Z",
                    "0000-00-00T00:00:00Z",
                    "2200-01-01T00:00:00Z",
                    "9999-12-31T23:59:59Z",
                    "10000-01-01T00:00:00Z",
                    "2026-13-01T00:00:00Z",
                    "2026-02-30T00:00:00Z",
                    "2026-11-27T24:00:00Z",
                    "2026-11-27T10:60:00Z",
                    "2026-11-27T10:00:61Z",
                    "2026-11-27T10:00:00+19:00",
                    "2026-11-27T10:00:00+05:60",
                    "2026-11-27T10:00:00.1234567890Z",
                    "2026-11-27T10:00:00ZZ",
                    "2026-11-27T10:00:00Z\n",
                    " 2026-11-27T10:00:00Z",
                    "2026-11-27 extra",
                    "27/11/2026 10:00",
                    "Fri, 27 Nov 2026 10:00:00 GMT",
                    "1795773600",
                    "",
                    "now",
                    "\u0662\u0660\u0662\u0666-11-27",  # Arabic-Indic digits
                ]
            )
        )
        if rng.random() < 0.15:
            value = rng.choice(["1795773600", "1795773600.5", "true", "[]", "{}"])
    else:
        scale = 1000 if fmt == "epoch_ms" else 1
        long_ = source.fields[name] == FieldType.LONG
        seconds = rng.choice([-1, -86_400 * 365 * 100, 7_258_118_400, 253_402_300_800, 10**12])
        value = str(int(seconds * scale)) if long_ else repr(float(seconds * scale))
        if rng.random() < 0.3:
            value = rng.choice(['"2026-11-27T10:00:00Z"', '"1795773600"', "true", "[]", '""'])
            if not long_ and rng.random() < 0.5:
                value = rng.choice(["1e300", "-1e300", "-0.001"])
    return _enc(_replace_value(_dump(valid(source, rng)), name, value))


Kind = Callable[[Source, random.Random], bytes]

KINDS: dict[str, tuple[Kind, float]] = {
    "bad_json": (_bad_json, 10),
    "not_object": (_not_object, 5),
    "missing_id": (lambda s, r: _missing_field(s, r, "event_id"), 5),
    "missing_time": (lambda s, r: _missing_field(s, r, "event_time"), 5),
    "wrong_type": (_wrong_type, 10),
    "bool_for_number": (_bool_for_number, 3),
    "nan_infinity": (_nan_infinity, 5),
    "huge_number": (_huge_number, 2),
    "deep": (_deep, 1),
    "huge_record": (_huge_record, 0.02),
    "long_key": (_long_key, 0.5),
    "non_utf8": (_non_utf8, 5),
    "lone_surrogate": (_lone_surrogate, 4),
    "bom": (_bom, 2),
    "empty": (_empty, 2),
    "nul": (_nul, 3),
    "control_chars": (_control_chars, 3),
    "duplicate_key": (_duplicate_key, 4),
    "absurd_time": (_absurd_time, 8),
}
"""Each kind's generator and weight (relative; ``huge_record`` is rare: ~1 MB each)."""


def is_line(raw: bytes) -> bool:
    """Whether ``raw`` is one record of a JSON-lines file: no newline byte, not blank (a
    blank line is no record to ``master import``)."""
    return b"\n" not in raw and bool(raw.strip(b" \t\r"))


def malformed(source: Source, rng: random.Random, *, kind: str | None = None) -> tuple[str, bytes]:
    """One malformed record of ``source``: ``(kind, raw bytes)``, drawn from ``rng`` by the
    weights of :data:`KINDS` (or of the given ``kind``). The validator rejects it."""
    if kind is None:
        names = list(KINDS)
        kind = rng.choices(names, weights=[KINDS[k][1] for k in names])[0]
    return kind, KINDS[kind][0](source, rng)


def corpus(
    source: Source, n: int, seed: int = 0, *, lines: bool = False
) -> Iterator[tuple[str, bytes]]:
    """``n`` malformed records of ``source``, the same for the same seed: every
    :data:`CYCLE`-th is the next kind in turn, the rest drawn by weight. With ``lines``, only
    records that are one JSON line (see :func:`is_line`)."""
    rng = random.Random(seed)
    names = list(KINDS)
    i = 0
    retry = False
    while i < n:
        kind = names[(i // CYCLE) % len(names)] if i % CYCLE == 0 and not retry else None
        got = malformed(source, rng, kind=kind)
        if lines and not is_line(got[1]):
            retry = True  # this kind may have no one-line records (``empty``): draw another
            continue
        retry = False
        yield got
        i += 1


# -- matching records with their dead letters -----------------------------------------------


def letter_key(raw: bytes) -> str:
    """What a dead letter keeps of a record: its text, bytes that are not UTF-8 replaced by
    U+FFFD (as both :func:`speed.deadletters.read_deadletters` and ``master import``'s
    rejects files show it), without trailing newlines (an import line's end)."""
    return raw.decode("utf-8", errors="replace").rstrip("\n")


def _row_key(letter: Mapping[str, Any]) -> str:
    raw = letter.get("raw", "")
    if isinstance(raw, bytes):
        return letter_key(raw)
    return str(raw).rstrip("\n")


@dataclass
class Report:
    """How the records sent compare with the dead letters read back.

    ``matched``: records with a letter; ``missing``: records with none (dropped silently or
    accepted); ``unexpected``: letters that match no record sent (a valid record rejected,
    or a letter from elsewhere); ``no_reason``: matched letters with an empty reason.
    Records and letters are matched as multisets by :func:`letter_key`.
    """

    sent: int = 0
    letters: int = 0
    matched: int = 0
    missing: int = 0
    unexpected: int = 0
    no_reason: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    missing_samples: list[str] = field(default_factory=list)
    unexpected_samples: list[dict[str, Any]] = field(default_factory=list)
    no_reason_samples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.missing == 0 and self.unexpected == 0 and self.no_reason == 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "sent": self.sent,
            "letters": self.letters,
            "matched": self.matched,
            "missing": self.missing,
            "unexpected": self.unexpected,
            "no_reason": self.no_reason,
            "reasons": dict(self.reasons.most_common()),
            "missing_samples": self.missing_samples,
            "unexpected_samples": self.unexpected_samples,
            "no_reason_samples": self.no_reason_samples,
        }


def _short(text: str, n: int = 160) -> str:
    r = repr(text)
    return r if len(r) <= n else r[: n - 3] + "..."


def match_dead_letters(
    sent: Sequence[bytes], letters: Sequence[Mapping[str, Any]], *, samples: int = 5
) -> Report:
    """Pair each record of ``sent`` with a dead letter of ``letters`` (rows with ``raw`` (text
    or bytes) and ``reason``, as :func:`speed.deadletters.read_deadletters` returns them or
    as the lines of ``master import``'s rejects file), by :func:`letter_key`; a letter that
    repeats only the start of its record (``raw_truncated``, with ``raw_size``) is paired with
    a record of that size that starts so."""
    want = Counter(letter_key(r) for r in sent)
    # A letter of a long record repeats its first DEADLETTER_RAW_MAX bytes and its size.
    cut: dict[tuple[int, str], list[str]] = {}
    for r in sent:
        if len(r) > DEADLETTER_RAW_MAX:
            cut.setdefault((len(r), letter_key(r[:DEADLETTER_RAW_MAX])), []).append(letter_key(r))
    report = Report(sent=len(sent), letters=len(letters))
    unmatched: list[Mapping[str, Any]] = []
    for letter in letters:
        key = _row_key(letter)
        if letter.get("raw_truncated"):
            whole = [k for k in cut.get((int(letter["raw_size"]), key), []) if want[k] > 0]
            key = whole[0] if whole else "\x00(a cut record matching nothing sent)"
        if want[key] > 0:
            want[key] -= 1
            report.matched += 1
            reason = str(letter.get("reason") or "").strip()
            report.reasons[reason.split(":")[0] or "(none)"] += 1
            if not reason:
                report.no_reason += 1
                if len(report.no_reason_samples) < samples:
                    report.no_reason_samples.append(_sample(letter))
        else:
            unmatched.append(letter)
    report.unexpected = len(unmatched)
    report.unexpected_samples = [_sample(x) for x in unmatched[:samples]]
    left = +want
    report.missing = sum(left.values())
    report.missing_samples = [_short(k) for k in list(left)[:samples]]
    return report


def _sample(letter: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in letter.items() if k != "raw"}
    out["raw"] = _short(_row_key(letter))
    return out


def _main() -> None:  # pragma: no cover - a look at the corpus: python bench/corpus.py [N]
    from lamina.events import Rejection, parse_event
    from lamina.views import load_views

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    cat = load_views(ROOT / "conf" / "views.toml")
    for source in cat.sources.values():
        counts: Counter[str] = Counter()
        accepted = []
        for kind, raw in corpus(source, n, seed=1):
            counts[kind] += 1
            if not isinstance(parse_event(raw, source), Rejection):
                accepted.append((kind, raw[:200]))
        print(source.name, dict(counts), "accepted:", accepted[:5] or "none")


if __name__ == "__main__":
    _main()
