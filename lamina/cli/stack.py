"""``lamina stack``: the local Kafka and Cassandra on 127.0.0.1 (see :mod:`lamina.stack`)."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from lamina.cli.common import progress, say
from lamina.settings import Settings


def cmd_stack_up(settings: Settings, args: argparse.Namespace) -> int:
    from lamina.stack.manager import Stack

    stack = Stack(settings, args.services)
    t0 = time.monotonic()
    statuses = stack.up(progress=progress())
    if args.with_spark:
        from lamina.jars import ensure_bundle, spark_connector_bundle

        ensure_bundle(spark_connector_bundle(), settings.stack.cache_dir, progress())
    say(f"stack up in {time.monotonic() - t0:.1f}s; logs under {settings.stack.state_dir}")
    for st in statuses:
        say(f"  {st.name:<10} {st.host}:{st.port}  pid {st.pid}  log {st.log}")
    return 0


def cmd_stack_down(settings: Settings, args: argparse.Namespace) -> int:
    from lamina.stack.manager import Stack

    Stack(settings, args.services).down(progress=say)
    return 0


def cmd_stack_status(settings: Settings, args: argparse.Namespace) -> int:
    from lamina.stack.manager import Stack

    statuses = Stack(settings, args.services).status()
    if args.format == "json":
        print(
            json.dumps(
                [
                    {
                        "service": s.name,
                        "state": s.state,
                        "host": s.host,
                        "port": s.port,
                        "pid": s.pid,
                        "version": s.version,
                        "log": str(s.log),
                    }
                    for s in statuses
                ],
                indent=2,
            )
        )
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"Lamina stack ({settings.stack.state_dir})")
        for col in ("service", "state", "address", "pid", "version", "log"):
            table.add_column(col)
        for s in statuses:
            colour = "green" if s.healthy else ("red" if s.pid else "dim")
            table.add_row(
                s.name,
                f"[{colour}]{s.state}[/]",
                f"{s.host}:{s.port}",
                str(s.pid or "-"),
                s.version or "-",
                str(s.log),
            )
        Console().print(table)
    # Exit status tells scripts whether everything asked for is healthy.
    return 0 if all(s.healthy for s in statuses) else 3


def cmd_stack_logs(settings: Settings, args: argparse.Namespace) -> int:
    from lamina.stack.manager import Stack

    stack = Stack(settings)
    services = [stack.service(args.service)] if args.service else stack.services
    for svc in services:
        path = svc.stdout_file if args.stdout else svc.log_file
        print(f"==> {svc.name}: {path} <==")
        try:
            lines = path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            print("(no log yet: the service has not been started)")
            continue
        print("\n".join(lines[-args.lines :]))
    return 0


def register(sub: Any) -> None:
    """Add this group's commands to the ``lamina`` parser's subcommands."""
    stack = sub.add_parser("stack", help="run the local Kafka and Cassandra on 127.0.0.1")
    ssub = stack.add_subparsers(dest="action", required=True, metavar="ACTION")
    services_help = "services to act on (default: all of kafka, cassandra)"
    up = ssub.add_parser("up", help="fetch jars (first time), start services, wait until ready")
    up.add_argument("services", nargs="*", metavar="SERVICE", help=services_help)
    up.add_argument(
        "--no-spark",
        dest="with_spark",
        action="store_false",
        help="do not fetch Spark's Kafka connector jars",
    )
    up.set_defaults(func=cmd_stack_up)
    down = ssub.add_parser("down", help="stop the services this stack started")
    down.add_argument("services", nargs="*", metavar="SERVICE", help=services_help)
    down.set_defaults(func=cmd_stack_down)
    status = ssub.add_parser(
        "status", help="health, port, pid and version of each service (exit 3 if not healthy)"
    )
    status.add_argument("services", nargs="*", metavar="SERVICE", help=services_help)
    status.add_argument("--format", choices=("table", "json"), default="table")
    status.set_defaults(func=cmd_stack_status)
    logs = ssub.add_parser("logs", help="print the end of a service's log")
    logs.add_argument("service", nargs="?", metavar="SERVICE", help="kafka or cassandra")
    logs.add_argument("-n", "--lines", type=int, default=50, help="lines to show (default 50)")
    logs.add_argument("--stdout", action="store_true", help="show the JVM's stdout instead")
    logs.set_defaults(func=cmd_stack_logs)
