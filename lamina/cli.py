"""The ``lamina`` command line: ``lamina stack ...``, ``lamina demo`` and friends.

Every :class:`~lamina.errors.LaminaError` is printed as one line on stderr (what is wrong
and how to fix it) with exit status 1; usage errors exit with 2, like argparse.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from lamina import __version__
from lamina.errors import LaminaError
from lamina.settings import Settings, load_settings

log = logging.getLogger("lamina")


def _say(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


# -- stack ------------------------------------------------------------------------------


def cmd_stack_up(settings: Settings, args: argparse.Namespace) -> int:
    from lamina.stack.manager import Stack

    stack = Stack(settings, args.services)
    t0 = time.monotonic()
    statuses = stack.up(progress=_say)
    if args.with_spark:
        from lamina.stack.fetch import ensure_bundle
        from lamina.stack.services import spark_connector_bundle

        ensure_bundle(spark_connector_bundle(), settings.stack.cache_dir)
    _say(f"stack up in {time.monotonic() - t0:.1f}s; logs under {settings.stack.state_dir}")
    for st in statuses:
        _say(f"  {st.name:<10} {st.host}:{st.port}  pid {st.pid}  log {st.log}")
    return 0


def cmd_stack_down(settings: Settings, args: argparse.Namespace) -> int:
    from lamina.stack.manager import Stack

    Stack(settings, args.services).down(progress=_say)
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
                s.name, f"[{colour}]{s.state}[/]", f"{s.host}:{s.port}",
                str(s.pid or "-"), s.version or "-", str(s.log),
            )  # fmt: skip
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


# -- demo -------------------------------------------------------------------------------


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from lamina.demo import run_demo

    return run_demo(settings, events=args.events, stop=args.stop, progress=_say)


# -- parser -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lamina",
        description="Lamina: a Lambda-architecture platform (Kafka, Spark, Cassandra, Airflow).",
    )
    p.add_argument("--version", action="version", version=f"lamina {__version__}")
    p.add_argument(
        "-c", "--config", type=Path, metavar="PATH",
        help="settings file (default: $LAMINA_CONFIG, else ./conf/lamina.toml)",
    )  # fmt: skip
    p.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    stack = sub.add_parser("stack", help="run the local Kafka and Cassandra on 127.0.0.1")
    ssub = stack.add_subparsers(dest="action", required=True, metavar="ACTION")
    services_help = "services to act on (default: all of kafka, cassandra)"
    up = ssub.add_parser("up", help="fetch jars (first time), start services, wait until ready")
    up.add_argument("services", nargs="*", metavar="SERVICE", help=services_help)
    up.add_argument(
        "--no-spark", dest="with_spark", action="store_false",
        help="do not fetch Spark's Kafka connector jars",
    )  # fmt: skip
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

    demo = sub.add_parser("demo", help="run the demo pipeline on the local stack")
    demo.add_argument("--events", type=int, default=20_000, help="events to produce")
    demo.add_argument("--stop", action="store_true", help="stop the stack at the end")
    demo.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # Client libraries narrate every connection at INFO; operators want Lamina's own lines.
    # The driver logs each refused connection of a readiness poll as an ERROR with a traceback.
    for noisy, quiet in (("kafka", logging.WARNING), ("cassandra", logging.CRITICAL),
                         ("py4j", logging.WARNING)):  # fmt: skip
        logging.getLogger(noisy).setLevel(logging.DEBUG if args.verbose else quiet)
    try:
        settings = load_settings(args.config)
        return int(args.func(settings, args))
    except LaminaError as exc:
        print(f"lamina: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("lamina: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
