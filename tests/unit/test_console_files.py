"""The console's files are served from the package, with no request to another host: ``/``,
its script, style and vendored uPlot, and ``/docs`` on the vendored Swagger UI (FastAPI's
default loads it from a CDN). Without services: the app's lifespan is not started."""

from __future__ import annotations

import re
from pathlib import Path

from fastapi.testclient import TestClient

from lamina.settings import ServingSettings, Settings
from lamina.views import load_views
from serving.api import CONSOLE_DIR, create_app

ROOT = Path(__file__).resolve().parents[2]
CATALOG = load_views(ROOT / "conf" / "views.toml")
BASE = "http://127.0.0.1:8000"


def client() -> TestClient:
    return TestClient(create_app(Settings(), CATALOG), base_url=BASE)


def local_refs(html: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"]+)"', html)


def test_the_console_and_every_file_it_loads_are_served() -> None:
    c = client()
    page = c.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    refs = [r for r in local_refs(page.text) if not r.startswith("#")]
    assert "/console/vendor/uPlot-1.6.32.iife.min.js" in refs and "/console/console.js" in refs
    for ref in refs:
        assert ref.startswith("/"), f"{ref} is not on the API's own host"
        assert c.get(ref).status_code == 200, ref


def test_the_api_docs_load_swagger_ui_from_the_package() -> None:
    c = client()
    docs = c.get("/docs")
    assert docs.status_code == 200
    refs = re.findall(r"(?:href|src|url)[=:]\s*['\"]([^'\"]+)['\"]", docs.text)
    assert refs and all(r.startswith("/") for r in refs), refs
    for ref in refs:
        assert c.get(ref).status_code == 200, ref
    assert "/docs" not in c.get("/openapi.json").json()["paths"]


def test_the_vendored_files_carry_their_version_and_licence() -> None:
    vendor = CONSOLE_DIR / "vendor"
    assert (
        (vendor / "uPlot-1.6.32.iife.min.js")
        .read_text()
        .startswith("/*! https://github.com/leeoniya/uPlot (v1.6.32) */")
    )
    assert "MIT" in (vendor / "uPlot-1.6.32.LICENSE").read_text()
    assert "Apache License" in (vendor / "swagger-ui-5.35.0.LICENSE").read_text()


def test_the_console_needs_no_token_but_the_data_does() -> None:
    s = Settings()
    settings = s.model_copy(update={"serving": ServingSettings(read_token="r" * 32)})
    c = TestClient(create_app(settings, CATALOG), base_url=BASE)
    assert c.get("/").status_code == 200
    assert c.get("/console/console.js").status_code == 200
    assert c.get("/views").status_code == 401


def test_a_foreign_host_gets_no_console() -> None:
    c = TestClient(create_app(Settings(), CATALOG), base_url="http://attacker.example")
    assert c.get("/").status_code == 400
    assert c.get("/console/console.js").status_code == 400
