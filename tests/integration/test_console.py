"""The console at ``/`` in a real browser (headless Debian Chromium through Selenium) against
``lamina serve`` on the real stack: every page loads with no JavaScript error, the chart plots
exactly the API's answer (batch and real-time buckets apart), the staleness badge is red for a
stale view, a bad key shows the API's message, and the token field opens a guarded API.

The world is the module's own: cloud_metering and iot_temperature imported and published
(web_pageviews never published), real-time rows of cloud_metering after the batch cutoff, and
a views file where iot_temperature is stale after 1 s. Screenshots of each page go to
``test-output/screenshots/`` (git-ignored); the README's ``docs/console-view.png`` is a copy
of the view page's.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from lamina.settings import Settings
from serving.schema import insert_cql, realtime_table
from serving.store import open_store
from tests import truth
from tests.conftest import ROOT
from tests.integration.conftest import drop_world, make_world

SHOTS = ROOT / "test-output" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# This machine's closed network stalls a Chromium that reaches out (updates, sync, QUIC).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1000",
]
TOKEN = "console-test-token"
HOUR = 3600
LAST_BATCH = truth.BASE // HOUR * HOUR  # metering events are up to 5 h before BASE
RANGE = {"from": str(truth.BASE - 6 * HOUR), "to": str(truth.BASE + 4 * HOUR)}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def console_world(
    stack: Settings, tmp_path_factory: pytest.TempPathFactory, spark: Any
) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("console")
    w = make_world(stack, tmp, spark, n=600, views=["cloud_metering", "iot_temperature"])
    settings, catalog = w["settings"], w["catalog"]
    view = catalog.view("cloud_metering")
    with open_store(settings.cassandra, catalog) as store:
        pub = store.published(view)
        assert pub is not None
        stmt = store.session.prepare(
            insert_cql(view, f"{settings.cassandra.keyspace}.{realtime_table(view)}", realtime=True)
        )
        # The speed layer's rows after the cutoff: one in the batch's last bucket (merged
        # with it), three in later buckets (real time only).
        for i, bucket in enumerate(LAST_BATCH + h * HOUR for h in range(4)):
            store.session.execute(stmt, ("c1", bucket, pub.cutoff, 600 * (i + 1), i + 2))
    views = (ROOT / "conf" / "views.toml").read_text()
    marker = '[views.iot_temperature]\nsource = "sensors"\n'
    assert marker in views
    views_file = tmp / "views.toml"
    views_file.write_text(views.replace(marker, marker + "max_staleness_s = 1\n"))
    w["env"] = {
        "LAMINA_CASSANDRA__KEYSPACE": settings.cassandra.keyspace,
        "LAMINA_PIPELINE__MASTER_DIR": str(settings.master_dir),
        "LAMINA_PIPELINE__VIEWS_FILE": str(views_file),
    }
    yield w
    drop_world(w)


def serve(env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    """``lamina serve`` on a free port with ``env``; its process and base URL once healthy."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "lamina.cli", "serve", "--port", str(port)],
        env={**os.environ, **env},
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "lamina serve never got healthy"
        time.sleep(0.3)


