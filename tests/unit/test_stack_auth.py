"""The dev stack's logins: the Cassandra probe creates the configured role once (never a
superuser, never changing an existing role's password) and locks the default superuser; a
SASL broker serves loopback only; the CLI's Kafka login errors say what they know."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from cassandra import AuthenticationFailed
from pydantic import SecretStr

from lamina.errors import ConfigError, StoreUnavailableError
from lamina.settings import CassandraSettings, Settings, load_settings
from lamina.stack.services import CassandraService, KafkaService

ROOT = Path(__file__).resolve().parents[2]


def _settings(tmp_path: Path) -> Settings:
    s = load_settings(ROOT / "conf" / "lamina.toml")
    return s.model_copy(
        update={
            "stack": s.stack.model_copy(update={"state_dir": tmp_path}),
            "cassandra": s.cassandra.model_copy(
                update={"username": "lamina_app", "password": SecretStr("right")}
            ),
        }
    )


class FakeNode:
    """Cassandra's roles as the probe sees them: who may log in with which password."""

    def __init__(self, roles: dict[str, str]) -> None:
        self.roles = roles
        self.locked: set[str] = set()
        self.statements: list[tuple[str, Any]] = []

    def login(self, c: CassandraSettings) -> None:
        assert c.username is not None and c.password is not None
        if self.roles.get(c.username) != c.password.get_secret_value() or c.username in self.locked:
            raise AuthenticationFailed(f"Provided username {c.username} ... are incorrect")

    def release_version(self, c: CassandraSettings) -> str:
        self.login(c)
        return "5.0.8"

    @contextmanager
    def session(self, c: CassandraSettings) -> Iterator[Any]:
        self.login(c)
        node = self

        class Result:
            def __init__(self, row: Any) -> None:
                self.row = row

            def one(self) -> Any:
                return self.row

        class Session:
            def execute(self, query: str, params: Any = None) -> Result:
                node.statements.append((query, params))
                if query.startswith("SELECT role"):
                    return Result(params[0] if params[0] in node.roles else None)
                if query.startswith("CREATE ROLE"):
                    node.roles[query.split('"')[1]] = params[0]
                elif query.startswith("ALTER ROLE"):
                    role = query.split('"')[1]
                    node.roles[role] = params[0]
                    if "LOGIN = false" in query:
                        node.locked.add(role)
                return Result(None)

        yield Session()


@pytest.fixture
def node(monkeypatch: pytest.MonkeyPatch) -> FakeNode:
    import serving.cassandra

    fake = FakeNode({"cassandra": "cassandra"})
    monkeypatch.setattr(serving.cassandra, "release_version", fake.release_version)
    monkeypatch.setattr(serving.cassandra, "session", fake.session)
    return fake


def test_the_probe_creates_the_role_without_superuser_and_locks_the_default(
    node: FakeNode, tmp_path: Path
) -> None:
    svc = CassandraService(_settings(tmp_path))
    assert svc.ask() == "5.0.8"
    creates = [q for q, _ in node.statements if q.startswith("CREATE ROLE")]
    assert creates == ['CREATE ROLE "lamina_app" WITH PASSWORD = %s AND LOGIN = true']
    assert node.roles["lamina_app"] == "right"
    assert "cassandra" in node.locked and node.roles["cassandra"] != "cassandra"
    # A restart: the default superuser no longer logs in, the configured role does.
    node.statements.clear()
    assert svc.ask() == "5.0.8"
    assert node.statements == []


def test_a_wrong_password_for_an_existing_role_is_an_error_not_a_new_password(
    node: FakeNode, tmp_path: Path
) -> None:
    node.roles["lamina_app"] = "right"
    s = _settings(tmp_path)
    typo = s.model_copy(
        update={"cassandra": s.cassandra.model_copy(update={"password": SecretStr("typo")})}
    )
    with pytest.raises(StoreUnavailableError, match=r"cassandra\.username 'lamina_app'") as err:
        CassandraService(typo).ask()
    assert "cassandra.password" in str(err.value)
    assert node.roles["lamina_app"] == "right"
    assert not [q for q, _ in node.statements if not q.startswith("SELECT")]


def test_a_refused_login_after_the_default_superuser_is_locked_names_the_setting(
    node: FakeNode, tmp_path: Path
) -> None:
    node.locked.add("cassandra")
    with pytest.raises(StoreUnavailableError, match=r"cassandra\.username 'lamina_app'"):
        CassandraService(_settings(tmp_path)).ask()
    assert node.statements == []


@pytest.mark.parametrize("name", ['a"b', "x y", "ü", "a;DROP", ""])
def test_a_cassandra_username_that_is_no_plain_name_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="letters, digits and '_'"):
        CassandraSettings(username=name, password=SecretStr("p"))


def _sasl(tmp_path: Path, host: str) -> KafkaService:
    s = _settings(tmp_path)
    kafka = s.kafka.model_copy(
        update={
            "host": host,
            "security_protocol": "SASL_PLAINTEXT",
            "username": "lamina",
            "password": SecretStr("p"),
        }
    )
    return KafkaService(s.model_copy(update={"kafka": kafka}))


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1"])
def test_a_sasl_dev_broker_on_loopback_is_served(tmp_path: Path, host: str) -> None:
    assert "sasl.enabled.mechanisms" in _sasl(tmp_path, host).security()


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "kafka.internal"])
def test_a_sasl_dev_broker_beyond_loopback_is_refused(tmp_path: Path, host: str) -> None:
    with pytest.raises(ConfigError, match="controller listener"):
        _sasl(tmp_path, host).security()


def test_a_silent_sasl_broker_is_not_diagnosed_as_wrong_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kafka.errors import KafkaTimeoutError, SaslAuthenticationFailedError

    import lamina.process
    from lamina.cli.common import outage_error

    s = _sasl(tmp_path, "127.0.0.1").settings
    monkeypatch.setattr(lamina.process, "port_open", lambda _h, _p: True)
    err = outage_error(s, KafkaTimeoutError())
    assert err is not None
    assert "not answering" in err.message and "kafka.username 'lamina'" in err.message
    assert "kafka.password" in str(err)
    refused = outage_error(s, SaslAuthenticationFailedError("Authentication failed"))
    assert refused is not None
    assert "refused the login of kafka.username 'lamina'" in refused.message
