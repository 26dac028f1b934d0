"""``lamina serve``: the HTTP API (serving's query routes plus the speed layer's ``/jobs``)."""

from __future__ import annotations

import argparse
from typing import Any

from lamina.cli.common import say
from lamina.context import load_catalog
from lamina.settings import Settings


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from serving.api import create_app
    from speed.api import jobs_router

    host = args.host or settings.serving.host
    # --host counts as serving.host, also for the default of serving.allowed_hosts.
    settings = settings.model_copy(
        update={"serving": settings.serving.model_copy(update={"host": host})}
    )
    catalog = load_catalog(settings)
    app = create_app(settings, catalog, routers=[jobs_router(settings, catalog)])
    port = args.port or settings.serving.port
    say(f"serving on http://{host}:{port} (OpenAPI docs at /docs)")
    uvicorn.run(app, host=host, port=port, log_level="warning")
    return 0


def register(sub: Any) -> None:
    """Add this group's commands to the ``lamina`` parser's subcommands."""
    serve = sub.add_parser("serve", help="run the HTTP query API (OpenAPI at /docs)")
    serve.add_argument("--host", help="default: serving.host")
    serve.add_argument("--port", type=int, help="default: serving.port")
    serve.set_defaults(func=cmd_serve)
