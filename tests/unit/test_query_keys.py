"""Query keys: ``parse_key`` turns the text of a key into the typed tuple the tables hold."""

from __future__ import annotations

from typing import Any

import pytest

from lamina.errors import QueryError
from lamina.views import View, parse_views
from serving.query import parse_key, parse_time

CATALOG = parse_views(
    {
        "sources": {
            "things": {
                "topic": "things",
                "event_id": "id",
                "event_time": "ts",
                "fields": {
                    "id": "string",
                    "ts": "string",
                    "name": "string",
                    "n": "long",
                    "x": "double",
                    "flag": "boolean",
                },
            }
        },
        "views": {
            view: {
                "source": "things",
                "keys": keys,
                "bucket": "hour",
                "aggregations": {"c": {"fn": "count"}},
            }
            for view, keys in {
                "by_long": ["n"],
                "by_double": ["x"],
                "by_bool": ["flag"],
                "by_string": ["name"],
                "by_three": ["name", "n", "flag"],
                "by_two_numbers": ["x", "n"],
            }.items()
        },
    }
)


def view(name: str) -> View:
    return CATALOG.view(name)


def typed(key: tuple[Any, ...]) -> list[tuple[type, Any]]:
    """The key with each part's exact type: 42 == 42.0 == True would hide a wrong type."""
    return [(type(v), v) for v in key]


@pytest.mark.parametrize(
    ("name", "raw", "want"),
    [
        ("by_long", "42", (42,)),
        ("by_long", "-7", (-7,)),
        ("by_long", "9007199254740993", (9007199254740993,)),  # past float precision
        ("by_double", "2.5", (2.5,)),
        ("by_double", "3", (3.0,)),
        ("by_double", "-1e-3", (-0.001,)),
        ("by_bool", "true", (True,)),
        ("by_bool", "True", (True,)),
        ("by_bool", "false", (False,)),
        ("by_string", "/pricing", ("/pricing",)),
        ("by_string", "a,b", ("a,b",)),  # one key field: commas are part of the value
        ("by_string", "", ("",)),
        ("by_three", "/docs,12,true", ("/docs", 12, True)),
        ("by_three", "/docs,-3,false", ("/docs", -3, False)),
        ("by_two_numbers", "0.5,5", (0.5, 5)),
    ],
)
def test_keys_are_typed_as_the_key_fields(name: str, raw: str, want: tuple[Any, ...]) -> None:
    assert typed(parse_key(view(name), raw)) == typed(want)


@pytest.mark.parametrize(
    ("name", "raw", "message"),
    [
        ("by_three", "/docs,12", r"key '/docs,12' has 2 part\(s\) but view 'by_three' is keyed "),
        ("by_three", "/docs", r"has 1 part\(s\) but view 'by_three' is keyed by 3: name, n, flag"),
        ("by_three", "/docs,12,true,x", r"has 4 part\(s\)"),
        ("by_two_numbers", "0.5,5,", r"has 3 part\(s\)"),
    ],
)
def test_wrong_number_of_parts_is_a_query_error(name: str, raw: str, message: str) -> None:
    with pytest.raises(QueryError, match=message) as err:
        parse_key(view(name), raw)
    assert err.value.hint is not None
    assert err.value.hint.startswith("join the values with commas in key order")


@pytest.mark.parametrize(
    ("name", "raw", "message"),
    [
        ("by_long", "4.2", r"key field 'n' is long, got '4.2'"),
        ("by_long", "forty", r"key field 'n' is long, got 'forty'"),
        ("by_long", "", r"key field 'n' is long, got ''"),
        ("by_double", "2,5", r"key field 'x' is double, got '2,5'"),
        ("by_double", "abc", r"key field 'x' is double, got 'abc'"),
        ("by_three", "/docs,twelve,true", r"key field 'n' is long, got 'twelve'"),
        ("by_two_numbers", "half,5", r"key field 'x' is double, got 'half'"),
    ],
)
def test_a_value_of_the_wrong_type_is_a_query_error(name: str, raw: str, message: str) -> None:
    with pytest.raises(QueryError, match=message) as err:
        parse_key(view(name), raw)
    assert err.value.http_status == 400


