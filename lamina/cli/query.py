"""``lamina views``, ``lamina query`` and ``lamina keys``: the view definitions, merged answers,
top keys and key listings (the HTTP API's code: :class:`serving.query.QueryService`)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from typing import Any

from lamina.cli.common import fmt
from lamina.context import load_catalog
from lamina.errors import QueryError
from lamina.settings import Settings

log = logging.getLogger("lamina")


def cmd_views(settings: Settings, args: argparse.Namespace) -> int:
    catalog = load_catalog(settings)
    for v in catalog.views.values():
        aggs = ", ".join(f"{n}={a.fn}({a.field or '*'})" for n, a in v.aggregations.items())
        print(
            f"{v.name}: source {v.source.name} (topic {v.source.topic}), keys "
            f"{', '.join(v.keys)}, per {v.bucket.label}: {aggs}"
        )
    return 0


def _ask(settings: Settings, check: Any, fn: Any, *args: Any) -> dict[str, Any]:
    """``fn(service, *args)`` (a :class:`~serving.query.QueryService` coroutine) over the API's
    own connection code: the same answers and the same errors as the HTTP API; ``check`` (of
    a :class:`~serving.query.QueryChecks`) first, before connecting."""
    from serving.connection import StoreConnection
    from serving.query import QueryChecks

    catalog = load_catalog(settings)
    # Every parameter is checked before connecting: a bad one is named with Cassandra down.
    check(QueryChecks(catalog, settings))
    # The connection narrates outages for a long-running API; here the one error line says it.
    logging.getLogger("serving.connection").setLevel(logging.ERROR)
    conn = StoreConnection(settings, catalog)
    try:
        answer: dict[str, Any] = asyncio.run(conn.acall(fn, *args))
    finally:
        conn.close()
    return answer


def cmd_query(settings: Settings, args: argparse.Namespace) -> int:
    from serving.query import QueryService

    if args.top is not None:
        if args.key:
            raise QueryError(
                "--top ranks every key: give no key with it",
                hint=f"lamina query {args.view} --top AGG [--limit N]",
            )
        return _print_top(
            _ask(
                settings,
                lambda c: c.plan_index(
                    args.view, args.start, args.end, args.limit, by=args.top, q=args.q, top=True
                ),
                QueryService.top_async,
                args.view,
                args.top,
                args.start,
                args.end,
                args.limit,
                args.q,
            ),
            args.format,
        )
    if args.limit is not None:
        raise QueryError("--limit goes with --top", hint="lamina query VIEW --top AGG --limit N")
    catalog = load_catalog(settings)
    answer = _ask(
        settings,
        lambda c: c.plan(args.view, args.key, args.start, args.end, args.granularity, args.q),
        QueryService.query_async,
        args.view,
        args.key,
        args.start,
        args.end,
        args.granularity,
        args.q,
    )
    if args.format == "json":
        print(json.dumps(answer, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    prov = answer["provenance"]
    title = (
        f"{answer['view']} per {answer['granularity']} — batch version "
        f"{prov['version'] or '-'} (cutoff {prov['cutoff_iso'] or 'none'})"
    )
    for res in answer["results"]:
        table = Table(title=f"{title}\nkey {res['key']}")
        names = list(catalog.view(args.view).aggregations)
        for col in ("bucket", *names, "sources"):
            table.add_column(col)
        for b in res["buckets"]:
            src = ("batch" if b["from_batch"] else "") + (
                f"{' + ' if b['from_batch'] else ''}rt {len(b['realtime_epochs'])} epoch(s)"
                if b["realtime_epochs"]
                else ""
            )
            table.add_row(b["bucket"], *(fmt(b["values"][n]) for n in names), src)
        Console().print(table)
    return 0


def _print_top(answer: dict[str, Any], form: str) -> int:
    if form == "json":
        print(json.dumps(answer, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    prov = answer["provenance"]
    table = Table(
        title=f"{answer['view']}: top {answer['limit']} by {answer['by']}, {answer['from']} to "
        f"{answer['to']} — batch version {prov['version'] or '-'} (cutoff "
        f"{prov['cutoff_iso'] or 'none'}); {answer['keys_with_data']} keys with data"
    )
    names = list(answer["results"][0]["values"]) if answer["results"] else []
    for col in ("rank", "key", *names):
        table.add_column(col)
    for r in answer["results"]:
        table.add_row(str(r["rank"]), r["key"], *(fmt(r["values"][n]) for n in names))
    Console().print(table)
    return 0


def cmd_keys(settings: Settings, args: argparse.Namespace) -> int:
    from serving.query import QueryService

    answer = _ask(
        settings,
        lambda c: c.plan_index(
            args.view, args.start, args.end, args.limit, prefix=args.prefix, top=False
        ),
        QueryService.keys_async,
        args.view,
        args.start,
        args.end,
        args.prefix,
        args.limit,
    )
    if args.format == "json":
        print(json.dumps(answer, indent=2))
        return 0
    for key in answer["keys"]:
        print(key)
    if answer["truncated"]:
        print(
            f"... {answer['matched'] - len(answer['keys'])} more (of {answer['matched']}); "
            "raise --limit or narrow --prefix",
            file=sys.stderr,
        )
    return 0


def register(sub: Any) -> None:
    """Add this group's commands to the ``lamina`` parser's subcommands."""
    views = sub.add_parser("views", help="list the views defined in the views file")
    views.set_defaults(func=cmd_views)
    query = sub.add_parser("query", help="merged batch + real-time answer for keys of a view")
    query.add_argument("view")
    query.add_argument("key", nargs="*", help="key value(s); multi-field keys as a,b")
    query.add_argument(
        "--top", metavar="AGG", help="rank every key by aggregation AGG instead (no keys)"
    )
    query.add_argument("--limit", type=int, metavar="N", help="with --top: keys shown (10)")
    query.add_argument("--from", dest="start", metavar="T", help="ISO-8601 or epoch seconds")
    query.add_argument("--to", dest="end", metavar="T", help="ISO-8601 or epoch seconds")
    query.add_argument("--granularity", metavar="G", help="view bucket or a multiple: day, 6h")
    query.add_argument("--q", type=float, default=0.5, help="quantile to present (default 0.5)")
    query.add_argument("--format", choices=("table", "json"), default="table")
    query.set_defaults(func=cmd_query)
    keys = sub.add_parser("keys", help="keys of a view with data in a time range")
    keys.add_argument("view")
    keys.add_argument("--from", dest="start", metavar="T", help="ISO-8601 or epoch seconds")
    keys.add_argument("--to", dest="end", metavar="T", help="ISO-8601 or epoch seconds")
    keys.add_argument("--prefix", help="only keys whose text starts with this")
    keys.add_argument("--limit", type=int, metavar="N", help="keys shown (100)")
    keys.add_argument("--format", choices=("table", "json"), default="table")
    keys.set_defaults(func=cmd_keys)
