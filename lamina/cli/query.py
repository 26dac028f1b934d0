"""``lamina views`` and ``lamina query``: the view definitions and merged answers."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from typing import Any

from lamina.cli.common import fmt
from lamina.context import load_catalog
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


def cmd_query(settings: Settings, args: argparse.Namespace) -> int:
    from serving.connection import StoreConnection
    from serving.query import QueryService

    catalog = load_catalog(settings)
    # The connection narrates outages for a long-running API; here the one error line says it.
    logging.getLogger("serving.connection").setLevel(logging.ERROR)
    # The API's own path: the same connection (schema ensured, outages as one error) and the
    # same query code, so both give the same answers and the same errors.
    conn = StoreConnection(settings, catalog)
    try:
        answer = asyncio.run(
            conn.acall(
                QueryService.query_async,
                args.view,
                args.key,
                args.start,
                args.end,
                args.granularity,
                args.q,
            )
        )
    finally:
        conn.close()
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


def register(sub: Any) -> None:
    """Add this group's commands to the ``lamina`` parser's subcommands."""
    views = sub.add_parser("views", help="list the views defined in the views file")
    views.set_defaults(func=cmd_views)
    query = sub.add_parser("query", help="merged batch + real-time answer for keys of a view")
    query.add_argument("view")
    query.add_argument("key", nargs="+", help="key value(s); multi-field keys as a,b")
    query.add_argument("--from", dest="start", metavar="T", help="ISO-8601 or epoch seconds")
    query.add_argument("--to", dest="end", metavar="T", help="ISO-8601 or epoch seconds")
    query.add_argument("--granularity", metavar="G", help="view bucket or a multiple: day, 6h")
    query.add_argument("--q", type=float, default=0.5, help="quantile to present (default 0.5)")
    query.add_argument("--format", choices=("table", "json"), default="table")
    query.set_defaults(func=cmd_query)
