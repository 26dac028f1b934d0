"""The ``/jobs`` API's guards without services (no Spark, no Cassandra: the app's lifespan is
not started and the launcher's submit, stop and restart are replaced): the conf and master
allow-lists, redacted secrets, trusted hosts, cross-origin refusal and the API tokens."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from lamina.settings import ServingSettings, Settings
from lamina.views import load_views
from serving.api import create_app
from speed import api as jobs_api
from speed import launcher

ROOT = Path(__file__).resolve().parents[2]
CATALOG = load_views(ROOT / "conf" / "views.toml")
BASE = "http://127.0.0.1:8000"
JOBS_TOKEN = "j" * 32
READ_TOKEN = "r" * 32


def configured(tmp_path: Path, **serving: Any) -> Settings:
    s = Settings()
    return s.model_copy(
        update={
            "spark": s.spark.model_copy(
                update={"checkpoint_dir": tmp_path / "ck", "jobs_dir": tmp_path / "jobs"}
            ),
            "serving": ServingSettings(**serving),  # validated: tokens become SecretStr
        }
    )


def fake_job(conf: dict[str, str] | None = None, master: str = "local[2]") -> launcher.Job:
    return launcher.Job(
        id="pageviews-1",
        what="pageviews",
        master=master,
        conf=dict(conf or {}),
        queries=["source-pageviews"],
        checkpoints=[],
        submitted_at=1.0,
        log="/dev/null",
    )


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    """Record the launcher's state-changing calls instead of running ``spark-submit``."""
    seen: list[tuple[str, dict[str, Any]]] = []

    def submit(settings: Settings, catalog: Any, what: str, **kw: Any) -> launcher.Job:
        seen.append(("submit", {"what": what, **kw}))
        return fake_job(kw.get("conf"), kw.get("master") or settings.spark.master)

    def stop(settings: Settings, job_id: str, **kw: Any) -> launcher.Job:
        seen.append(("stop", {"id": job_id, **kw}))
        return fake_job()

    def restart(settings: Settings, job_id: str, **kw: Any) -> launcher.Job:
        seen.append(("restart", {"id": job_id}))
        return fake_job()

    monkeypatch.setattr(launcher, "submit", submit)
    monkeypatch.setattr(launcher, "stop", stop)
    monkeypatch.setattr(launcher, "restart", restart)
    return seen


def client_for(settings: Settings, base_url: str = BASE) -> TestClient:
    app = create_app(settings, CATALOG, routers=[jobs_api.jobs_router(settings, CATALOG)])
    return TestClient(app, base_url=base_url, raise_server_exceptions=False)


# -- conf keys and master -------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "spark.driver.extraJavaOptions",
        "spark.executor.extraJavaOptions",
        "spark.jars",
        "spark.jars.packages",
        "spark.jars.repositories",
        "spark.driver.extraClassPath",
        "spark.jars.ivySettings",
    ],
)
def test_a_conf_key_off_the_allow_list_is_a_400(tmp_path: Path, calls: list[Any], key: str) -> None:
    client = client_for(configured(tmp_path))
    r = client.post("/jobs", json={"job": "pageviews", "conf": {key: "-XX:OnOutOfMemoryError=x"}})
    assert r.status_code == 400, r.text
    body = r.json()
    assert key in body["error"] and "serving.job_conf_allowed" in body["hint"], body
    assert calls == []  # nothing launched


def test_allowed_conf_keys_reach_the_launcher(tmp_path: Path, calls: list[Any]) -> None:
    client = client_for(configured(tmp_path))
    conf = {"spark.executor.memory": "2g", "spark.sql.shuffle.partitions": "4"}
    r = client.post("/jobs", json={"job": "pageviews", "conf": conf})
    assert r.status_code == 201, r.text
    assert calls == [("submit", {"what": "pageviews", "master": "local[2]", "conf": conf})]


def test_the_allow_list_is_a_setting(tmp_path: Path, calls: list[Any]) -> None:
    client = client_for(configured(tmp_path, job_conf_allowed=["spark.task.cpus"]))
    assert client.post("/jobs", json={"job": "p", "conf": {"spark.task.cpus": "2"}}).is_success
    r = client.post("/jobs", json={"job": "p", "conf": {"spark.executor.memory": "2g"}})
    assert r.status_code == 400 and "spark.task.cpus" in r.json()["hint"]


def test_a_master_other_than_the_configured_ones_is_a_400(tmp_path: Path, calls: list[Any]) -> None:
    client = client_for(configured(tmp_path))
    r = client.post("/jobs", json={"job": "pageviews", "master": "spark://evil:7077"})
    assert r.status_code == 400, r.text
    assert "spark://evil:7077" in r.json()["error"] and "spark.master" in r.json()["hint"]
    assert calls == []
    assert client.post("/jobs", json={"job": "pageviews", "master": "local[2]"}).is_success
    listed = client_for(configured(tmp_path, job_masters=["spark://spark-master:7077"]))
    r = listed.post("/jobs", json={"job": "pageviews", "master": "spark://spark-master:7077"})
    assert r.status_code == 201
    assert calls[-1][1]["master"] == "spark://spark-master:7077"


