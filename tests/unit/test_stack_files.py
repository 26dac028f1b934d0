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


def test_cassandra_config_renders_each_commitlog_mode(tmp_path: Path) -> None:
    """``batch`` (the default) needs no window; ``group`` its window; ``periodic`` its period.
    Cassandra refuses to start on a setting of another mode, so each renders only its own."""
    from lamina.stack.services import CassandraService

    s = load_settings(ROOT / "conf" / "lamina.toml")
    s = s.model_copy(update={"stack": s.stack.model_copy(update={"state_dir": tmp_path})})
    assert s.cassandra.commitlog_sync == "batch"
    jars = tmp_path / "jars"
    jars.mkdir()
    (jars / "jamm-0.4.0.jar").touch()
    expected = {
        "batch": [],
        "group": ["commitlog_sync_group_window: 10ms"],
        "periodic": ["commitlog_sync_period: 10000ms"],
    }
    for mode, lines in expected.items():
        c = s.cassandra.model_copy(update={"commitlog_sync": mode})
        svc = CassandraService(s.model_copy(update={"cassandra": c}))
        svc.make_private()
        svc.command("java", [jars])
        conf = (svc.dir / "conf" / "cassandra.yaml").read_text().splitlines()
        assert f"commitlog_sync: {mode}" in conf
        assert [ln for ln in conf if ln.startswith("commitlog_sync_")] == lines


def test_a_log_tail_reads_only_the_end_of_a_large_log(tmp_path: Path) -> None:
    from lamina.stack.manager import _tail

    log = tmp_path / "cassandra.log"
    with log.open("w") as f:
        for i in range(200_000):
            f.write(f"INFO line {i}\n")
        f.write("INFO Migrating rows from legacy compaction_history\n\n")
    assert _tail(log, 2) == "INFO line 199999 | INFO Migrating rows from legacy compaction_history"
    assert _tail(tmp_path / "missing.log") == ""


def test_a_port_in_the_ephemeral_range_is_warned_about(tmp_path: Path) -> None:
    """A private stack on ports the kernel hands to outgoing connections lost a port while
    Cassandra restarted ("Address already in use"): ``stack up`` says so before it starts."""
    from lamina.process import ephemeral_ports
    from lamina.stack.manager import Stack

    (tmp_path / "range").write_text("32768\t60999\n")
    assert ephemeral_ports(tmp_path / "range") == (32768, 60999)
    assert ephemeral_ports(tmp_path / "missing") == (32768, 60999)
    low, _ = ephemeral_ports()
    s = load_settings(ROOT / "conf" / "lamina.toml")
    s = s.model_copy(update={"stack": s.stack.model_copy(update={"state_dir": tmp_path})})
    said: list[str] = []
    ports = {"port": low + 7, "controller_port": low - 8}
    inside = s.model_copy(update={"kafka": s.kafka.model_copy(update=ports)})
    stack = Stack(inside, ["kafka"])
    stack._check_ports(stack.service("kafka"), said.append)
    assert len(said) == 1 and f"client port {low + 7} lies in the kernel's range" in said[0]
    said.clear()
    ports = {"port": low - 7, "controller_port": low - 8}
    below = s.model_copy(update={"kafka": s.kafka.model_copy(update=ports)})
    stack = Stack(below, ["kafka"])
    stack._check_ports(stack.service("kafka"), said.append)
    assert said == []
