"""Who may talk to the HTTP API: the ``Host`` header check and the API's bearer tokens.

- :class:`TrustedHosts` answers a request whose ``Host`` header names none of
  ``serving.allowed_hosts`` (see :meth:`~lamina.settings.ServingSettings.trusted_hosts`) with
  the API's JSON error, status 400, before any route runs: a page whose name was rebound to
  127.0.0.1 (DNS rebinding) reaches nothing.
- :func:`read_guard` is the dependency of the read routes (the query routes here, the job
  reads in :mod:`speed.api`): with ``serving.read_token`` set they need
  ``Authorization: Bearer`` with it or ``serving.jobs_token`` (401 JSON otherwise); unset,
  they are open.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Coroutine
from typing import Any

from pydantic import SecretStr
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from lamina.errors import UnauthorizedError
from lamina.settings import Settings


def host_allowed(host: str, patterns: list[str]) -> bool:
    """True if ``host`` (lower case, IPv6 in brackets) matches one of ``patterns``: equal,
    ``*.example.com`` for any name ending in ``.example.com``, or ``*`` for any."""
    return any(
        p == "*" or host == p or (p.startswith("*.") and host.endswith(p[1:])) for p in patterns
    )


def host_of(header: str | None) -> str | None:
    """The host of a ``Host`` header (lower case, without the port; an IPv6 literal keeps its
    brackets), or ``None`` if there is none or it is malformed."""
    text = (header or "").strip().lower()
    if text.startswith("["):
        end = text.find("]")
        host, rest = text[: end + 1], text[end + 1 :]
        if end < 0 or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return None
        return host
    host, colon, port = text.partition(":")
    if not host or (colon and not port.isdigit()):
        return None
    return host


class TrustedHosts:
    """ASGI middleware: requests for another host get the API's JSON 400 (see module doc)."""

    def __init__(self, app: ASGIApp, allowed_hosts: list[str]) -> None:
        self.app = app
        self.allowed = [h.lower() for h in allowed_hosts]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            header = Headers(scope=scope).get("host")
            host = host_of(header)
            if host is None or not host_allowed(host, self.allowed):
                response = JSONResponse(
                    {
                        "error": f"this API does not answer for host {header or '(none)'!r}",
                        "hint": "call it by a name or address listed in serving.allowed_hosts "
                        "(LAMINA_SERVING__ALLOWED_HOSTS); default: loopback and serving.host",
                    },
                    status_code=400,
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def bearer(request: Request) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or ``None``."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def token_matches(given: str | None, tokens: list[SecretStr]) -> bool:
    """True if ``given`` is one of ``tokens`` (each compared in constant time)."""
    if given is None:
        return False
    ok = False
    for token in tokens:  # every token compared, in constant time each
        ok |= hmac.compare_digest(given.encode(), token.get_secret_value().encode())
    return ok


def read_guard(settings: Settings) -> Callable[[Request], Coroutine[Any, Any, None]]:
    """The dependency of the read routes (see module doc)."""
    serving = settings.serving
    tokens = (
        [t for t in (serving.read_token, serving.jobs_token) if t] if serving.read_token else []
    )

    async def guard(request: Request) -> None:
        if tokens and not token_matches(bearer(request), tokens):
            raise UnauthorizedError(
                "missing or wrong API token",
                hint="send 'Authorization: Bearer <token>' with the token of serving.read_token "
                "(or serving.jobs_token)",
            )

    return guard
