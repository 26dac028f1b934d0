"""The ``lamina`` command line: one module per command group, each importing its layer
lazily (inside the command), so ``lamina --help`` and ``lamina stack`` start no JVM and
load no engine.

Every :class:`~lamina.errors.LaminaError` is printed as one line on stderr (what is wrong
and how to fix it) with exit status 1; usage errors exit with 2, like argparse.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from lamina import __version__, console
from lamina.cli import batch, demo, query, serve, stack, stream
from lamina.cli.common import outage_error, use_progress
from lamina.cli.progress import StderrNowHandler, cli_progress
from lamina.errors import LaminaError
from lamina.settings import load_settings

GROUPS = (stack, query, batch, stream, serve, demo)
"""Command groups, in ``--help`` order."""


def build_parser() -> argparse.ArgumentParser:
    """The ``lamina`` parser with every group's commands."""
    p = argparse.ArgumentParser(
        prog="lamina",
        description="Lamina: a Lambda-architecture platform (Kafka, Spark, Cassandra, Airflow).",
    )
    p.add_argument("--version", action="version", version=f"lamina {__version__}")
    p.add_argument(
        "-c",
        "--config",
        type=Path,
        metavar="PATH",
        help="settings file (default: $LAMINA_CONFIG, else ./conf/lamina.toml)",
    )
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="log debug details, and show Spark's output and dependencies' warnings (by "
        "default Spark's output goes to <state dir>/logs/spark.log)",
    )
    p.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="print only results and errors: no status lines, no progress",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for group in GROUPS:
        group.register(sub)
    return p


OWN_MODULES = r"(lamina|batch|speed|serving|engine|dags)(\.|$)"
"""Lamina's own packages: their warnings always show."""


@contextmanager
def quiet_output(settings_dir: Path | None) -> Iterator[None]:
    """For the block: dependencies' Python warnings hidden (a newcomer's console shows
    Lamina's own lines; ``--verbose`` shows them), also in the processes started meanwhile
    (Spark's Python workers) through ``PYTHONWARNINGS``, and the output of a JVM started
    meanwhile sent to ``<settings_dir>/logs/spark.log``. Everything is restored after (the
    CLI may run inside another program, a test)."""
    from lamina.console import send_jvm_output_to

    before_env, before_log = os.environ.get("PYTHONWARNINGS"), console.JVM_LOG
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore")
        warnings.filterwarnings("default", module=OWN_MODULES)
        os.environ.setdefault("PYTHONWARNINGS", "ignore")
        if settings_dir is not None:
            send_jvm_output_to(settings_dir / "logs" / "spark.log")
        try:
            yield
        finally:
            send_jvm_output_to(before_log)
            if before_env is None:
                os.environ.pop("PYTHONWARNINGS", None)
            else:
                os.environ["PYTHONWARNINGS"] = before_env


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        handlers=[StderrNowHandler()],
    )
    # Client libraries narrate every connection at INFO; operators want Lamina's own lines.
    # The driver logs each refused connection of a readiness poll as an ERROR with a traceback.
    for noisy, quiet in (
        ("kafka", logging.CRITICAL),  # its connection errors: the command reports the outcome
        ("cassandra", logging.CRITICAL),
        ("py4j", logging.WARNING),
    ):
        logging.getLogger(noisy).setLevel(logging.DEBUG if args.verbose else quiet)
    before = use_progress(cli_progress(quiet=args.quiet))
    try:
        settings = None
        try:
            settings = load_settings(args.config)
            if args.verbose:
                return int(args.func(settings, args))
            with quiet_output(settings.stack.state_dir):
                return int(args.func(settings, args))
        except LaminaError as exc:
            print(f"lamina: error: {exc}", file=sys.stderr)
            return 1
        except Exception as exc:
            outage = None if settings is None else outage_error(settings, exc)
            if outage is None:
                raise  # a bug: its traceback is what a report needs
            print(f"lamina: error: {outage}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("lamina: interrupted", file=sys.stderr)
            return 130
    finally:
        use_progress(before)  # the CLI may run inside another program, a test


if __name__ == "__main__":
    sys.exit(main())
