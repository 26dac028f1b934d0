"""What the command groups share: output helpers and argument types."""

from __future__ import annotations

import argparse
import time
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from lamina.context import load_catalog
from lamina.errors import ConfigError, LaminaError, PrerequisiteError
from lamina.progress import Progress
from lamina.settings import Settings

if TYPE_CHECKING:
    from lamina.views import Source
    from serving.store import Store


_PROGRESS = Progress(lambda message: print(f"{time.strftime('%H:%M:%S')} {message}", flush=True))


def use_progress(progress: Progress) -> Progress:
    """Where :func:`say` and :func:`progress` report from now on (set by
    :func:`lamina.cli.main` for a command from ``--quiet`` and the terminal:
    :func:`lamina.cli.progress.cli_progress`); returns the one before."""
    global _PROGRESS
    before, _PROGRESS = _PROGRESS, progress
    return before


def progress() -> Progress:
    """The command's progress: live on a terminal, plain lines otherwise, nothing quiet."""
    return _PROGRESS


def say(message: str) -> None:
    """A status line of the command (a timestamped line; nothing with ``--quiet``)."""
    _PROGRESS.note(message)


def find_source(settings: Settings, name: str) -> Source:
    catalog = load_catalog(settings)
    if name not in catalog.sources:
        raise ConfigError(
            f"unknown source {name!r}", hint=f"declared sources: {', '.join(catalog.sources)}"
        )
    return catalog.sources[name]


def connect_store(settings: Settings) -> AbstractContextManager[Store]:
    from serving.store import open_store

    return open_store(settings.cassandra)


def fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e6 else f"{v:.0f}"
    return "null" if v is None else str(v)


def age(ts: float | None) -> str:
    return "-" if ts is None else f"{time.time() - ts:.0f}s ago"


def print_job(job: dict[str, object]) -> None:
    print(
        f"{job['id']:<40} {job['what']:<16} {job['state']:<10} {job['master']:<10} "
        f"pid {job['driver_pid'] or job['launcher_pid'] or '-'!s:<8} "
        f"{job['app_id'] or '-'!s:<24} restarts {job['restarts']}"
    )


def non_negative(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 0")
    return n


def positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return n


def outage_error(settings: Settings, exc: Exception) -> LaminaError | None:
    """A Kafka or Cassandra client error that means the service is down or unreachable, as
    the one-line error a command prints (``None``: not an outage)."""
    from kafka.errors import KafkaConnectionError, KafkaTimeoutError, SaslAuthenticationFailedError

    from lamina.process import port_open
    from serving.cassandra import unavailable

    k = settings.kafka
    login = f"kafka.username {k.username!r} ({k.sasl_mechanism})" if k.username else "TLS"
    check = (
        "check kafka.username, kafka.password (LAMINA_KAFKA__PASSWORD), kafka.sasl_mechanism "
        "and kafka.security_protocol; the broker's log names a failed login "
        "('Failed authentication')"
    )
    if isinstance(exc, SaslAuthenticationFailedError):
        return PrerequisiteError(
            f"Kafka at {k.bootstrap_servers} refused the login of {login} ({exc})", hint=check
        )
    if (
        isinstance(exc, KafkaConnectionError | KafkaTimeoutError)
        and k.security_protocol != "PLAINTEXT"
        and port_open(k.host, k.port)
    ):
        # The broker closes a connection whose login failed without a word kafka-python
        # passes on, so a refused login looks like a broker that does not answer: say both.
        return PrerequisiteError(
            f"could not talk to Kafka at {k.bootstrap_servers} with kafka.security_protocol "
            f"{k.security_protocol} and {login} ({type(exc).__name__}): its port is open, "
            "so either the broker is not answering (starting, overloaded) or the credentials "
            "or security settings do not match the broker's",
            hint=f"check that the broker runs and answers (lamina stack status on the dev "
            f"stack), then {check}",
        )
    if isinstance(exc, KafkaConnectionError | KafkaTimeoutError):
        return PrerequisiteError(
            f"Kafka at {settings.kafka.bootstrap_servers} cannot be reached or did not answer "
            f"in time ({type(exc).__name__})",
            hint="check that it runs (lamina stack status on the dev stack)",
        )
    return unavailable(settings.cassandra, exc)
