"""The jar cache: service jars and Spark's connectors fetched from Maven Central once.

Used by the local stack (Kafka, Cassandra) and by every Spark session and spark-submit
(the Kafka connector), so it lives in the core rather than in the stack manager.

A bundle is a named set of Maven coordinates resolved with their runtime dependencies into
``<cache_dir>/jars/<name>-<version>/``. A bundle is complete when its ``.complete`` marker
exists; later runs use it without touching the network.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

from lamina.errors import FetchError, PrerequisiteError
from lamina.progress import Progress, as_progress

log = logging.getLogger(__name__)

MARKER = ".complete"


@dataclass(frozen=True)
class Bundle:
    """Jars to fetch: ``coordinates`` are ``group:artifact:version`` strings."""

    name: str
    version: str
    coordinates: tuple[str, ...]
    exclude_artifacts: frozenset[str] = frozenset()
    """Artifact ids to leave out (for example jars the host runtime already ships)."""

    def directory(self, cache_dir: Path) -> Path:
        return cache_dir / "jars" / f"{self.name}-{self.version}"


def _pom(bundle: Bundle) -> str:
    deps = []
    for coord in bundle.coordinates:
        group, artifact, version = coord.split(":")
        deps.append(
            f"<dependency><groupId>{escape(group)}</groupId><artifactId>{escape(artifact)}</artifactId>"
            f"<version>{escape(version)}</version></dependency>"
        )
    return (
        '<project xmlns="http://maven.apache.org/POM/4.0.0"><modelVersion>4.0.0</modelVersion>'
        "<groupId>lamina.fetch</groupId><artifactId>{}</artifactId><version>1</version>"
        "<packaging>pom</packaging><dependencies>{}</dependencies></project>"
    ).format(escape(bundle.name), "".join(deps))


def artifact_of(jar: Path) -> str:
    """``kafka-clients-3.9.2.jar`` -> ``kafka-clients``: the name up to the first dash+digit."""
    stem = jar.name.removesuffix(".jar")
    parts = stem.split("-")
    for i, part in enumerate(parts):
        if i and part[:1].isdigit():
            return "-".join(parts[:i])
    return stem


def is_fetched(bundle: Bundle, cache_dir: Path) -> bool:
    return (bundle.directory(cache_dir) / MARKER).exists()


def ensure_bundle(
    bundle: Bundle, cache_dir: Path, progress: Callable[[str], None] | Progress | None = None
) -> Path:
    """Return the directory holding the bundle's jars, downloading them first if needed
    (one task of ``progress`` while Maven runs; default: lines to this module's log).

    Runs ``mvn dependency:copy-dependencies`` (runtime scope) into a temporary directory and
    moves it into place only when complete, so an interrupted fetch is retried, never used.
    Raises :class:`PrerequisiteError` without Maven, :class:`FetchError` if Maven fails.
    """
    target = bundle.directory(cache_dir)
    if (target / MARKER).exists():
        return target
    mvn = shutil.which("mvn")
    if mvn is None:
        raise PrerequisiteError(
            "Maven (mvn) is not on PATH; it is needed once to fetch the service jars",
            hint="install Maven 3.8+ (apt-get install maven)",
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{bundle.name}-") as tmp:
        work = Path(tmp)
        (work / "pom.xml").write_text(_pom(bundle))
        lib = work / "lib"
        cmd = [
            mvn,
            "-q",
            "-B",
            "-f",
            str(work / "pom.xml"),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={lib}",
            "-DincludeScope=runtime",
        ]
        with as_progress(progress).task(
            f"fetching {bundle.name} {bundle.version} jars from Maven Central (first run only)"
        ):
            proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            out = (proc.stdout + proc.stderr).strip().splitlines()
            errors = [line for line in out if "ERROR" in line][:3] or out[-3:]
            raise FetchError(
                f"Maven could not fetch {', '.join(bundle.coordinates)}: "
                + " | ".join(e.strip() for e in errors),
                hint="check network access to Maven Central and the version in conf/lamina.toml",
            )
        for jar in list(lib.glob("*.jar")):
            if artifact_of(jar) in bundle.exclude_artifacts:
                jar.unlink()
        (lib / MARKER).write_text("\n".join(bundle.coordinates) + "\n")
        if target.exists():
            shutil.rmtree(target)
        lib.rename(target)
    return target


def jars(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.jar"))


def classpath(directories: Iterable[Path]) -> str:
    return ":".join(str(d / "*") for d in directories)


def spark_connector_bundle() -> Bundle:
    """Spark's Kafka source for exactly the installed pyspark version.

    Jars pyspark already ships (Hadoop client, Scala, compression codecs, SLF4J) are left
    out so the driver never sees two versions of one library.
    """
    from importlib import metadata
    from importlib.util import find_spec

    version = metadata.version("pyspark")
    spec = find_spec("pyspark")  # locates the package without importing it
    shipped: frozenset[str] = frozenset()
    if spec is not None and spec.submodule_search_locations:
        jars_dir = Path(next(iter(spec.submodule_search_locations))) / "jars"
        shipped = frozenset(artifact_of(j) for j in jars_dir.glob("*.jar"))
    return Bundle(
        "spark-sql-kafka",
        version,
        (f"org.apache.spark:spark-sql-kafka-0-10_2.13:{version}",),
        exclude_artifacts=shipped - {"kafka-clients", "commons-pool2"},
    )


def spark_connector_jars(
    cache_dir: Path, progress: Callable[[str], None] | Progress | None = None
) -> list[Path]:
    """The Kafka connector's jars for the installed pyspark, fetched into ``cache_dir`` once
    (see :func:`ensure_bundle` for ``progress``)."""
    return jars(ensure_bundle(spark_connector_bundle(), cache_dir, progress))
