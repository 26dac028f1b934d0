"""Connections to Cassandra, configured from :class:`lamina.settings.CassandraSettings`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from cassandra import (
    AuthenticationFailed,
    ConsistencyLevel,
    OperationTimedOut,
    Timeout,
    Unavailable,
)
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import (
    EXEC_PROFILE_DEFAULT,
    Cluster,
    ExecutionProfile,
    NoHostAvailable,
    ResponseFuture,
    Session,
)
from cassandra.connection import ConnectionException
from cassandra.policies import (
    DCAwareRoundRobinPolicy,
    ExponentialReconnectionPolicy,
    TokenAwarePolicy,
)
from cassandra.query import tuple_factory

from lamina.errors import ConfigError, StoreUnavailableError
from lamina.settings import CassandraSettings

TUPLES = "lamina_tuples"
"""Execution profile whose rows are plain tuples (no named-tuple class per result): for the
hot read paths that index columns by position (:meth:`serving.store.Store.read_slices`)."""

PROTOCOL_VERSION = 4
"""Native protocol v4. Cassandra 5 speaks v5 too, but the Python driver's v5 framing
(checksummed segments) failed under concurrent writes from Spark workers here with
"CRC mismatch on header"; v4 has no such framing and is what the driver is proven with."""

# The driver logs a warning per connection attempt while a node is starting; readiness
# polling makes those noise, the caller reports the outcome. (A process that chose a level
# already, such as the CLI, keeps it.)
if logging.getLogger("cassandra").level == logging.NOTSET:
    logging.getLogger("cassandra").setLevel(logging.ERROR)


def _consistency(name: str) -> int:
    try:
        return int(ConsistencyLevel.name_to_value[name.upper()])
    except KeyError:
        raise ConfigError(
            f"cassandra.consistency: unknown consistency level {name!r}",
            hint="use one of " + ", ".join(sorted(ConsistencyLevel.name_to_value)),
        ) from None


def cluster(
    settings: CassandraSettings, *, timeout_s: float = 10.0, reconnect_max_s: float | None = None
) -> Cluster:
    """A driver ``Cluster`` for the configured contact point (not yet connected).

    Once connected, the driver reconnects to a node that went down by itself, waiting
    longer after each failed attempt: by default up to 10 minutes between attempts (the
    driver's policy), with ``reconnect_max_s`` at most that long and without ever giving up,
    for long-lived processes that must answer again soon after an outage.
    """
    profiles = {
        name: ExecutionProfile(
            load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy()),
            consistency_level=_consistency(settings.consistency),
            request_timeout=timeout_s,
            **extra_profile,
        )
        for name, extra_profile in (
            (EXEC_PROFILE_DEFAULT, {}),
            (TUPLES, {"row_factory": tuple_factory}),
        )
    }
    extra: dict[str, Any] = {}
    if reconnect_max_s is not None:
        extra["reconnection_policy"] = ExponentialReconnectionPolicy(
            base_delay=min(0.5, reconnect_max_s), max_delay=reconnect_max_s, max_attempts=None
        )
    if settings.username is not None and settings.password is not None:
        extra["auth_provider"] = PlainTextAuthProvider(
            settings.username, settings.password.get_secret_value()
        )
    return Cluster(
        [settings.host],
        port=settings.port,
        protocol_version=PROTOCOL_VERSION,
        execution_profiles=profiles,
        connect_timeout=timeout_s,
        control_connection_timeout=timeout_s,
        **extra,
    )


def rows_async(future: ResponseFuture) -> asyncio.Future[list[Any]]:
    """Every row of a request sent with ``Session.execute_async`` (all its pages), as a future
    of the running event loop: the driver's I/O thread completes it, the loop's thread never
    blocks. Its exception is the driver's (an outage, a rejected statement)."""
    loop = asyncio.get_running_loop()
    out: asyncio.Future[list[Any]] = loop.create_future()
    rows: list[Any] = []

    def settle(result: list[Any] | None, exc: BaseException | None) -> None:
        if out.done():  # cancelled meanwhile (the request went away)
            return
        if exc is not None:
            out.set_exception(exc)
        else:
            out.set_result(rows if result is None else result)

    def hand_over(result: list[Any] | None, exc: BaseException | None) -> None:
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
            loop.call_soon_threadsafe(settle, result, exc)

    def page(result: Any) -> None:
        try:
            rows.extend(result)
            if future.has_more_pages:
                future.start_fetching_next_page()
                return
        except BaseException as exc:  # handed to the awaiting coroutine
            hand_over(None, exc)
            return
        hand_over(rows, None)

    def failed(exc: BaseException) -> None:
        hand_over(None, exc)

    future.add_callbacks(page, failed)
    return out


_OUTAGES: tuple[tuple[type[BaseException], str], ...] = (
    (NoHostAvailable, "cannot be reached"),
    (ConnectionException, "cannot be reached"),
    (OperationTimedOut, "did not answer in time"),
    (Timeout, "did not answer in time"),
    (Unavailable, "has too few live replicas"),
)
OUTAGE_ERRORS: tuple[type[BaseException], ...] = tuple(kind for kind, _ in _OUTAGES)
"""What the driver raises while Cassandra is down, restarting or short of replicas: worth
trying again later (:func:`unavailable` names it)."""


def credentials_refused(exc: BaseException) -> str | None:
    """The server's words when ``exc`` says Cassandra refused to authenticate this client
    (wrong or missing username/password): the driver reports it as ``AuthenticationFailed``,
    wrapped in ``NoHostAvailable`` when connecting; ``None`` for anything else."""
    if isinstance(exc, NoHostAvailable):
        # Per host when connecting; the driver also raises it with a plain list of hosts.
        errors = exc.errors
        causes = list(errors.values()) if isinstance(errors, dict) else []
        if causes and all(isinstance(c, AuthenticationFailed) for c in causes):
            text = str(causes[0])
            return text.split("message=", 1)[-1].strip("\"') ") if "message=" in text else text
    if isinstance(exc, AuthenticationFailed):
        return str(exc)
    return None


def unavailable(settings: CassandraSettings, exc: BaseException) -> StoreUnavailableError | None:
    """The :class:`StoreUnavailableError` (HTTP 503) that ``exc``, raised by the driver,
    means, naming Cassandra's configured address; ``None`` if ``exc`` is no outage (a
    rejected statement, a bug), which the caller re-raises.

    Outages: no node can be reached (refused, down, or not connected yet), a request timed
    out, or too few replicas are alive for the consistency level.
    """
    address = f"{settings.host}:{settings.port}"
    refused = credentials_refused(exc)
    if refused is not None:
        if settings.username is None:
            return StoreUnavailableError(
                f"Cassandra at {address} requires a username and password ({refused})",
                hint="set cassandra.username and cassandra.password "
                "(LAMINA_CASSANDRA__USERNAME / LAMINA_CASSANDRA__PASSWORD)",
            )
        return StoreUnavailableError(
            f"Cassandra at {address} refused the credentials of cassandra.username "
            f"{settings.username!r} ({refused})",
            hint="check cassandra.username and cassandra.password (LAMINA_CASSANDRA__PASSWORD)",
        )
    for kind, what in _OUTAGES:
        if isinstance(exc, kind):
            return StoreUnavailableError(
                f"the store is unavailable: Cassandra at {address} {what} ({type(exc).__name__})",
                hint=f"check that Cassandra at {address} runs (lamina stack status on the dev"
                " stack); the API reconnects by itself: retry in a few seconds",
            )
    return None


@contextmanager
def session(settings: CassandraSettings, keyspace: str | None = None) -> Iterator[Session]:
    """Connect, yield a session (optionally bound to ``keyspace``), always shut down."""
    c = cluster(settings)
    try:
        yield c.connect(keyspace)
    finally:
        c.shutdown()


_SHARED: dict[tuple[int, CassandraSettings, str | None], tuple[Cluster, Session]] = {}


def shared_session(settings: CassandraSettings, keyspace: str | None = None) -> Session:
    """A session kept for the life of this process (one per pid: never shared across fork).

    For Spark tasks: a reused Python worker connects once, not once per micro-batch; for
    source jobs, whose micro-batches wait out an outage: after one, the driver tries the
    node again at most 2 s apart.
    """
    import os

    key = (os.getpid(), settings, keyspace)
    found = _SHARED.get(key)
    if found is None or found[1].is_shutdown:
        c = cluster(settings, reconnect_max_s=2.0)
        found = _SHARED[key] = (c, c.connect(keyspace))
    return found[1]


def close_shared() -> None:
    """Shut down this process's shared sessions (a process that used them calls this before
    it exits: the driver's scheduler thread otherwise fails noisily at interpreter exit)."""
    import os

    for key in [k for k in _SHARED if k[0] == os.getpid()]:
        cluster_, _ = _SHARED.pop(key)
        cluster_.shutdown()


def release_version(settings: CassandraSettings) -> str:
    """Ask the node for its version with a real CQL query (the readiness probe)."""
    with session(settings) as s:
        row = s.execute("SELECT release_version FROM system.local").one()
        return str(row.release_version)


def ensure_keyspace(s: Session, settings: CassandraSettings) -> None:
    """Create the configured keyspace if missing (SimpleStrategy, configured RF)."""
    s.execute(
        f"CREATE KEYSPACE IF NOT EXISTS {settings.keyspace} WITH replication = "
        f"{{'class': 'SimpleStrategy', 'replication_factor': {settings.replication_factor}}}"
    )
