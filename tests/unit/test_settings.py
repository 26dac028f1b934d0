"""Settings: defaults, file, env precedence and error messages."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lamina.errors import ConfigError
from lamina.settings import default_config_path, load_settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _no_lamina_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests read settings files: the caller's ``LAMINA_*`` variables (a private
    stack's ports, say) would win over them."""
    import os

    for key in [k for k in os.environ if k.startswith("LAMINA_")]:
        monkeypatch.delenv(key)


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


def test_file_beats_defaults_and_env_beats_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "l.toml"
    cfg.write_text('[kafka]\nport = 1234\nheap = "2g"\n[spark]\nshuffle_partitions = 7\n')
    s = load_settings(cfg)
    assert (s.kafka.port, s.kafka.heap, s.spark.shuffle_partitions) == (1234, "2g", 7)
    assert s.kafka.controller_port == 9093  # not in the file: the default
    monkeypatch.setenv("LAMINA_KAFKA__PORT", "4321")
    s = load_settings(cfg)
    assert (s.kafka.port, s.kafka.heap) == (4321, "2g")


def test_env_overrides_typed_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAMINA_STACK__START_TIMEOUT_S", "5.5")
    monkeypatch.setenv("LAMINA_AIRFLOW__RUNNER", "spark_submit")
    monkeypatch.setenv("LAMINA_PIPELINE__MAX_OFFSETS_PER_TRIGGER", "500")
    monkeypatch.setenv("LAMINA_SPARK__CHECKPOINT_DIR", str(tmp_path / "cp"))
    s = load_settings(ROOT / "conf" / "lamina.toml")
    assert s.stack.start_timeout_s == 5.5
    assert s.airflow.runner == "spark_submit"
    assert s.pipeline.max_offsets_per_trigger == 500
    assert s.checkpoint_dir == tmp_path / "cp"
    assert s.jobs_dir == s.stack.state_dir / "jobs"  # derived from state_dir when not set


def test_json_env_override_of_a_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``LAMINA_SPARK__CONF`` is JSON; its keys override the file's ``[spark] conf`` keys, the
    file's other keys stay."""
    monkeypatch.setenv("LAMINA_SPARK__CONF", '{"spark.executor.memory": "4g", "spark.b": "env"}')
    s = load_settings(ROOT / "conf" / "lamina.toml")
    assert s.spark.conf == {"spark.executor.memory": "4g", "spark.b": "env"}
    cfg = tmp_path / "l.toml"
    cfg.write_text('[spark]\nconf = { "spark.a" = "1", "spark.b" = "file" }\n')
    s = load_settings(cfg)
    assert s.spark.conf == {"spark.a": "1", "spark.b": "env", "spark.executor.memory": "4g"}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('["spark.a"]', r"spark\.conf: Input should be a valid dictionary"),
        ('{"spark.a": 1}', r"spark\.conf\.spark\.a: Input should be a valid string"),
    ],
)
def test_json_env_override_of_the_wrong_shape(
    monkeypatch: pytest.MonkeyPatch, value: str, message: str
) -> None:
    monkeypatch.setenv("LAMINA_SPARK__CONF", value)
    with pytest.raises(ConfigError, match=message):
        load_settings(ROOT / "conf" / "lamina.toml")


def test_malformed_json_env_override_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAMINA_SPARK__CONF", '{"spark.a": ')
    with pytest.raises(ConfigError, match="LAMINA_SPARK__CONF"):
        load_settings(ROOT / "conf" / "lamina.toml")


def test_unknown_env_key_and_file_section_are_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "l.toml"
    cfg.write_text("[kafak]\nport = 1\n")
    with pytest.raises(ConfigError, match=r"kafak: unknown setting"):
        load_settings(cfg)
    monkeypatch.setenv("LAMINA_KAFKA__PROT", "1")
    with pytest.raises(ConfigError, match=r"kafka\.prot: unknown setting"):
        load_settings(ROOT / "conf" / "lamina.toml")


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[kafka]\nport = 70000", r"kafka\.port: Input should be less than or equal to 65535"),
        ('[airflow]\nrunner = "yarn"', r"airflow\.runner: .*'taskflow' or 'spark_submit'"),
        ('[cassandra]\nkeyspace = "Prod-KS"', r"cassandra\.keyspace: .*lower-case identifier"),
        ("[airflow]\nmax_divergence = 2", r"airflow\.max_divergence: .*less than or equal to 1"),
        ("[pipeline]\nepoch_seconds = 0", r"pipeline\.epoch_seconds: .*greater than or equal"),
        ('[stack]\nstart_timeout_s = "soon"', r"stack\.start_timeout_s: .*valid number"),
    ],
)
def test_bad_values_are_named_with_the_problem(tmp_path: Path, toml: str, message: str) -> None:
    cfg = tmp_path / "l.toml"
    cfg.write_text(toml + "\n")
    with pytest.raises(ConfigError, match=message):
        load_settings(cfg)