# -- secrets ---------------------------------------------------------------------------------


SECRET_CONF = {
    "spark.executor.memory": "2g",
    "spark.hadoop.fs.s3a.access.key": "AKIA123",
    "spark.hadoop.fs.s3a.secret.key": "s3cr3t",
    "spark.cassandra.auth.password": "pw",
    "spark.authenticate.secret": "shh",
    "spark.some.apiToken": "tok",
    "spark.hadoop.google.cloud.auth.service.account.json.credentials": "{}",
    "spark.ssl.keyStore": "/etc/ks.jks",
}


def register(settings: Settings, conf: dict[str, str]) -> None:
    """A registered job (its files only; no process: its state is ``failed``)."""
    d = settings.jobs_dir / "pageviews-1"
    d.mkdir(parents=True)
    job = fake_job(conf).as_dict()
    fields = {k: job[k] for k in launcher._JOB_FIELDS}
    (d / "job.json").write_text(json.dumps(fields))
    (d / "settings.json").write_text(json.dumps(settings.model_dump(mode="json")))


@pytest.mark.parametrize(
    ("key", "secret"),
    [
        ("spark.hadoop.fs.s3a.access.key", True),
        ("spark.hadoop.fs.s3a.secret.key", True),
        ("fs.azure.account.accessKey", True),
        ("spark.cassandra.auth.password", True),
        ("spark.ssl.keyPassword", True),
        ("spark.authenticate.secret", True),
        ("spark.some.apiToken", True),
        ("x.json.credentials", True),
        ("spark.executor.memory", False),
        ("spark.ssl.keyStore", False),
        ("spark.io.encryption.keySizeBits", False),
    ],
)
def test_secret_keys(key: str, secret: bool) -> None:
    assert jobs_api.is_secret_key(key) is secret


def test_listed_and_shown_jobs_hide_secret_conf_values(tmp_path: Path) -> None:
    settings = configured(tmp_path)
    register(settings, SECRET_CONF)
    client = client_for(settings)
    listed = client.get("/jobs")
    assert listed.status_code == 200, listed.text
    shown = client.get("/jobs/pageviews-1")
    assert shown.status_code == 200, shown.text
    for conf in (listed.json()[0]["conf"], shown.json()["conf"]):
        assert conf["spark.executor.memory"] == "2g"
        assert conf["spark.ssl.keyStore"] == "/etc/ks.jks"
        hidden = set(SECRET_CONF) - {"spark.executor.memory", "spark.ssl.keyStore"}
        assert {k for k, v in conf.items() if v == "***"} == hidden
    for text in (listed.text, shown.text):
        assert not any(s in text for s in ("AKIA123", "s3cr3t", "shh", 'tok"', '"pw"'))


# -- hosts and origins -----------------------------------------------------------------------


@pytest.mark.parametrize("base", ["http://evil.example", "http://rebind.attacker.net:8000"])
def test_a_foreign_host_header_is_a_json_400(tmp_path: Path, base: str) -> None:
    client = client_for(configured(tmp_path), base_url=base)
    for path in ("/jobs", "/views", "/metrics", "/health", "/views/web_pageviews/query?key=a"):
        r = client.get(path)
        assert r.status_code == 400, path
        assert r.headers["content-type"] == "application/json", path
        body = r.json()
        assert "does not answer for host" in body["error"]
        assert "serving.allowed_hosts" in body["hint"]
    r = client.post("/jobs/x/stop")
    assert r.status_code == 400 and "serving.allowed_hosts" in r.json()["hint"]


@pytest.mark.parametrize(
    "host", ["", "127.0.0.1:80x", "[::1", "[::1]x", "127.0.0.1.evil.example", "localhost:"]
)
def test_malformed_or_lookalike_host_headers_are_refused(tmp_path: Path, host: str) -> None:
    client = client_for(configured(tmp_path))
    r = client.get("/views", headers={"Host": host})
    assert r.status_code == 400 and "serving.allowed_hosts" in r.json()["hint"], host


@pytest.mark.parametrize(
    "base", ["http://127.0.0.1:8000", "http://localhost:8000", "http://[::1]:8000"]
)
def test_loopback_hosts_are_answered(tmp_path: Path, base: str) -> None:
    assert client_for(configured(tmp_path), base_url=base).get("/jobs").status_code == 200


