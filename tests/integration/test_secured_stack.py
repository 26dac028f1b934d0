"""Kafka with SASL and Cassandra with PasswordAuthenticator: every Lamina client logs in with
the ``[kafka]`` and ``[cassandra]`` credentials, and wrong ones give a one-line error naming
the setting.

A private stack (its own state directory and ports) runs with ``kafka.security_protocol =
SASL_PLAINTEXT`` (SCRAM-SHA-256) and ``cassandra.username`` set: the real broker listener and
Cassandra's authenticator, configured by the stack from the same settings. Passwords hold
quotes, a backslash and non-ASCII letters, which the broker's JAAS configuration, Spark's
``kafka.sasl.jaas.config`` and the driver must all carry intact.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from lamina.context import load_catalog
from lamina.errors import StoreUnavailableError
from lamina.settings import Settings
from lamina.stack.manager import Stack
from tests.conftest import run_lamina

KAFKA_PASSWORD = 'k"af\\ka-pässwörd'
CASSANDRA_PASSWORD = "c'ass\\andra-pässwörd"


def _ports() -> list[int]:
    """Five consecutive ports below the kernel's ephemeral range (see test_stack)."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    first = random.Random().randrange(20000, low - 10, 5)
    return list(range(first, first + 5))


def env_of(s: Settings) -> dict[str, str]:
    """The ``LAMINA_*`` variables that point a ``lamina`` process at ``s``'s stack."""
    k, c = s.kafka, s.cassandra
    assert k.password is not None and c.password is not None
    return {
        "LAMINA_STACK__STATE_DIR": str(s.stack.state_dir),
        "LAMINA_KAFKA__PORT": str(k.port),
        "LAMINA_KAFKA__CONTROLLER_PORT": str(k.controller_port),
        "LAMINA_KAFKA__SECURITY_PROTOCOL": k.security_protocol,
        "LAMINA_KAFKA__SASL_MECHANISM": k.sasl_mechanism,
        "LAMINA_KAFKA__USERNAME": str(k.username),
        "LAMINA_KAFKA__PASSWORD": k.password.get_secret_value(),
        "LAMINA_CASSANDRA__PORT": str(c.port),
        "LAMINA_CASSANDRA__STORAGE_PORT": str(c.storage_port),
        "LAMINA_CASSANDRA__JMX_PORT": str(c.jmx_port),
        "LAMINA_CASSANDRA__USERNAME": str(c.username),
        "LAMINA_CASSANDRA__PASSWORD": c.password.get_secret_value(),
        "LAMINA_CASSANDRA__KEYSPACE": c.keyspace,
    }


