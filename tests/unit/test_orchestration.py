"""The ``[airflow]`` settings and how a Spark connection becomes a master URL."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from lamina.errors import ConfigError
from lamina.settings import load_settings


def test_airflow_settings_defaults_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("RUNNER", "SPARK_CONN_ID", "MAX_DIVERGENCE"):
        monkeypatch.delenv(f"LAMINA_AIRFLOW__{key}", raising=False)
    af = load_settings(None).airflow
    assert (af.runner, af.spark_conn_id, af.max_divergence) == ("taskflow", "lamina_spark", 0.1)
    monkeypatch.setenv("LAMINA_AIRFLOW__RUNNER", "spark_submit")
    monkeypatch.setenv("LAMINA_AIRFLOW__MAX_DIVERGENCE", "1")
    af = load_settings(None).airflow
    assert (af.runner, af.max_divergence) == ("spark_submit", 1.0)


@pytest.mark.parametrize(
    ("key", "value"),
    [("RUNNER", "kubernetes"), ("MAX_DIVERGENCE", "1.5"), ("BUILD_TIMEOUT_S", "0")],
)
def test_bad_airflow_settings_are_rejected(
    monkeypatch: pytest.MonkeyPatch, key: str, value: str
) -> None:
    monkeypatch.setenv(f"LAMINA_AIRFLOW__{key}", value)
    with pytest.raises(ConfigError, match=f"airflow.{key.lower()}"):
        load_settings(None)


@pytest.mark.parametrize(
    ("conn_type", "host", "port", "master"),
    [
        ("spark", "local[2]", None, "local[2]"),
        ("spark", "yarn", None, "yarn"),
        ("spark", "k8s://https://kube:6443", None, "k8s://https://kube:6443"),
        ("spark", "spark://m1", 7077, "spark://m1:7077"),
        ("spark", "m1", 7077, "spark://m1:7077"),
    ],
)
def test_spark_master_of_a_connection(
    conn_type: str, host: str, port: int | None, master: str
) -> None:
    from dags.lamina_tasks import spark_master

    conn = SimpleNamespace(conn_type=conn_type, host=host, port=port)
    assert spark_master(conn) == master