def test_the_serving_host_and_configured_hosts_are_answered(tmp_path: Path) -> None:
    on_lan = configured(tmp_path, host="10.1.2.3")
    assert on_lan.serving.trusted_hosts() == ["127.0.0.1", "localhost", "[::1]", "10.1.2.3"]
    assert client_for(on_lan, base_url="http://10.1.2.3:8000").get("/jobs").status_code == 200
    anywhere = configured(tmp_path, host="0.0.0.0")
    assert "0.0.0.0" not in anywhere.serving.trusted_hosts()
    named = configured(tmp_path, allowed_hosts=["*.lamina.internal"])
    assert client_for(named, base_url="http://api.lamina.internal").get("/jobs").is_success
    assert client_for(named).get("/jobs").status_code == 400  # the list replaces the default


@pytest.mark.parametrize(
    ("method", "path"),
    [("post", "/jobs/pageviews-1/stop"), ("post", "/jobs/pageviews-1/restart"), ("post", "/jobs")],
)
def test_cross_origin_job_changes_are_refused(
    tmp_path: Path, calls: list[Any], method: str, path: str
) -> None:
    client = client_for(configured(tmp_path))
    body = {"json": {"job": "pageviews"}} if path == "/jobs" else {}
    for origin in ("http://evil.example", "null", "http://127.0.0.1.evil.example"):
        r = client.request(method, path, headers={"Origin": origin}, **body)
        assert r.status_code == 403, (origin, r.text)
        assert "cross-origin" in r.json()["error"]
    assert calls == []
    r = client.request(method, path, headers={"Origin": "http://localhost:3000"}, **body)
    assert r.is_success, r.text
    assert client.request(method, path, **body).is_success  # no Origin: not a browser


# -- tokens ----------------------------------------------------------------------------------


def test_the_jobs_token_guards_job_changes(tmp_path: Path, calls: list[Any]) -> None:
    client = client_for(configured(tmp_path, jobs_token=JOBS_TOKEN))
    requests: list[tuple[str, dict[str, Any]]] = [
        ("/jobs", {"json": {"job": "pageviews"}}),
        ("/jobs/pageviews-1/stop", {}),
        ("/jobs/pageviews-1/restart", {}),
    ]
    for path, body in requests:
        for auth in (None, "Bearer wrong", f"Basic {JOBS_TOKEN}", f"Bearer {JOBS_TOKEN}x"):
            headers = {"Authorization": auth} if auth else {}
            r = client.post(path, headers=headers, **body)
            assert r.status_code == 401, (path, auth, r.text)
            assert "serving.jobs_token" in r.json()["hint"]
            assert r.headers["www-authenticate"] == "Bearer"
    assert calls == []
    for path, body in requests:
        r = client.post(path, headers={"Authorization": f"Bearer {JOBS_TOKEN}"}, **body)
        assert r.is_success, (path, r.text)
    assert [c[0] for c in calls] == ["submit", "stop", "restart"]
    assert client.get("/jobs").status_code == 200  # reads stay open without read_token


def test_the_read_token_guards_job_reads(tmp_path: Path) -> None:
    settings = configured(tmp_path, jobs_token=JOBS_TOKEN, read_token=READ_TOKEN)
    client = client_for(settings)
    assert client.get("/jobs").status_code == 401
    assert client.get("/jobs/pageviews-1").status_code == 401
    for token in (READ_TOKEN, JOBS_TOKEN):
        assert client.get("/jobs", headers={"Authorization": f"Bearer {token}"}).is_success
    r = client.post("/jobs/x/stop", headers={"Authorization": f"Bearer {READ_TOKEN}"})
    assert r.status_code == 401  # the read token changes nothing


@pytest.mark.parametrize(
    "path", ["/views", "/views/web_pageviews", "/views/web_pageviews/query?key=a"]
)
def test_the_read_token_guards_the_query_routes(tmp_path: Path, path: str) -> None:
    """Refused before the store is asked (the app's store is never connected here)."""
    client = client_for(configured(tmp_path, read_token=READ_TOKEN))
    for auth in (None, "Bearer wrong", f"Basic {READ_TOKEN}"):
        r = client.get(path, headers={"Authorization": auth} if auth else {})
        assert r.status_code == 401, (path, auth, r.text)
        assert r.json()["error"] == "missing or wrong API token"
        assert "serving.read_token" in r.json()["hint"]
        assert r.headers["www-authenticate"] == "Bearer"
    ok = client.get("/views", headers={"Authorization": f"Bearer {READ_TOKEN}"})
    assert ok.status_code == 200 and ok.json()
    assert client.get("/metrics").status_code == 200  # Prometheus needs no token


def test_the_query_routes_are_open_without_a_read_token(tmp_path: Path) -> None:
    client = client_for(configured(tmp_path, jobs_token=JOBS_TOKEN))
    assert client.get("/views").status_code == 200


def test_tokens_are_secret_and_long_enough(tmp_path: Path) -> None:
    from pydantic import ValidationError

    settings = configured(tmp_path, jobs_token=JOBS_TOKEN)
    assert JOBS_TOKEN not in repr(settings)
    with pytest.raises(ValidationError, match="at least 16"):
        ServingSettings(jobs_token="short")
