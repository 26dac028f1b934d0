"""The local services Lamina's stack manager runs: how to fetch, configure, start and probe each.

Each service lives in ``<state_dir>/<name>/`` (``conf/``, ``data/``, ``logs/``, ``pid``).
The stack picks them from :data:`lamina.stack.manager.SERVICES`, a table, not an if-chain;
the optional Airflow part is in :mod:`lamina.stack.airflow_services`.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import re
import secrets
import shutil
import subprocess
from abc import ABC, abstractmethod
from importlib import resources
from pathlib import Path
from string import Template
from typing import ClassVar

from pydantic import SecretStr

from lamina.errors import ConfigError, PrerequisiteError, StackError, StoreUnavailableError
from lamina.jars import Bundle, classpath, ensure_bundle, is_fetched
from lamina.process import port_open as process_port_open
from lamina.progress import Progress
from lamina.settings import Settings, jaas_quote

DEFAULT_SUPERUSER = "cassandra"
"""Cassandra's built-in superuser (password ``cassandra``) on a node with
``PasswordAuthenticator``: the stack uses it once to create the configured role, then locks
it (random password, ``LOGIN = false``)."""

JAVA_MAJOR = 17
"""Cassandra 5.0 runs on Java 11 or 17 only, Kafka 4 needs 17+: so exactly 17."""


def _loopback(host: str) -> bool:
    """``host`` is ``localhost`` or a loopback address (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def find_java() -> str:
    """Path of a Java 17 ``java`` (``$JAVA_HOME/bin/java`` first, then PATH).

    Raises :class:`PrerequisiteError` if there is none or it is another major version.
    """
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java or not Path(java).exists():
        raise PrerequisiteError(
            "Java is not installed (no java on PATH or in $JAVA_HOME)",
            hint="install OpenJDK 17 (apt-get install openjdk-17-jdk-headless)",
        )
    out = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    major = int(match.group(1)) if match else 0
    if major == 1 and match and match.group(2):
        major = int(match.group(2))
    if major != JAVA_MAJOR:
        raise PrerequisiteError(
            f"{java} is Java {major or '?'}, but the stack needs Java {JAVA_MAJOR}"
            " (Cassandra 5.0 does not run on 21+)",
            hint="set JAVA_HOME to a Java 17 installation",
        )
    return java


PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def render(template: str, target: Path, **values: object) -> Path:
    """Write ``templates/<template>`` with ``${name}`` placeholders filled to ``target``,
    private (0600: a service's configuration may hold a password), in a directory created
    0700."""
    text = resources.files("lamina.stack").joinpath("templates", template).read_text()
    target.parent.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), PRIVATE_FILE)  # an existing file keeps its mode otherwise
        f.write(Template(text).substitute({k: str(v) for k, v in values.items()}))
    return target