@pytest.mark.parametrize("raw", ["ture", "maybe"])
def test_a_boolean_key_that_is_not_true_or_false_is_a_query_error(raw: str) -> None:
    with pytest.raises(QueryError, match=r"key field 'flag' is boolean"):
        parse_key(view("by_bool"), raw)


@pytest.mark.parametrize(
    ("name", "raw", "want"),
    [
        ("by_three", r"a\,b,12,true", ("a,b", 12, True)),  # an escaped comma
        ("by_three", r"a\\,12,true", ("a\\", 12, True)),  # an escaped backslash
        ("by_three", r"\[x,12,true", ("[x", 12, True)),  # a first value starting with [
        ("by_three", '["a,b", 12, true]', ("a,b", 12, True)),  # the JSON form
        ("by_three", '["a,b", "12", "false"]', ("a,b", 12, False)),  # its values as text
        ("by_two_numbers", "[0.5, 5]", (0.5, 5)),
        ("by_two_numbers", "[1, -5]", (1.0, -5)),
        ("by_string", '["a,b"]', ('["a,b"]',)),  # one key field: the text whole, JSON or not
    ],
)
def test_a_value_with_a_comma_is_escaped_or_given_as_json(
    name: str, raw: str, want: tuple[Any, ...]
) -> None:
    assert typed(parse_key(view(name), raw)) == typed(want)


@pytest.mark.parametrize(
    ("name", "raw", "message", "hint"),
    [
        (
            "by_long",
            str(2**63),
            r"is long, got '9223372036854775808' \(does not fit a 64-bit",
            "-2**63",
        ),
        ("by_long", str(-(2**63) - 1), r"\(does not fit a 64-bit long\)", "-2**63"),
        ("by_double", "nan", r"key field 'x' is double, got 'nan'", "finite"),
        ("by_double", "1e400", r"key field 'x' is double, got '1e400' \(not a finite", "finite"),
        ("by_bool", "yes", r"key field 'flag' is boolean, got 'yes'", "true or false"),
        ("by_three", "[1, 12, true]", r"key field 'name' is string, got 1", None),
        ("by_three", '["a", 1.5, true]', r"key field 'n' is long, got '1.5'", "-2**63"),
        (
            "by_three",
            '["a", 12, "yes"]',
            r"key field 'flag' is boolean, got 'yes'",
            "true or false",
        ),
        ("by_three", '["a", 12]', r"has 2 part\(s\)", "JSON array"),
        ("by_three", '["a", 12, true', r"starts with '\[' but is not a JSON array", "JSON array"),
        ("by_three", '{"name": "a"}', r"has 1 part\(s\)", None),
    ],
)
def test_bad_keys_say_why(name: str, raw: str, message: str, hint: str | None) -> None:
    with pytest.raises(QueryError, match=message) as err:
        parse_key(view(name), raw)
    assert err.value.http_status == 400
    if hint is not None:
        assert err.value.hint is not None and hint in err.value.hint


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("0", 0.0),
        ("1764410400", 1764410400.0),
        ("2026-11-29T10:00:00Z", 1795946400.0),
        ("2026-11-29T11:00:00+01:00", 1795946400.0),
        ("2026-11-29", 1795910400.0),
        (None, None),
        ("", None),
    ],
)
def test_times(text: str | None, want: float | None) -> None:
    assert parse_time(text, "from") == want


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nan", "from='nan' is outside the times events can have"),
        ("inf", "outside the times"),
        ("-inf", "outside the times"),
        ("1e20", "outside the times"),
        ("-1", "outside the times"),
        ("9999-12-31T23:00:00", "outside the times"),
        ("2026-13-01", "from='2026-13-01' is not a time"),
        ("yesterday", "is not a time"),
    ],
)
def test_times_that_are_no_times_are_query_errors(text: str, message: str) -> None:
    with pytest.raises(QueryError, match=message) as err:
        parse_time(text, "from")
    assert err.value.http_status == 400 and err.value.hint