def test_lamina_config_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "mine.toml"
    cfg.write_text("[serving]\nport = 8123\n")
    monkeypatch.setenv("LAMINA_CONFIG", str(cfg))
    assert default_config_path() == cfg
    assert load_settings().serving.port == 8123
    assert load_settings(ROOT / "conf" / "lamina.toml").serving.port == 8000  # explicit wins


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[kafka]\nsecurity_protocol = "SASL_SSL"\n', "needs kafka.username and kafka.password"),
        ('[kafka]\nusername = "u"\npassword = "p"\n', "only used with security_protocol SASL"),
        ('[kafka]\nsecurity_protocol = "TLS"\n', "kafka.security_protocol"),
        (
            '[kafka]\nsecurity_protocol = "SASL_PLAINTEXT"\nsasl_mechanism = "GSSAPI"\n'
            'username = "u"\npassword = "p"\n',
            "kafka.sasl_mechanism",
        ),
        (
            '[kafka]\nsecurity_protocol = "SASL_PLAINTEXT"\nusername = "a b"\npassword = "p"\n',
            "must not contain quotes",
        ),
        ('[kafka]\nssl_cafile = "/ca.pem"\n', "only used with security_protocol SSL"),
        ('[cassandra]\nusername = "u"\n', "cassandra.username and cassandra.password go"),
    ],
)
def test_security_settings_that_cannot_work_are_refused(
    tmp_path: Path, toml: str, message: str
) -> None:
    cfg = tmp_path / "l.toml"
    cfg.write_text(toml)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_settings(cfg)


def test_kafka_security_reaches_both_kinds_of_client(monkeypatch: pytest.MonkeyPatch) -> None:
    """kafka-python's keywords and the Java client's ``kafka.*`` options carry the same
    login; the JAAS value quotes what the password holds."""
    monkeypatch.setenv("LAMINA_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("LAMINA_KAFKA__SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("LAMINA_KAFKA__USERNAME", "lamina")
    monkeypatch.setenv("LAMINA_KAFKA__PASSWORD", 'p"w\\d')
    monkeypatch.setenv("LAMINA_KAFKA__SSL_CAFILE", "/etc/ca.pem")
    monkeypatch.setenv("LAMINA_KAFKA__SSL_CHECK_HOSTNAME", "false")
    k = load_settings(ROOT / "conf" / "lamina.toml").kafka
    assert k.client_config() == {
        "bootstrap_servers": "127.0.0.1:9092",
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "lamina",
        "sasl_plain_password": 'p"w\\d',
        "ssl_check_hostname": False,
        "ssl_cafile": "/etc/ca.pem",
    }
    assert k.spark_options() == {
        "kafka.bootstrap.servers": "127.0.0.1:9092",
        "kafka.security.protocol": "SASL_SSL",
        "kafka.sasl.mechanism": "SCRAM-SHA-512",
        "kafka.sasl.jaas.config": "org.apache.kafka.common.security.scram.ScramLoginModule "
        'required username="lamina" password="p\\"w\\\\d";',
        "kafka.ssl.truststore.type": "PEM",
        "kafka.ssl.truststore.location": "/etc/ca.pem",
        "kafka.ssl.endpoint.identification.algorithm": "",
    }


def test_plaintext_kafka_options_are_the_broker_list_only() -> None:
    k = load_settings(ROOT / "conf" / "lamina.toml").kafka
    assert k.client_config() == {
        "bootstrap_servers": "127.0.0.1:9092",
        "security_protocol": "PLAINTEXT",
    }
    assert k.spark_options() == {
        "kafka.bootstrap.servers": "127.0.0.1:9092",
        "kafka.security.protocol": "PLAINTEXT",
    }


def test_passwords_are_hidden_when_settings_are_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAMINA_KAFKA__SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("LAMINA_KAFKA__USERNAME", "lamina")
    monkeypatch.setenv("LAMINA_KAFKA__PASSWORD", "kafka-secret-1")
    monkeypatch.setenv("LAMINA_CASSANDRA__USERNAME", "app")
    monkeypatch.setenv("LAMINA_CASSANDRA__PASSWORD", "cassandra-secret-2")
    s = load_settings(ROOT / "conf" / "lamina.toml")
    shown = repr(s) + str(s) + s.model_dump_json()
    assert "kafka-secret-1" not in shown and "cassandra-secret-2" not in shown