class Service(ABC):
    """One local service. Subclasses say what to fetch, how to start it and how to probe it."""

    name: ClassVar[str]
    optional: ClassVar[bool] = False
    """Started only when asked for (by name, or the Airflow part by ``--with-airflow``)."""
    uses_java: ClassVar[bool] = True

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.dir = settings.stack.state_dir / self.name

    @property
    def log_file(self) -> Path:
        """The service's own log (what it writes through its logging framework)."""
        return self.dir / "logs" / f"{self.name}.log"

    @property
    def stdout_file(self) -> Path:
        """The JVM's stdout/stderr: crashes before logging starts end up here."""
        return self.dir / "logs" / "stdout.log"

    @property
    def pid_file(self) -> Path:
        return self.dir / "pid"

    @property
    def marker(self) -> str:
        """A string only this service's command line contains: its own state directory."""
        return f"-Dlamina.service.dir={self.dir}"

    @property
    @abstractmethod
    def version(self) -> str: ...

    @property
    @abstractmethod
    def ports(self) -> dict[str, int]:
        """Named TCP ports the service binds on its host; the first is the one clients use."""

    @property
    @abstractmethod
    def host(self) -> str: ...

    @abstractmethod
    def bundles(self) -> list[Bundle]: ...

    @abstractmethod
    def command(self, java: str, jar_dirs: list[Path]) -> list[str]:
        """Write the service's config files (and format storage if new); return its argv."""

    @property
    def client_port(self) -> int:
        """The port clients use: the first of :attr:`ports`."""
        return next(iter(self.ports.values()))

    def port_setting(self, label: str) -> str:
        """The ``LAMINA_*`` variable that sets the port named ``label``."""
        key = "PORT" if label in ("client", "native", "api") else f"{label.upper()}_PORT"
        section = self.name.split("-")[0].upper()
        return f"LAMINA_{section}__{key}"

    def probe(self) -> str:
        """Ask the running service a real question; return its version, raise if not ready.

        A closed client port fails fast, before any client library tries (and logs) a
        connection.
        """
        if not process_port_open(self.host, self.client_port):
            label = next(iter(self.ports))
            raise StackError(f"{self.name}'s {label} port {self.client_port} is not open yet")
        return self.ask()

    @abstractmethod
    def ask(self) -> str:
        """The real question (the client port is open); return the service's version."""

    def fetched(self) -> bool:
        return all(is_fetched(b, self.settings.stack.cache_dir) for b in self.bundles())

    def fetch(self, progress: Progress | None = None) -> list[Path]:
        """The directories of the service's jars, fetched first where missing."""
        return [ensure_bundle(b, self.settings.stack.cache_dir, progress) for b in self.bundles()]

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def make_private(self) -> None:
        """Create the service's directory 0700, or make an existing one 0700: it holds the
        service's data, logs and configuration (which may hold a password)."""
        self.dir.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
        self.dir.chmod(PRIVATE_DIR)