@pytest.fixture(scope="module")
def server(console_world: dict[str, Any]) -> Iterator[str]:
    proc, base = serve(console_world["env"])
    try:
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    """One headless Chromium for the module, with a fresh profile; its console log kept."""
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail("Debian's chromium and chromium-driver are missing: `make test` installs them")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in CHROMIUM_ARGS:
        opts.add_argument(arg)
    opts.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    SHOTS.mkdir(parents=True, exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()


def open_page(driver: WebDriver, url: str, shot: str) -> list[dict[str, Any]]:
    """Load ``url``, wait until the console has drawn it, screenshot it as ``shot``.png;
    returns the browser log's entries of that load."""
    driver.get_log("browser")  # drop what earlier pages logged
    driver.get("about:blank")
    driver.get(url)
    WebDriverWait(driver, 20).until(
        lambda d: d.execute_script("return document.body.dataset.ready === '1'")
    )
    driver.save_screenshot(str(SHOTS / f"{shot}.png"))
    return list(driver.get_log("browser"))


def errors(log: list[dict[str, Any]], *, allow_http_errors: bool = False) -> list[str]:
    """The log's errors (SEVERE entries): JavaScript errors always, and failed requests
    unless ``allow_http_errors`` (a page showing the API's 4xx answer logs its request)."""
    return [
        e["message"]
        for e in log
        if e["level"] == "SEVERE" and not (allow_http_errors and e.get("source") == "network")
    ]


@pytest.mark.parametrize(
    ("page", "expect"),
    [
        ("", "#views"),
        ("#/streams", "#streams"),
        ("#/deadletters", "h2"),
        ("#/batch", "table.versions"),
    ],
)
def test_every_page_loads_without_javascript_errors(
    browser: WebDriver, server: str, page: str, expect: str
) -> None:
    log = open_page(browser, f"{server}/{page}", "page-" + (page.strip("#/") or "views"))
    assert errors(log) == []
    assert browser.find_elements(By.CSS_SELECTOR, expect), browser.page_source[:2000]
    assert not browser.find_elements(By.CSS_SELECTOR, ".error")


def test_the_api_docs_load_from_the_package(browser: WebDriver, server: str) -> None:
    """``/docs`` is Swagger UI from the vendored files (nothing from a CDN)."""
    browser.get_log("browser")
    browser.get(f"{server}/docs")
    WebDriverWait(browser, 20).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")
    )
    browser.save_screenshot(str(SHOTS / "docs.png"))
    assert errors(list(browser.get_log("browser"))) == []
    scripts = browser.execute_script(
        "return [...document.querySelectorAll('script[src],link[href]')].map(e => e.src || e.href)"
    )
    assert scripts and all(s.startswith(server) for s in scripts), scripts


def test_the_chart_plots_the_apis_answer(browser: WebDriver, server: str) -> None:
    """The points of the chart are the API's merged answer for the same key and range, each
    bucket in the series of where it came from (batch, or the speed layer after the cutoff)."""
    params = "key=c1&agg=instance_seconds&from={from}&to={to}".format(**RANGE)
    log = open_page(browser, f"{server}/#/view/cloud_metering?{params}", "page-view")
    assert errors(log) == []
    chart = browser.execute_script("return window.laminaChart")
    want = httpx.get(
        f"{server}/views/cloud_metering/query", params={"key": "c1", **RANGE}, timeout=30
    ).json()
    points = [
        {
            "bucket_start": b["bucket_start"],
            "value": b["values"]["instance_seconds"],
            "from_batch": b["from_batch"],
            "realtime_epochs": b["realtime_epochs"],
        }
        for b in want["results"][0]["buckets"]
    ]
    assert chart["points"] == points
    assert chart["cutoff"] == want["provenance"]["cutoff"]
    # Both contributions are there: batch buckets, a merged one, three real-time only.
    assert [p["bucket_start"] for p in points if not p["from_batch"]] == [
        LAST_BATCH + h * HOUR for h in (1, 2, 3)
    ]
    mixed = [p for p in points if p["from_batch"] and p["realtime_epochs"]]
    assert [p["bucket_start"] for p in mixed] == [LAST_BATCH]
    # The uPlot series hold exactly those values, split by provenance.
    series = browser.execute_script("return window.laminaChart.series")
    assert series["x"] == [p["bucket_start"] for p in points]
    assert series["batch"] == [p["value"] if p["from_batch"] else None for p in points]
    assert series["realtime"] == [None if p["from_batch"] else p["value"] for p in points]
    rows = browser.find_elements(By.CSS_SELECTOR, "#top-table tbody tr")
    top = httpx.get(
        f"{server}/views/cloud_metering/top",
        params={"by": "instance_seconds", "limit": 10, **RANGE},
        timeout=30,
    ).json()
    assert [r.find_elements(By.TAG_NAME, "td")[1].text for r in rows] == [
        r["key"] for r in top["results"]
    ]
    shutil.copyfile(SHOTS / "page-view.png", SHOTS / "console-view.png")


def test_the_quantile_slider_asks_the_api_for_that_quantile(
    browser: WebDriver, server: str
) -> None:
    params = "key=s1&agg=temp_q&q=0.9&granularity=hour&from={from}&to={to}".format(**RANGE)
    log = open_page(browser, f"{server}/#/view/iot_temperature?{params}", "page-view-quantile")
    assert errors(log) == []
    slider = browser.find_element(By.ID, "q")
    assert slider.get_attribute("value") == "0.9"
    chart = browser.execute_script("return window.laminaChart")
    want = httpx.get(
        f"{server}/views/iot_temperature/query",
        params={"key": "s1", "q": "0.9", "granularity": "hour", **RANGE},
        timeout=30,
    ).json()
    assert chart["q"] == 0.9
    assert [p["value"] for p in chart["points"]] == [
        b["values"]["temp_q"] for b in want["results"][0]["buckets"]
    ]


