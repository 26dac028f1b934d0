"""Settings: defaults, file, env precedence and error messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from lamina.errors import ConfigError
from lamina.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]


def test_repo_config_loads() -> None:
    s = load_settings(ROOT / "conf" / "lamina.toml")
    assert s.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert s.cassandra.port == 9042
    assert s.stack.state_dir.is_absolute()


def test_env_overrides_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAMINA_KAFKA__PORT", "19092")
    monkeypatch.setenv("LAMINA_STACK__STATE_DIR", "/tmp/lamina-x")
    s = load_settings(ROOT / "conf" / "lamina.toml")
    assert s.kafka.port == 19092
    assert s.kafka.controller_port == 9093
    assert s.stack.state_dir == Path("/tmp/lamina-x")


def test_unknown_key_is_named(tmp_path: Path) -> None:
    cfg = tmp_path / "l.toml"
    cfg.write_text("[kafka]\nprot = 1\n")
    with pytest.raises(ConfigError, match=r"kafka\.prot: unknown setting"):
        load_settings(cfg)


def test_bad_value_says_what_and_where(tmp_path: Path) -> None:
    cfg = tmp_path / "l.toml"
    cfg.write_text('[cassandra]\nheap = "lots"\n')
    with pytest.raises(ConfigError, match=r"cassandra\.heap: .*'512m' or '2g'") as err:
        load_settings(cfg)
    assert str(cfg) in str(err.value)


def test_bad_env_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAMINA_KAFKA__PORT", "not-a-port")
    with pytest.raises(ConfigError, match=r"kafka\.port"):
        load_settings(ROOT / "conf" / "lamina.toml")


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[kafka\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(bad)


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)