@pytest.fixture(scope="module")
def secured(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A private Kafka (SASL_PLAINTEXT, SCRAM-SHA-256) and Cassandra (PasswordAuthenticator,
    role ``lamina_app`` created by the stack), up for the module."""
    kp, kc, cp, cs, cj = _ports()
    s = settings.model_copy(
        update={
            "stack": settings.stack.model_copy(
                update={"state_dir": tmp_path_factory.mktemp("secured")}
            ),
            "kafka": settings.kafka.model_copy(
                update={
                    "port": kp,
                    "controller_port": kc,
                    "heap": "256m",
                    "security_protocol": "SASL_PLAINTEXT",
                    "sasl_mechanism": "SCRAM-SHA-256",
                    "username": "lamina",
                    "password": SecretStr(KAFKA_PASSWORD),
                }
            ),
            "cassandra": settings.cassandra.model_copy(
                update={
                    "port": cp,
                    "storage_port": cs,
                    "jmx_port": cj,
                    "heap": "512m",
                    "keyspace": f"t_{uuid.uuid4().hex[:10]}",
                    "username": "lamina_app",
                    "password": SecretStr(CASSANDRA_PASSWORD),
                }
            ),
        }
    )
    # Validated as a real settings file would be (model_copy skips validation), without the
    # caller's LAMINA_* variables: they win over a settings file, and pointed at the session
    # stack (`make test` under a private LAMINA_STACK__STATE_DIR), this stack's teardown
    # stopped it.
    with _without_lamina_env():
        s = Settings(**json.loads(json.dumps(_record(s))))
    stack = Stack(s)
    try:
        stack.up(progress=print)
        yield s
    finally:
        stack.down(progress=print)


@contextlib.contextmanager
def _without_lamina_env() -> Iterator[None]:
    saved = {k: v for k, v in os.environ.items() if k.startswith("LAMINA_")}
    for k in saved:
        del os.environ[k]
    try:
        yield
    finally:
        os.environ.update(saved)


def _record(s: Settings) -> dict[str, Any]:
    from speed.launcher import settings_record

    return settings_record(s)


def test_the_stack_serves_what_the_settings_ask(secured: Settings) -> None:
    props = (secured.stack.state_dir / "kafka" / "conf" / "server.properties").read_text()
    assert f"listeners=SASL_PLAINTEXT://127.0.0.1:{secured.kafka.port}," in props
    assert 'PlainLoginModule required username="lamina"' in props
    server = secured.stack.state_dir / "kafka" / "conf" / "server.properties"
    assert server.stat().st_mode & 0o077 == 0  # it holds the password
    yaml = (secured.stack.state_dir / "cassandra" / "conf" / "cassandra.yaml").read_text()
    assert "authenticator: PasswordAuthenticator" in yaml


def test_kafka_python_clients_log_in(secured: Settings) -> None:
    """Admin (create, describe configs), producer and consumers, as Lamina builds them."""
    from lamina.cli.demo import produce
    from lamina.streams import ensure_topics, timestamp_types, topic_offsets
    from speed.deadletters import read_deadletters

    topic = f"secured-{uuid.uuid4().hex[:8]}"
    ensure_topics(secured, [topic])
    assert timestamp_types(secured, [topic]) == {topic: "LogAppendTime"}
    sent = produce(secured.kafka, {"t": topic}, {"t": [b'{"a": 1}'] * 25}, lambda _n: None)
    assert sent == 25
    _, last = topic_offsets(secured, {topic})
    assert sum(last[topic].values()) == 25
    source = load_catalog(secured).sources["pageviews"]
    letters = read_deadletters(secured, source, timeout_s=5, topic=topic)
    assert len(letters) == 25  # read back through a consumer (not dead letters' shape)


def test_spark_reads_and_writes_kafka_with_the_credentials(
    secured: Settings, spark: Any, tmp_path: Path
) -> None:
    """The source jobs' Kafka source (:func:`engine.kafka.kafka_records`) and the options the
    dead-letter sink uses, on the SASL listener."""
    from engine.kafka import kafka_records
    from lamina.streams import ensure_topics

    topic = f"secured-spark-{uuid.uuid4().hex[:8]}"
    ensure_topics(secured, [topic])
    rows = spark.createDataFrame([(f"k{i}", f"v{i}") for i in range(40)], ["key", "value"])
    opts = secured.kafka.spark_options()
    rows.write.format("kafka").options(**opts).option("topic", topic).save()
    query = (
        kafka_records(spark, secured, topic)
        .writeStream.format("memory")
        .queryName(topic.replace("-", "_"))
        .option("checkpointLocation", str(tmp_path / "ck"))
        .trigger(availableNow=True)
        .start()
    )
    query.awaitTermination(180)
    assert query.exception() is None
    got = spark.sql(f"SELECT CAST(value AS STRING) AS v FROM {topic.replace('-', '_')}")
    assert sorted(r.v for r in got.collect()) == sorted(f"v{i}" for i in range(40))


def test_cassandra_clients_log_in_as_the_configured_role(secured: Settings) -> None:
    from serving.cassandra import release_version, session
    from serving.store import open_store

    assert release_version(secured.cassandra) == secured.cassandra.version
    with open_store(secured.cassandra, load_catalog(secured)):
        pass
    with session(secured.cassandra) as s:
        assert s.execute("SELECT role FROM system_auth.roles WHERE role = 'lamina_app'").one()


def test_an_api_with_a_wrong_cassandra_password_answers_503_naming_the_setting(
    secured: Settings,
) -> None:
    from serving.connection import StoreConnection

    wrong = secured.model_copy(
        update={"cassandra": secured.cassandra.model_copy(update={"password": SecretStr("x")})}
    )
    conn = StoreConnection(wrong, load_catalog(wrong))
    with pytest.raises(StoreUnavailableError) as err:
        conn.ping()
    assert "refused the credentials of cassandra.username 'lamina_app'" in str(err.value)
    assert err.value.http_status == 503


@pytest.mark.parametrize(
    ("override", "words"),
    [
        (
            {"LAMINA_CASSANDRA__PASSWORD": "wrong"},
            "refused the credentials of cassandra.username 'lamina_app'",
        ),
        (
            {"LAMINA_CASSANDRA__USERNAME": None, "LAMINA_CASSANDRA__PASSWORD": None},
            "requires a username and password",
        ),
    ],
)
def test_wrong_cassandra_credentials_are_one_line_naming_the_setting(
    secured: Settings, override: dict[str, str | None], words: str
) -> None:
    from serving.store import open_store

    with open_store(secured.cassandra, load_catalog(secured)):
        pass  # the keyspace exists: only the login can fail
    ok = run_lamina(env_of(secured), "query", "web_pageviews", "/home")
    assert "no data for key '/home'" in ok.stderr  # logged in and asked the store
    env = {k: v for k, v in {**env_of(secured), **override}.items() if v is not None}
    bad = run_lamina(env, "query", "web_pageviews", "/home")
    assert bad.returncode == 1
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0] and "cassandra." in lines[0], bad.stderr
    assert CASSANDRA_PASSWORD not in bad.stderr + bad.stdout


def test_a_wrong_kafka_password_is_one_line_naming_the_setting(secured: Settings) -> None:
    ok = run_lamina(env_of(secured), "deadletters", "pageviews", timeout=180)
    assert ok.returncode == 0, ok.stderr
    bad = run_lamina(
        {**env_of(secured), "LAMINA_KAFKA__PASSWORD": "wrong"},
        "deadletters",
        "pageviews",
        timeout=180,
    )
    assert bad.returncode == 1
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1, bad.stderr
    assert "kafka.username 'lamina'" in lines[0] and "kafka.password" in lines[0]


def test_a_source_job_does_not_wait_out_a_refused_cassandra_login(secured: Settings) -> None:
    """An outage is waited out (``cassandra.outage_retry_s``); a wrong password is not."""
    import time

    from serving.cassandra import release_version
    from speed.realtime import wait_out_outage

    wrong = secured.cassandra.model_copy(update={"password": SecretStr("x")})
    t0 = time.monotonic()
    with pytest.raises(StoreUnavailableError, match="Cassandra refused the login for a test"):
        wait_out_outage(lambda: release_version(wrong), 60, "a test")
    assert time.monotonic() - t0 < 20


def test_the_stack_locks_the_default_superuser_and_never_changes_a_password(
    secured: Settings,
) -> None:
    """The configured role is no superuser; ``cassandra``/``cassandra`` no longer logs in; a
    wrong ``cassandra.password`` given to ``stack status`` is reported, not made the role's."""
    from serving.cassandra import credentials_refused, release_version, session

    with session(secured.cassandra) as s:
        row = s.execute("SELECT is_superuser FROM system_auth.roles WHERE role = 'lamina_app'")
        assert row.one().is_superuser is False
    admin = secured.cassandra.model_copy(
        update={"username": "cassandra", "password": SecretStr("cassandra")}
    )
    # Cassandra caches roles and credentials (``roles_validity``, 2 s by default): a login
    # the stack made as the default superuser just before it locked it is honoured that long.
    deadline = time.monotonic() + 30
    while True:
        try:
            release_version(admin)
        except Exception as exc:
            if credentials_refused(exc) is not None:
                break
            last: object = exc  # a transient failure of another kind: try again
        else:
            last = "it logged in"
        assert time.monotonic() < deadline, f"cassandra/cassandra not refused: {last}"
        time.sleep(1)
    typo = {**env_of(secured), "LAMINA_CASSANDRA__PASSWORD": "typo"}
    out = run_lamina(typo, "stack", "status", "cassandra", "--format", "json")
    [cassandra] = json.loads(out.stdout)
    assert "refused the credentials of cassandra.username 'lamina_app'" in cassandra["state"]
    assert release_version(secured.cassandra) == secured.cassandra.version