def test_a_stale_view_has_a_red_badge(browser: WebDriver, server: str) -> None:
    deadline = time.monotonic() + 30
    while not httpx.get(f"{server}/views/iot_temperature").json()["published"]["stale"]:
        assert time.monotonic() < deadline, "iot_temperature never became stale"
        time.sleep(0.5)
    log = open_page(browser, f"{server}/", "page-views-stale")
    assert errors(log) == []
    stale = browser.find_element(By.ID, "stale-iot_temperature")
    fresh = browser.find_element(By.ID, "stale-cloud_metering")
    never = browser.find_element(By.ID, "stale-web_pageviews")
    assert (stale.text, fresh.text, never.text) == ("stale", "fresh", "never published")
    assert stale.value_of_css_property("background-color") == "rgba(198, 40, 40, 1)"
    assert fresh.value_of_css_property("background-color") != "rgba(198, 40, 40, 1)"


def test_a_bad_key_shows_the_apis_message(browser: WebDriver, server: str) -> None:
    params = "key=nobody&from={from}&to={to}".format(**RANGE)
    log = open_page(browser, f"{server}/#/view/cloud_metering?{params}", "page-view-bad-key")
    assert errors(log, allow_http_errors=True) == []
    answer = httpx.get(
        f"{server}/views/cloud_metering/query", params={"key": "nobody", **RANGE}, timeout=30
    )
    assert answer.status_code == 404
    shown = browser.find_element(By.CSS_SELECTOR, "#chart .error").text
    assert answer.json()["error"] in shown and answer.json()["hint"] in shown


def test_batch_versions_route_lists_the_stores_versions(
    server: str, console_world: dict[str, Any]
) -> None:
    """``GET /batch/versions`` (the batch page): each view's versions as the store has them,
    the published one marked, with its reconciliation verdict."""
    settings, catalog = console_world["settings"], console_world["catalog"]
    answer = httpx.get(f"{server}/batch/versions", timeout=30).json()
    assert [v["view"] for v in answer] == list(catalog.views)
    with open_store(settings.cassandra, catalog) as store:
        for entry in answer:
            view = catalog.view(entry["view"])
            pub = store.published(view)
            want = store.versions(view)
            assert entry["published"] == (None if pub is None else pub.version)
            assert [
                (v["version"], v["state"], v["cutoff"], v["rows"]) for v in entry["versions"]
            ] == [(v.version, v.state, v.cutoff, v.rows) for v in want]
            for v in entry["versions"]:
                assert v["published"] == (v["version"] == entry["published"])
                rec = v["reconciliation"]
                assert rec["publishable"] is True and rec["diverged"] == "none", rec


def test_the_console_sends_the_token_it_is_given(
    browser: WebDriver, console_world: dict[str, Any]
) -> None:
    """With ``serving.read_token`` set, the views page says what the API said (401) until
    the token is saved in the page, then shows the views."""
    proc, base = serve({**console_world["env"], "LAMINA_SERVING__READ_TOKEN": TOKEN})
    try:
        for route in ("/streams", "/deadletters", "/batch/versions"):
            assert httpx.get(base + route, timeout=30).status_code == 401, route
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert httpx.get(base + "/batch/versions", headers=auth, timeout=30).status_code == 200
        assert httpx.get(base + "/", timeout=30).status_code == 200  # the page itself is open
        log = open_page(browser, f"{base}/", "page-token-missing")
        assert errors(log, allow_http_errors=True) == []
        assert "missing or wrong API token" in browser.find_element(By.ID, "error").text
        browser.find_element(By.ID, "token").send_keys(TOKEN)
        browser.execute_script("delete document.body.dataset.ready")
        browser.find_element(By.CSS_SELECTOR, "#token-form button").click()
        WebDriverWait(browser, 20).until(
            lambda d: d.execute_script("return document.body.dataset.ready === '1'")
        )
        assert browser.find_elements(By.ID, "stale-cloud_metering")
        assert errors(list(browser.get_log("browser"))) == []
    finally:
        browser.execute_script("localStorage.clear()")
        proc.terminate()
        proc.wait(timeout=30)
