"""Query keys: ``parse_key`` turns the text of a key into the typed tuple the tables hold."""

from __future__ import annotations

from typing import Any

import pytest

from lamina.errors import QueryError
from lamina.views import View, parse_views
from serving.query import parse_key

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
    assert err.value.hint == "join the values with commas in that order"


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
