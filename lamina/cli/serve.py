"""``lamina serve``: the HTTP API and its console (serving's query routes and console, the
speed layer's ``/jobs``, ``/streams`` and ``/deadletters``, the batch layer's
``/batch/versions``)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from lamina.cli.common import positive, say
from lamina.context import load_catalog
from lamina.settings import CONFIG_ENV, Settings, load_settings

HOST_ENV = "LAMINA_SERVING__HOST"


def app() -> Any:
    """The app of one ``lamina serve`` worker process (``uvicorn`` calls it in each worker
    when ``--workers`` is more than 1): the settings from ``$LAMINA_CONFIG`` and the
    ``LAMINA_*`` environment, which the parent process set to what it was started with."""
    return _app(load_settings())


def _app(settings: Settings) -> Any:
    from batch.api import versions_router
    from serving.api import create_app
    from speed.api import jobs_router, status_router

    catalog = load_catalog(settings)
    routers = [
        jobs_router(settings, catalog),
        status_router(settings, catalog),
        versions_router(settings, catalog),
    ]
    return create_app(settings, catalog, routers=routers)


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    host = args.host or settings.serving.host
    # --host counts as serving.host, also for the default of serving.allowed_hosts.
    settings = settings.model_copy(
        update={"serving": settings.serving.model_copy(update={"host": host})}
    )
    port = args.port or settings.serving.port
    workers = args.workers or settings.serving.workers
    # uvloop's event loop and httptools' HTTP parser (both dependencies): the fast pair.
    fast: dict[str, Any] = {"loop": "uvloop", "http": "httptools", "log_level": "warning"}
    if workers == 1:
        application = _app(settings)
        say(f"serving on http://{host}:{port}: console at /, OpenAPI docs at /docs")
        uvicorn.run(application, host=host, port=port, **fast)
        return 0
    # Each worker is a new process that builds its own app (own Cassandra session): it
    # reads the same settings file and environment, with --host passed on.
    load_catalog(settings)  # a broken views file fails here, once, not in every worker
    if args.config is not None:
        os.environ[CONFIG_ENV] = str(args.config.resolve())
    os.environ[HOST_ENV] = host
    say(
        f"serving on http://{host}:{port} with {workers} worker processes: console at /, "
        "OpenAPI docs at /docs"
    )
    uvicorn.run("lamina.cli.serve:app", factory=True, host=host, port=port, workers=workers, **fast)
    return 0


def register(sub: Any) -> None:
    """Add this group's commands to the ``lamina`` parser's subcommands."""
    serve = sub.add_parser(
        "serve", help="run the HTTP query API and its console (console at /, OpenAPI at /docs)"
    )
    serve.add_argument("--host", help="default: serving.host")
    serve.add_argument("--port", type=int, help="default: serving.port")
    serve.add_argument(
        "--workers",
        type=positive,
        metavar="N",
        help="worker processes sharing the port (default: serving.workers, 1)",
    )
    serve.set_defaults(func=cmd_serve)
