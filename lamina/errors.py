"""The one exception hierarchy of Lamina: every error a user can cause or meet."""

from __future__ import annotations


class LaminaError(Exception):
    """Base of every error Lamina raises on purpose.

    The message says what is wrong and how to fix it; the CLI prints it as one line and
    exits non-zero, the HTTP API maps it to a status code (see ``http_status``).
    """

    http_status: int = 500

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message} ({hint})")


class ConfigError(LaminaError, ValueError):
    """A configuration file or environment override is invalid."""

    http_status = 400


class PrerequisiteError(LaminaError, RuntimeError):
    """Something the machine must provide (Java 17, Maven, Python 3.11-3.13) is missing."""


class FetchError(LaminaError, RuntimeError):
    """Downloading the service jars failed."""


class StackError(LaminaError, RuntimeError):
    """A local service failed to start, stop or answer.

    ``log`` is the path of the service's log file, when there is one.
    """

    def __init__(self, message: str, *, hint: str | None = None, log: str | None = None) -> None:
        self.log = log
        if log is not None:
            hint = f"{hint}; see {log}" if hint else f"see {log}"
        super().__init__(message, hint=hint)


class PortInUseError(StackError):
    """A port the stack needs is taken by a process the stack did not start."""


class ViewDefinitionError(ConfigError):
    """A view or source definition is invalid; the message names the view, field and fix."""


class QueryError(LaminaError, ValueError):
    """A query is malformed (bad range, granularity, parameter): HTTP 400."""

    http_status = 400


class NotFoundError(LaminaError, LookupError):
    """An unknown view, key or version: HTTP 404."""

    http_status = 404


class PublishError(LaminaError, RuntimeError):
    """A batch could not be published (the published version is left untouched)."""


class StoreUnavailableError(LaminaError, RuntimeError):
    """The serving store (Cassandra) cannot be reached or does not answer in time: HTTP 503.

    A condition of the deployment, not of the request: the same request succeeds once the
    store answers again.
    """

    http_status = 503


class ViewNotReadyError(LaminaError, RuntimeError):
    """A view cannot be answered exactly right now: its published batch version or its
    real-time table was built under another definition, or is being rebuilt (HTTP 503).

    A transition, not a fault of the request: the message names what is missing and the
    hint the step that ends it (``lamina batch run --view V``, restarting the source job).
    """

    http_status = 503


class ConflictError(LaminaError, RuntimeError):
    """The request collides with something running (e.g. a checkpoint already in use)."""

    http_status = 409


class UnauthorizedError(LaminaError, PermissionError):
    """A request lacks the credentials (API token) an operation requires."""

    http_status = 401


class ForbiddenError(LaminaError, PermissionError):
    """A request is refused whatever its credentials (e.g. a cross-origin job change)."""

    http_status = 403


class StaleViewError(LaminaError, RuntimeError):
    """A view's published batch is older than its ``max_staleness_s`` allows (or missing).

    ``view``, ``age_s`` (``None`` when nothing is published) and ``limit_s`` say by how much.
    """

    def __init__(
        self, message: str, *, view: str, age_s: float | None, limit_s: float, hint: str | None
    ) -> None:
        self.view = view
        self.age_s = age_s
        self.limit_s = limit_s
        super().__init__(message, hint=hint)


class DataLossError(LaminaError, RuntimeError):
    """Kafka deleted records (retention) before the source job archived them."""
