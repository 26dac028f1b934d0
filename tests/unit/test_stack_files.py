"""The dev stack's files are private: a service's directory 0700, its rendered configuration
0600 (``server.properties`` may hold the SASL password), also when they existed before with
looser modes (a stack from an older Lamina)."""

from __future__ import annotations

import stat
from pathlib import Path

from pydantic import SecretStr

from lamina.settings import load_settings
from lamina.stack.services import KafkaService, render

ROOT = Path(__file__).resolve().parents[2]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_service_directory_is_made_private(tmp_path: Path) -> None:
    s = load_settings(ROOT / "conf" / "lamina.toml")
    s = s.model_copy(update={"stack": s.stack.model_copy(update={"state_dir": tmp_path})})
    svc = KafkaService(s)
    svc.make_private()
    assert _mode(svc.dir) == 0o700
    svc.dir.chmod(0o755)
    svc.make_private()
    assert _mode(svc.dir) == 0o700


def test_rendered_configuration_is_private_and_escapes_the_password(tmp_path: Path) -> None:
    s = load_settings(ROOT / "conf" / "lamina.toml")
    kafka = s.kafka.model_copy(
        update={
            "security_protocol": "SASL_PLAINTEXT",
            "username": "lamina",
            "password": SecretStr('p"w\\ö'),
        }
    )
    svc = KafkaService(s.model_copy(update={"kafka": kafka}))
    target = tmp_path / "conf" / "server.properties"
    target.parent.mkdir()
    target.write_text("old")
    target.chmod(0o644)
    render(
        "kafka.properties",
        target,
        host="127.0.0.1",
        port=1,
        controller_port=2,
        data_dir=tmp_path,
        partitions=1,
        protocol="SASL_PLAINTEXT",
        security=svc.security(),
    )
    assert _mode(target) == 0o600
    text = target.read_text()
    # JAAS quotes the password (\" and \\), the properties file escapes that again and
    # writes non-ASCII as \uXXXX (it is read as ISO-8859-1).
    assert 'password="p\\\\"w\\\\\\\\\\u00f6" user_lamina="p\\\\"w\\\\\\\\\\u00f6";' in text
    assert "listeners=SASL_PLAINTEXT://127.0.0.1:1," in text
