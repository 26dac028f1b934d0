"""``lamina stack``: the local Kafka and Cassandra on 127.0.0.1, and on request Airflow's
API server, scheduler and DAG processor (see :mod:`lamina.stack`)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lamina.cli.common import progress, say
from lamina.settings import CONFIG_ENV, Settings, environment

if TYPE_CHECKING:
    from lamina.stack.manager import Stack


def _present(settings: Settings, args: argparse.Namespace) -> Stack:
    """The services ``status``/``down``/``logs`` act on: those named, else Kafka and
    Cassandra plus the Airflow part when it is configured (``[stack] airflow``) or runs."""
    from lamina.stack.manager import Stack, optional_running

    names = getattr(args, "services", None)
    return Stack(settings, names, airflow=settings.stack.airflow or optional_running(settings))


def cmd_stack_up(settings: Settings, args: argparse.Namespace) -> int:
    from lamina.stack.manager import Stack

    stack = Stack(settings, args.services, airflow=True if args.with_airflow else None)
    # The Airflow processes read the settings file the CLI read: `-c PATH` as LAMINA_CONFIG.
    config = {CONFIG_ENV: str(Path(args.config).absolute())} if args.config else {}
    t0 = time.monotonic()
    with environment(config):
        statuses = stack.up(progress=progress())
    if args.with_spark:
        from lamina.jars import ensure_bundle, spark_connector_bundle

        ensure_bundle(spark_connector_bundle(), settings.stack.cache_dir, progress())
    say(f"stack up in {time.monotonic() - t0:.1f}s; logs under {settings.stack.state_dir}")
    width = max((len(st.name) for st in statuses), default=0)
    for st in statuses:
        say(f"  {st.name:<{width}}  {st.host}:{st.port}  pid {st.pid}  log {st.log}")
    if any(s.optional for s in stack.services):
        from lamina.stack.airflow_services import ADMIN, api_url, password_file

        say(
            f"Airflow UI and REST API: {api_url(settings)} (user {ADMIN}, password in"
            f" {password_file(settings)}); DAGs start paused; for the airflow CLI:"
            f" export AIRFLOW_HOME={settings.stack.state_dir / 'airflow'}"
        )
    return 0


def cmd_stack_down(settings: Settings, args: argparse.Namespace) -> int:

    _present(settings, args).down(progress=say)
    return 0


def cmd_stack_status(settings: Settings, args: argparse.Namespace) -> int:

    statuses = _present(settings, args).status()
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
    names = argparse.Namespace(services=[args.service] if args.service else None)
    services = _present(settings, names).services
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
    stack = sub.add_parser(
        "stack", help="run the local Kafka and Cassandra (and Airflow, if asked) on 127.0.0.1"
    )
    ssub = stack.add_subparsers(dest="action", required=True, metavar="ACTION")
    services_help = (
        "services to act on: kafka, cassandra, airflow (its api-server, scheduler and "
        "dag-processor) or one of airflow-api-server, airflow-scheduler, "
        "airflow-dag-processor (default: kafka and cassandra, plus airflow when "
        "[stack] airflow is set or, but for up, when it runs)"
    )
    up = ssub.add_parser("up", help="fetch jars (first time), start services, wait until ready")
    up.add_argument("services", nargs="*", metavar="SERVICE", help=services_help)
    up.add_argument(
        "--no-spark",
        dest="with_spark",
        action="store_false",
        help="do not fetch Spark's Kafka connector jars",
    )
    up.add_argument(
        "--with-airflow",
        action="store_true",
        help="also start Airflow (API server with the UI, scheduler, DAG processor) on "
        "[airflow] host:port, running dags/ with these settings (as [stack] airflow = true)",
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
    logs.add_argument(
        "service",
        nargs="?",
        metavar="SERVICE",
        help="kafka, cassandra, airflow-api-server, airflow-scheduler or airflow-dag-processor",
    )
    logs.add_argument("-n", "--lines", type=int, default=50, help="lines to show (default 50)")
    logs.add_argument("--stdout", action="store_true", help="show the JVM's stdout instead")
    logs.set_defaults(func=cmd_stack_logs)