class KafkaService(Service):
    """Kafka 4 in KRaft combined mode (one process is broker and controller)."""

    name = "kafka"

    @property
    def version(self) -> str:
        return self.settings.kafka.version

    @property
    def host(self) -> str:
        return self.settings.kafka.host

    @property
    def ports(self) -> dict[str, int]:
        k = self.settings.kafka
        return {"client": k.port, "controller": k.controller_port}

    def bundles(self) -> list[Bundle]:
        return [
            Bundle(
                "kafka",
                self.version,
                (
                    f"org.apache.kafka:kafka_2.13:{self.version}",
                    "org.apache.logging.log4j:log4j-slf4j-impl:2.25.3",
                ),
            )
        ]

    def security(self) -> str:
        """The broker's client-listener security lines for ``server.properties``: none for
        ``PLAINTEXT``; for ``SASL_PLAINTEXT``, PLAIN and SCRAM with the configured user as the
        only PLAIN user (SCRAM credentials are set by :meth:`ask`). TLS listeners are not
        offered by the dev stack (a ``StackError`` says so). The controller listener stays
        ``PLAINTEXT`` and there is no authorizer, so SASL is refused (``ConfigError``) on a
        ``kafka.host`` that is not loopback."""
        k = self.settings.kafka
        if k.security_protocol == "PLAINTEXT":
            return ""
        if k.security_protocol != "SASL_PLAINTEXT":
            raise StackError(
                f"the dev stack's Kafka serves PLAINTEXT or SASL_PLAINTEXT, not "
                f"kafka.security_protocol {k.security_protocol}",
                hint="point [kafka] at a broker with a TLS listener, or use SASL_PLAINTEXT "
                "on the dev stack",
            )
        if not _loopback(k.host):
            raise ConfigError(
                f"kafka.host {k.host!r} is not a loopback address: the dev stack's Kafka "
                "controller listener (kafka.controller_port) has no login, so with SASL the "
                "dev stack serves this machine only",
                hint='set kafka.host = "127.0.0.1" for the dev stack; run a broker secured '
                "on every listener to serve other machines",
            )
        assert k.username is not None
        user, secret = jaas_quote(k.username), jaas_quote(k.secret)
        plain = (
            "org.apache.kafka.common.security.plain.PlainLoginModule required "
            f"username={user} password={secret} user_{k.username}={secret};"
        )
        scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        listener = "listener.name.sasl_plaintext"
        lines = [
            "# kafka.security_protocol SASL_PLAINTEXT: the client listener asks for a user.",
            "sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512",
            "sasl.mechanism.inter.broker.protocol=PLAIN",
            f"{listener}.plain.sasl.jaas.config={_property(plain)}",
            f"{listener}.scram-sha-256.sasl.jaas.config={scram}",
            f"{listener}.scram-sha-512.sasl.jaas.config={scram}",
        ]
        return "\n".join(lines) + "\n"

    def command(self, java: str, jar_dirs: list[Path]) -> list[str]:
        k = self.settings.kafka
        data = self.dir / "data"
        conf = self.dir / "conf"
        props = render(
            "kafka.properties",
            conf / "server.properties",
            host=k.host,
            port=k.port,
            controller_port=k.controller_port,
            data_dir=data,
            partitions=k.partitions,
            protocol=k.security_protocol,
            security=self.security(),
        )
        log4j = render("kafka-log4j2.yaml", conf / "log4j2.yaml", log_file=self.log_file)
        base = [
            java,
            f"-Xms{k.heap}",
            f"-Xmx{k.heap}",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            self.marker,
            f"-Dlog4j2.configurationFile={log4j}",
            "-cp",
            classpath(jar_dirs),
        ]
        if not (data / "meta.properties").exists():
            data.mkdir(parents=True, exist_ok=True)
            cluster_id = base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")
            fmt = [
                *base,
                "kafka.tools.StorageTool",
                "format",
                # One argument, not two: a random id may start with "-".
                f"--cluster-id={cluster_id}",
                "-c",
                str(props),
                "--standalone",
                "--ignore-formatted",
            ]
            proc = subprocess.run(fmt, capture_output=True, text=True)
            if proc.returncode != 0:
                self.stdout_file.parent.mkdir(parents=True, exist_ok=True)
                self.stdout_file.write_text(proc.stdout + proc.stderr)
                raise StackError("formatting Kafka's storage failed", log=str(self.stdout_file))
        return [*base, "kafka.Kafka", str(props)]

    def ask(self) -> str:
        from kafka import KafkaAdminClient

        k = self.settings.kafka
        if k.sasl_mechanism.startswith("SCRAM") and k.security_protocol == "SASL_PLAINTEXT":
            self._ensure_scram_user()
        admin = KafkaAdminClient(
            **self.settings.kafka.client_config(),
            request_timeout_ms=3000,
        )
        try:
            cluster = admin.describe_cluster()
        finally:
            admin.close()
        if not cluster.get("brokers"):
            raise StackError("Kafka answered but has no live broker yet")
        return self.version

    def _ensure_scram_user(self) -> None:
        """Give the configured user SCRAM credentials (both mechanisms), logged in with PLAIN,
        which the stack's broker always accepts for that user."""
        from kafka import KafkaAdminClient
        from kafka.admin import UserScramCredentialUpsertion

        k = self.settings.kafka
        plain = {**k.client_config(), "sasl_mechanism": "PLAIN"}
        admin = KafkaAdminClient(**plain, request_timeout_ms=3000)
        errors = []
        try:
            for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-512"):  # one per request (Kafka's rule)
                upsert = UserScramCredentialUpsertion(k.username, mechanism, k.secret)
                failed = admin.alter_user_scram_credentials([upsert])
                errors += [f"{mechanism}: {e}" for e in (failed or {}).values() if e]
        finally:
            admin.close()
        if errors:
            raise StackError(f"setting Kafka's SCRAM credentials failed: {'; '.join(errors)}")


def _property(value: str) -> str:
    """``value`` escaped for a Java ``.properties`` file (read as ISO-8859-1: backslashes
    doubled, line breaks and anything beyond ASCII as ``\\uXXXX``)."""
    out = []
    for ch in value:
        if ch == "\\":
            out.append("\\\\")
        elif " " <= ch <= "~":
            out.append(ch)
        else:
            for unit in ch.encode("utf-16-be").hex(" ", 2).split():
                out.append(f"\\u{unit}")
    return "".join(out)


