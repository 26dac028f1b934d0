"""The jar cache's pure parts (lamina.jars): artifact names and the generated POM."""

from __future__ import annotations

from pathlib import Path
from xml.etree import ElementTree

import pytest

from lamina.jars import Bundle, _pom, artifact_of, is_fetched


@pytest.mark.parametrize(
    ("jar", "artifact"),
    [
        ("kafka-clients-3.9.2.jar", "kafka-clients"),
        ("hadoop-client-api-3.5.0.jar", "hadoop-client-api"),
        ("scala-library-2.13.15.jar", "scala-library"),
        ("zstd-jni-1.5.7-7.jar", "zstd-jni"),
        ("log4j-slf4j2-impl-2.25.4.jar", "log4j-slf4j2-impl"),
        ("jamm.jar", "jamm"),
    ],
)
def test_artifact_of(jar: str, artifact: str) -> None:
    assert artifact_of(Path(jar)) == artifact


def test_pom_lists_every_coordinate() -> None:
    b = Bundle("x", "1", ("a.b:c:1.0", "d:e_2.13:4.2.0"))
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    root = ElementTree.fromstring(_pom(b))
    deps = [
        (d.findtext("m:groupId", namespaces=ns), d.findtext("m:artifactId", namespaces=ns))
        for d in root.iterfind("m:dependencies/m:dependency", ns)
    ]
    assert deps == [("a.b", "c"), ("d", "e_2.13")]


def test_incomplete_bundle_is_not_fetched(tmp_path: Path) -> None:
    b = Bundle("x", "1", ("a:b:1",))
    b.directory(tmp_path).mkdir(parents=True)
    assert not is_fetched(b, tmp_path)
    (b.directory(tmp_path) / ".complete").write_text("")
    assert is_fetched(b, tmp_path)
