"""The stack manager's life cycle on a second, private Kafka: up, no-op up, status, down."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from lamina.settings import Settings, load_settings
from lamina.stack import process
from lamina.stack.manager import Stack

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def private_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stack: Settings) -> Settings:
    monkeypatch.setenv("LAMINA_STACK__STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("LAMINA_KAFKA__PORT", str(free_port()))
    monkeypatch.setenv("LAMINA_KAFKA__CONTROLLER_PORT", str(free_port()))
    monkeypatch.setenv("LAMINA_KAFKA__HEAP", "256m")
    return load_settings(ROOT / "conf" / "lamina.toml")


def test_up_is_idempotent_and_down_leaves_nothing(private_settings: Settings) -> None:
    stack = Stack(private_settings, ["kafka"])
    try:
        [first] = stack.up(progress=print)
        assert first.healthy and first.pid is not None
        [again] = stack.up(progress=print)
        assert again.pid == first.pid  # already up: a no-op
        [status] = stack.status()
        assert status.healthy and status.version == private_settings.kafka.version
        assert status.port == private_settings.kafka.port
    finally:
        stack.down(progress=print)
    svc = stack.service("kafka")
    assert not process.alive(first.pid)
    assert not svc.pid_file.exists()
    assert not process.port_open(private_settings.kafka.host, private_settings.kafka.port)
    leftovers = [
        p.name
        for p in Path("/proc").iterdir()
        if p.name.isdigit() and svc.marker in (process.cmdline(int(p.name)) or "")
    ]
    assert leftovers == []
    [after] = stack.status()
    assert after.state == "stopped"
    assert svc.log_file.exists()  # logs are kept after down