# Cassandra 5.0's conf/jvm17-server.options (module access it needs on Java 17).
_CASSANDRA_JVM17 = [
    "--add-exports",
    "java.base/jdk.internal.misc=ALL-UNNAMED",
    "--add-exports",
    "java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED",
    "--add-exports",
    "java.rmi/sun.rmi.registry=ALL-UNNAMED",
    "--add-exports",
    "java.rmi/sun.rmi.server=ALL-UNNAMED",
    "--add-exports",
    "java.sql/java.sql=ALL-UNNAMED",
    "--add-exports",
    "java.base/java.lang.ref=ALL-UNNAMED",
    "--add-exports",
    "jdk.unsupported/sun.misc=ALL-UNNAMED",
    "--add-exports",
    "jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED",
    "--add-exports",
    "jdk.attach/sun.tools.attach=ALL-UNNAMED",
    "--add-opens",
    "java.base/java.lang.module=ALL-UNNAMED",
    "--add-opens",
    "java.base/jdk.internal.loader=ALL-UNNAMED",
    "--add-opens",
    "java.base/jdk.internal.ref=ALL-UNNAMED",
    "--add-opens",
    "java.base/jdk.internal.reflect=ALL-UNNAMED",
    "--add-opens",
    "java.base/jdk.internal.math=ALL-UNNAMED",
    "--add-opens",
    "java.base/jdk.internal.module=ALL-UNNAMED",
    "--add-opens",
    "java.base/jdk.internal.util.jar=ALL-UNNAMED",
    "--add-opens",
    "jdk.management/com.sun.management.internal=ALL-UNNAMED",
    "--add-opens",
    "java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-opens",
    "java.base/java.io=ALL-UNNAMED",
    "--add-opens",
    "java.base/java.lang.reflect=ALL-UNNAMED",
    "--add-opens",
    "jdk.compiler/com.sun.tools.javac=ALL-UNNAMED",
    "--add-opens",
    "java.base/java.lang=ALL-UNNAMED",
    "--add-opens",
    "java.base/java.util=ALL-UNNAMED",
]


class CassandraService(Service):
    """A single Cassandra 5.0 node from ``cassandra-all`` and its Maven dependencies."""

    name = "cassandra"

    @property
    def version(self) -> str:
        return self.settings.cassandra.version

    @property
    def host(self) -> str:
        return self.settings.cassandra.host

    @property
    def ports(self) -> dict[str, int]:
        c = self.settings.cassandra
        return {"native": c.port, "storage": c.storage_port, "jmx": c.jmx_port}

    def bundles(self) -> list[Bundle]:
        return [
            Bundle(
                "cassandra", self.version, (f"org.apache.cassandra:cassandra-all:{self.version}",)
            )
        ]

    def command(self, java: str, jar_dirs: list[Path]) -> list[str]:
        c = self.settings.cassandra
        conf = self.dir / "conf"
        data = self.dir / "data"
        data.mkdir(parents=True, exist_ok=True)
        (conf / "triggers").mkdir(parents=True, exist_ok=True)
        yaml = render(
            "cassandra.yaml",
            conf / "cassandra.yaml",
            host=c.host,
            port=c.port,
            storage_port=c.storage_port,
            data_dir=data,
            commitlog_sync=c.commitlog_sync,
            commitlog_sync_setting={
                "batch": "",
                "group": f"commitlog_sync_group_window: {c.commitlog_sync_window_ms}ms",
                "periodic": "commitlog_sync_period: 10000ms",
            }[c.commitlog_sync],
            authenticator="AllowAllAuthenticator"
            if c.username is None
            else "PasswordAuthenticator",
        )
        logback = render("cassandra-logback.xml", conf / "logback.xml", log_file=self.log_file)
        jamm = next((j for d in jar_dirs for j in d.glob("jamm-*.jar")), None)
        if jamm is None:
            raise StackError(
                "the Cassandra jar bundle has no jamm agent jar",
                hint=f"delete {jar_dirs[0]} and run `lamina stack up` again to re-fetch it",
            )
        return [
            java,
            "-ea",
            f"-Xms{c.heap}",
            f"-Xmx{c.heap}",
            "-Xss256k",
            "-XX:+UseG1GC",
            "-XX:+ParallelRefProcEnabled",
            "-XX:MaxTenuringThreshold=1",
            "-XX:MaxGCPauseMillis=300",
            "-XX:+HeapDumpOnOutOfMemoryError",
            "-XX:+PerfDisableSharedMem",
            "-XX:+CrashOnOutOfMemoryError",
            "-Djava.net.preferIPv4Stack=true",
            "-Djdk.attach.allowAttachSelf=true",
            *_CASSANDRA_JVM17,
            "-Dio.netty.tryReflectionSetAccessible=true",
            "-Dio.netty.allocator.useCacheForAllThreads=true",
            "-Dio.netty.allocator.maxOrder=11",
            f"-javaagent:{jamm}",
            self.marker,
            f"-Dcassandra.config=file://{yaml}",
            f"-Dlogback.configurationFile=file://{logback}",
            f"-Dcassandra.storagedir={data}",
            f"-Dcassandra.logdir={self.log_file.parent}",
            "-Dcassandra-foreground=yes",
            f"-Dcassandra.jmx.local.port={c.jmx_port}",
            # One node: nothing to gossip with, so do not wait for the ring to settle.
            "-Dcassandra.skip_wait_for_gossip_to_settle=0",
            "-Dcassandra.ring_delay_ms=1000",
            "-Dcassandra.superuser_setup_delay_ms=0",
            "-Dcassandra.shutdown_announce_in_ms=0",
            f"-Dcassandra.triggers_dir={conf / 'triggers'}",
            "-cp",
            f"{conf}:{classpath(jar_dirs)}",
            "org.apache.cassandra.service.CassandraDaemon",
        ]

    def ask(self) -> str:
        """The version, asked as the configured role.

        With ``cassandra.username`` set and that login refused, the role may not exist yet:
        on a new node, while Cassandra's default superuser still logs in as
        ``cassandra``/``cassandra``, it creates the role (``LOGIN``, not a superuser: the
        node's default ``AllowAllAuthorizer`` lets any logged-in role create keyspaces and
        tables) and then locks the default superuser (a random password, ``LOGIN = false``),
        which would otherwise let anyone in. From then on, restarts included, only the
        configured role logs in. A role that exists is never changed: a refused login to it
        (a wrong password) is the one-line error naming ``cassandra.password``.
        """
        # The driver lives in the serving layer; the core only borrows it for this probe.
        from serving.cassandra import credentials_refused, release_version, session

        c = self.settings.cassandra
        try:
            return release_version(c)
        except Exception as exc:
            if c.username is None or c.username == DEFAULT_SUPERUSER:
                raise
            words = credentials_refused(exc)
            if words is None:
                raise
        assert c.password is not None
        refused = StoreUnavailableError(
            f"Cassandra at {c.host}:{c.port} refused the credentials of cassandra.username "
            f"{c.username!r} ({words})",
            hint="check cassandra.password (LAMINA_CASSANDRA__PASSWORD); the dev stack "
            "creates the role only on its first start (then it locks the default "
            f"'{DEFAULT_SUPERUSER}' superuser): to use another role, create it in CQL as the "
            f"existing one, or delete {self.dir} to start afresh",
        )
        admin = c.model_copy(
            update={"username": DEFAULT_SUPERUSER, "password": SecretStr(DEFAULT_SUPERUSER)}
        )
        try:
            with session(admin) as s:
                role, secret = c.username, c.password.get_secret_value()
                found = s.execute("SELECT role FROM system_auth.roles WHERE role = %s", (role,))
                if found.one() is not None:
                    raise refused  # it exists: the password in the settings is wrong
                s.execute(f'CREATE ROLE "{role}" WITH PASSWORD = %s AND LOGIN = true', (secret,))
                s.execute(
                    f'ALTER ROLE "{DEFAULT_SUPERUSER}" WITH PASSWORD = %s AND LOGIN = false',
                    (secrets.token_urlsafe(32),),
                )
        except Exception as exc:
            if credentials_refused(exc) is None:
                raise
            # The default superuser is locked already (or not set up yet on a new node).
            raise refused from None
        return release_version(c)
