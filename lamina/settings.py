"""Typed platform settings: one model, loaded from ``conf/lamina.toml``, overridden by env vars.

Precedence, highest first: environment variables (``LAMINA_<SECTION>__<FIELD>``, e.g.
``LAMINA_KAFKA__PORT=19092``), then the TOML file, then the defaults below. Unknown keys in
the file or unknown sections are rejected with a message naming them.
"""

from __future__ import annotations

import contextlib
import os
import re
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from lamina.errors import ConfigError

CONFIG_ENV = "LAMINA_CONFIG"
"""Environment variable naming the settings file to load instead of ``conf/lamina.toml``."""


def _xdg(var: str, fallback: str) -> Path:
    return Path(os.environ.get(var) or Path.home() / fallback) / "lamina"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_heap(value: str) -> str:
    if not value or value[-1].lower() not in "mg" or not value[:-1].isdigit():
        raise ValueError(f"heap must look like '512m' or '2g', got {value!r}")
    return value


class StackSettings(_Section):
    """Where the local stack keeps its state and how long it waits."""

    state_dir: Path = Field(default_factory=lambda: _xdg("XDG_STATE_HOME", ".local/state"))
    """Data, logs and pid files of the local services (one sub-directory per service)."""
    cache_dir: Path = Field(default_factory=lambda: _xdg("XDG_CACHE_HOME", ".cache"))
    """Downloaded jars; shared by every checkout, never inside the work tree."""
    start_timeout_s: float = Field(default=240.0, gt=0)
    """How long ``stack up`` waits for a service to become ready, in seconds."""
    stop_timeout_s: float = Field(default=60.0, gt=0)
    """How long ``stack down`` waits after SIGTERM before it sends SIGKILL, in seconds."""
    airflow: bool = False
    """Whether ``stack up`` also starts the local Airflow (API server, scheduler, DAG
    processor; see ``[airflow]``), as ``stack up --with-airflow`` does. Off by default: the
    default stack is Kafka and Cassandra only."""

    @field_validator("state_dir", "cache_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return Path(value).expanduser().absolute()


KafkaSecurity = Literal["PLAINTEXT", "SASL_PLAINTEXT", "SSL", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]

_SASL_LOGIN = {
    "PLAIN": "org.apache.kafka.common.security.plain.PlainLoginModule",
    "SCRAM-SHA-256": "org.apache.kafka.common.security.scram.ScramLoginModule",
    "SCRAM-SHA-512": "org.apache.kafka.common.security.scram.ScramLoginModule",
}


def jaas_quote(value: str) -> str:
    """``value`` as a double-quoted JAAS option value (backslash and quote escaped)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class KafkaSettings(_Section):
    """A single-node Kafka in KRaft combined mode (broker + controller), and how every
    Lamina client (kafka-python and Spark's Kafka source and sink) authenticates to it."""

    version: str = "4.2.0"
    """``org.apache.kafka:kafka_2.13`` version fetched from Maven Central."""
    host: str = "127.0.0.1"
    port: int = Field(default=9092, ge=1, le=65535)
    """Client listener port (its protocol is ``security_protocol``)."""
    controller_port: int = Field(default=9093, ge=1, le=65535)
    """KRaft controller listener port."""
    heap: str = "512m"
    """JVM heap (-Xms and -Xmx)."""
    partitions: int = Field(default=2, ge=1)
    """Default partition count for auto-created topics."""
    security_protocol: KafkaSecurity = "PLAINTEXT"
    """How clients talk to the brokers: ``PLAINTEXT``, ``SASL_PLAINTEXT`` (user and password,
    no encryption), ``SSL`` (TLS) or ``SASL_SSL`` (both). The dev stack's broker serves
    ``PLAINTEXT`` or ``SASL_PLAINTEXT`` as set here."""
    sasl_mechanism: SaslMechanism = "PLAIN"
    """SASL mechanism with a ``SASL_*`` protocol: ``PLAIN``, ``SCRAM-SHA-256`` or
    ``SCRAM-SHA-512``."""
    username: str | None = None
    """SASL user (required with a ``SASL_*`` protocol, refused without one)."""
    password: SecretStr | None = None
    """SASL password (required with ``username``); shown as ``**********`` wherever settings
    are printed. Prefer the environment: ``LAMINA_KAFKA__PASSWORD``."""
    ssl_cafile: Path | None = None
    """PEM file of the CA(s) that signed the brokers' certificates, with ``SSL``/``SASL_SSL``
    (default: the system's trusted CAs for kafka-python, the JVM's for Spark)."""
    ssl_check_hostname: bool = True
    """With TLS, check that the broker's certificate names the host connected to."""

    _heap = field_validator("heap")(_check_heap)

    @field_validator("ssl_cafile")
    @classmethod
    def _absolute_file(cls, value: Path | None) -> Path | None:
        return None if value is None else Path(value).expanduser().absolute()

    @model_validator(mode="after")
    def _credentials_fit_protocol(self) -> KafkaSettings:
        sasl = self.security_protocol.startswith("SASL_")
        if sasl and (not self.username or self.password is None):
            raise ValueError(
                f"security_protocol {self.security_protocol} needs kafka.username and "
                "kafka.password"
            )
        if not sasl and (self.username or self.password is not None):
            raise ValueError(
                "kafka.username/password are only used with security_protocol SASL_PLAINTEXT "
                f"or SASL_SSL (it is {self.security_protocol})"
            )
        if self.username and any(c in self.username for c in '"\\=, \t\r\n'):
            raise ValueError(
                "kafka.username must not contain quotes, '\\', '=', ',' or spaces, "
                f"got {self.username!r}"
            )
        if self.ssl_cafile is not None and not self.security_protocol.endswith("SSL"):
            raise ValueError("kafka.ssl_cafile is only used with security_protocol SSL or SASL_SSL")
        return self

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def secret(self) -> str:
        """The SASL password in clear ('' without one)."""
        return "" if self.password is None else self.password.get_secret_value()

    def client_config(self) -> dict[str, Any]:
        """Keyword arguments for every kafka-python client (``KafkaProducer``,
        ``KafkaConsumer``, ``KafkaAdminClient``): the brokers and the security settings."""
        out: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.security_protocol,
        }
        if self.security_protocol.startswith("SASL_"):
            out |= {
                "sasl_mechanism": self.sasl_mechanism,
                "sasl_plain_username": self.username,
                "sasl_plain_password": self.secret,
            }
        if self.security_protocol.endswith("SSL"):
            out["ssl_check_hostname"] = self.ssl_check_hostname
            if self.ssl_cafile is not None:
                out["ssl_cafile"] = str(self.ssl_cafile)
        return out

    def spark_options(self) -> dict[str, str]:
        """Options for Spark's Kafka source and sink (``.options(**...)``): the brokers and the
        security settings as the Java client's ``kafka.*`` properties."""
        out = {
            "kafka.bootstrap.servers": self.bootstrap_servers,
            "kafka.security.protocol": self.security_protocol,
        }
        if self.security_protocol.startswith("SASL_"):
            assert self.username is not None
            out["kafka.sasl.mechanism"] = self.sasl_mechanism
            out["kafka.sasl.jaas.config"] = (
                f"{_SASL_LOGIN[self.sasl_mechanism]} required "
                f"username={jaas_quote(self.username)} password={jaas_quote(self.secret)};"
            )
        if self.security_protocol.endswith("SSL"):
            if self.ssl_cafile is not None:
                out["kafka.ssl.truststore.type"] = "PEM"
                out["kafka.ssl.truststore.location"] = str(self.ssl_cafile)
            if not self.ssl_check_hostname:
                out["kafka.ssl.endpoint.identification.algorithm"] = ""
        return out


class CassandraSettings(_Section):
    """A single-node Cassandra and how Lamina talks to it."""

    version: str = "5.0.8"
    """``org.apache.cassandra:cassandra-all`` version fetched from Maven Central."""
    host: str = "127.0.0.1"
    port: int = Field(default=9042, ge=1, le=65535)
    """CQL native transport port."""
    storage_port: int = Field(default=7000, ge=1, le=65535)
    """Inter-node (gossip) port; bound even on one node."""
    jmx_port: int = Field(default=7199, ge=1, le=65535)
    """Local-only JMX port (nodetool)."""
    heap: str = "1g"
    """JVM heap (-Xms and -Xmx)."""
    keyspace: str = "lamina"
    replication_factor: int = Field(default=1, ge=1)
    """SimpleStrategy replication factor; 3 on a real ring."""
    consistency: str = "LOCAL_ONE"
    """Read and write consistency level; LOCAL_QUORUM on a real ring."""
    commitlog_sync: Literal["batch", "group", "periodic"] = "batch"
    """How the dev stack's node makes writes durable. ``batch``: a write is acknowledged
    once its commit log entry is fsynced; the sync starts at once and takes every write
    that arrived meanwhile, so a node killed with SIGKILL (or a power cut) keeps every
    write it acknowledged and a lone write waits one fsync. ``group``: the same guarantee,
    but the syncs run every ``commitlog_sync_window_ms``, so each sequential write waits
    up to the window (Cassandra 5.0 rewrites ``system.compaction_history`` row by row at
    every start: 24,082 rows took 243 s with a 10 ms window). ``periodic`` (Cassandra's
    own default): acknowledged at once, fsynced every 10 s; a kill loses up to 10 s of
    acknowledged writes, which the speed layer cannot see (its real-time cells would then
    miss events until the next batch covers them)."""
    commitlog_sync_window_ms: int = Field(default=10, ge=1, le=1000)
    """The fsync window of ``commitlog_sync = "group"``: the most a write waits for its sync."""
    outage_retry_s: float = Field(default=120.0, ge=0)
    """How long a source job keeps retrying (with backoff) a micro-batch's real-time writes
    while Cassandra is unreachable before it stops with an error naming Cassandra."""
    username: str | None = None
    """Role to log in as (Cassandra's ``PasswordAuthenticator``); unset: no authentication.
    Letters, digits and ``_`` only. The dev stack turns ``PasswordAuthenticator`` on when it
    is set, creates the role on its first start and then locks the default ``cassandra``
    superuser."""
    password: SecretStr | None = None
    """The role's password (required with ``username``); shown as ``**********`` wherever
    settings are printed. Prefer the environment: ``LAMINA_CASSANDRA__PASSWORD``."""

    _heap = field_validator("heap")(_check_heap)

    @model_validator(mode="after")
    def _both_or_neither(self) -> CassandraSettings:
        if (self.username is None) != (self.password is None):
            raise ValueError("cassandra.username and cassandra.password go together: set both")
        if self.username is not None and not re.fullmatch(r"[A-Za-z0-9_]+", self.username):
            raise ValueError(
                f"cassandra.username may hold only letters, digits and '_', got {self.username!r}"
            )
        return self

    @field_validator("keyspace")
    @classmethod
    def _keyspace(cls, value: str) -> str:
        if not value.isidentifier() or not value.islower():
            raise ValueError(f"keyspace must be a lower-case identifier, got {value!r}")
        return value


class SparkSettings(_Section):
    """How Lamina's Spark jobs run."""

    master: str = "local[2]"
    """Spark master URL: ``local[N]`` here, ``spark://``, ``yarn`` or ``k8s://`` on a cluster."""
    shuffle_partitions: int = Field(default=2, ge=1)
    """``spark.sql.shuffle.partitions``; the default 200 makes local micro-batches slow."""
    driver_memory: str = "2g"
    checkpoint_dir: Path | None = None
    """Streaming checkpoints; defaults to ``<state_dir>/checkpoints``."""
    jobs_dir: Path | None = None
    """The registry of submitted streaming jobs (``lamina stream submit``) and their logs;
    defaults to ``<state_dir>/jobs``."""
    stop_timeout_s: float = Field(default=60.0, gt=0)
    """How long a graceful stop waits for a running micro-batch to finish."""
    restart_limit: int = Field(default=5, ge=0)
    """A submitted job's supervisor relaunches a driver that ended without a stop request at
    most this many times within ``restart_window_s``; one more end and the job is ``failed``
    (0: never relaunch)."""
    restart_window_s: float = Field(default=600.0, gt=0)
    """The window of ``restart_limit``, seconds."""
    restart_delay_s: float = Field(default=1.0, gt=0)
    """Seconds before the first relaunch; doubles with each relaunch still in the window."""
    restart_delay_max_s: float = Field(default=60.0, gt=0)
    """The cap of the relaunch delay, seconds."""
    conf: dict[str, str] = Field(default_factory=dict)
    """Extra ``spark.*`` settings passed to every session."""


class PipelineSettings(_Section):
    """Where the data lives and how ingestion is cut into epochs."""

    views_file: Path = Path("conf/views.toml")
    """View and source definitions (relative paths are taken from the working directory)."""
    master_dir: Path | None = None
    """Root of the master dataset (Parquet); defaults to ``<state_dir>/master``. A filesystem
    path: Lamina's own Python code reads and writes here too (imports, archiver progress), so
    on a cluster use a shared mount at the same path everywhere (``hdfs://``/``s3a://`` URLs
    are not supported yet; see docs/operations.md)."""
    epoch_seconds: int = Field(default=60, ge=1)
    """Length of an ingest epoch: the unit of batch/speed hand-over. Shorter = fresher batch
    cutoffs, more real-time rows."""
    write_concurrency: int = Field(default=64, ge=1)
    """In-flight Cassandra writes per Spark task."""
    max_offsets_per_trigger: int | None = Field(default=500_000, ge=1)
    """Cap on Kafka records per micro-batch and source (``maxOffsetsPerTrigger``): a job
    catching up on a backlog works in steps of at most this many records, each cached in
    the JVM while its outputs are written (~0.2 KB per record). Measured on 2 cores
    (bench/README.md): bigger steps drain faster (fewer cells re-merged, less per-batch
    overhead); ``None`` takes a whole backlog in one micro-batch."""
    trigger_s: float = Field(default=0.5, ge=0)
    """Micro-batch interval of the source jobs (``lamina stream run --trigger`` overrides):
    a micro-batch starts every this many seconds, or as soon as the previous one ends when
    it took longer (catch-up). ``0``: back to back, which makes idle jobs poll Kafka without
    pause; measured at 10k events/s on 2 cores, 0.5 s gave 2.5x lower latency than 0
    (bench/README.md)."""
    fail_on_data_loss: bool = True
    """A source job stops, naming the partitions and offsets, when Kafka deleted records
    (retention) before it archived them: the master dataset would silently miss them.
    ``false``: it goes on without them and counts them (``lost`` in ``stream status`` and
    ``lamina_speed_records{outcome="lost"}``)."""
    epoch_marks: bool = True
    """Whether a source job appends an *epoch mark* (a fixed small record, skipped by Lamina)
    to a partition of its topic that had no record in the current ingest epoch, so that
    epochs are declared complete from offsets and broker timestamps alone (see
    ``speed/completeness.py``). ``false`` writes nothing into source topics: partitions
    then count as complete up to 5 s before the moment the job was last caught up, by the
    driver's clock, which a broker clock behind the driver's or a transaction committed
    later can defeat (such records are counted as ``past_complete``)."""
    dedup_horizon_s: int = Field(default=600, ge=0)
    """The speed layer drops a copy of an event when it saw a copy of the same event id at
    most this many seconds of ingest time earlier (see ``speed/dedup.py``). Later copies are
    counted by the speed layer until the next batch (which deduplicates over everything) and
    listed in ``<topic>.duplicates``. Memory: 24 bytes per id seen in ``dedup_retain_s``."""
    dedup_retain_s: int = Field(default=1200, ge=0)
    """How long ids stay in the duplicate index (>= ``dedup_horizon_s``): copies between
    the horizon and this age are recognised and listed; older ones are not."""

    @model_validator(mode="after")
    def _retain_covers_horizon(self) -> PipelineSettings:
        if self.dedup_retain_s < self.dedup_horizon_s:
            raise ValueError(
                f"dedup_retain_s ({self.dedup_retain_s}) must be >= dedup_horizon_s "
                f"({self.dedup_horizon_s})"
            )
        return self


class BatchSettings(_Section):
    """How batch versions are built (``lamina batch run``, the DAGs): full recompute or
    incremental (see ``batch/incremental.py`` and the README's "Incremental builds")."""

    incremental: bool = False
    """``true``: a new version is built, where it is safe, as the published version's
    stored states merged with the events of the epochs completed since its cutoff (each
    build then also keeps its aggregated states as Parquet under
    ``<master_dir>/_batch_state``); otherwise, and whenever it is not safe, a full
    recompute of the whole master dataset. ``lamina batch run --incremental`` / ``--full``
    override it for one run."""
    full_every: int = Field(default=24, ge=0)
    """With ``incremental``: after this many incremental builds in a row, the next build
    of a view is a full recompute (``0``: only when an incremental one is not safe)."""


DEFAULT_JOB_CONF_ALLOWED = (
    "spark.executor.memory",
    "spark.executor.cores",
    "spark.driver.memory",
    "spark.sql.shuffle.partitions",
    "spark.cores.max",
)
"""Spark conf keys ``POST /jobs`` accepts by default: sizing only, nothing that loads code."""


class ServingSettings(_Section):
    """The HTTP query API (``lamina serve``)."""

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    max_buckets: int = Field(default=10_000, ge=1)
    """Largest number of buckets one query may span (a bad range gets a 400, not a scan)."""
    max_keys: int = Field(default=1000, ge=1)
    """Most keys one query may name (before duplicates are collapsed)."""
    max_cells: int = Field(default=50_000, ge=1)
    """Most cells one query may read: distinct keys x buckets of the view's own size in the
    range (a granularity coarser than the view's bucket does not make it cheaper). It bounds
    keys and range together: 1000 keys x 10,000 buckets is refused (400) though each is
    within its own limit."""
    max_index_rows: int = Field(default=1_000_000, ge=1)
    """Most key index rows one top-N or key listing may read (``/views/{view}/top``,
    ``/keys``): about keys with data x buckets in the range, per layer. Going over is a 400
    (narrow the range), never an unbounded scan."""
    max_limit: int = Field(default=10_000, ge=1)
    """Largest ``limit`` of a top-N or key listing."""
    index_cache_keys: int = Field(default=200_000, ge=0)
    """Most keys (over all entries) each API process keeps in its cache of folded batch key
    index ranges: a top-N or key listing over a range already asked of the published
    version reads only the real-time index rows. Exact (a version never changes once
    published); about 300 bytes a key (200,000 keys: ~60 MB); 0 turns the cache off."""
    timeout_s: float = Field(default=5.0, gt=0)
    """How long the API waits for Cassandra's answer to a read (and to connect) before it
    answers 503 (the store did not answer in time)."""
    workers: int = Field(default=1, ge=1)
    """Worker processes of ``lamina serve`` (``--workers``): each with its own event loop,
    Cassandra session and catalog snapshot, sharing the port. Metrics at ``/metrics`` are
    those of the worker that answers."""
    allowed_hosts: list[str] | None = None
    """``Host`` header values the API answers (exact names, ``*.example.com`` wildcards, or
    ``*`` for any); a request naming another host gets a 400, which defeats DNS rebinding.
    Also the origins allowed to change jobs (see ``jobs_token``). Default
    (:meth:`trusted_hosts`): 127.0.0.1, localhost, ::1 and ``host`` unless it is a wildcard
    address (0.0.0.0, ::)."""
    job_conf_allowed: list[str] = Field(default_factory=lambda: list(DEFAULT_JOB_CONF_ALLOWED))
    """The only Spark conf keys ``POST /jobs`` accepts (exact names); any other key is a 400.
    Keys such as ``spark.driver.extraJavaOptions`` or ``spark.jars.*`` run code of the
    caller's choosing: never list them. ``lamina stream submit --conf`` is not restricted."""
    job_masters: list[str] = Field(default_factory=list)
    """Spark masters ``POST /jobs`` may name besides ``spark.master`` (the default of a
    request without one); any other master is a 400."""
    jobs_token: SecretStr | None = None
    """When set, ``POST /jobs``, ``/jobs/{id}/stop`` and ``/jobs/{id}/restart`` require
    ``Authorization: Bearer <token>`` (else 401). Unset: no token (bind to 127.0.0.1)."""
    read_token: SecretStr | None = None
    """When set, the query routes (``/views``, ``/views/{view}``, ``/views/{view}/query``) and
    the job reads (``GET /jobs``, ``GET /jobs/{id}``) require ``Authorization: Bearer`` with
    this token or ``jobs_token`` (else 401). ``/health`` and ``/metrics`` stay open."""

    @field_validator("allowed_hosts")
    @classmethod
    def _host_patterns(cls, value: list[str] | None) -> list[str] | None:
        for pattern in value or ():
            wildcard = pattern.startswith("*")
            if pattern != "*" and (
                not pattern or "*" in pattern[1:] or (wildcard and not pattern.startswith("*."))
            ):
                raise ValueError(f"a host must be a name, '*.example.com' or '*', got {pattern!r}")
        return value

    @field_validator("jobs_token", "read_token")
    @classmethod
    def _token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("a token must have at least 16 characters")
        return value

    def trusted_hosts(self) -> list[str]:
        """The ``Host`` values the API answers (``allowed_hosts`` or its default), lower
        case, IPv6 literals in brackets as in a ``Host`` header (``[::1]``)."""
        hosts = self.allowed_hosts
        if hosts is None:
            hosts = ["127.0.0.1", "localhost", "::1"]
            if self.host not in ("0.0.0.0", "::", "", "[::]"):
                hosts.append(self.host)
        out: list[str] = []
        for host in hosts:
            host = host.lower()
            if ":" in host and not host.startswith("["):
                host = f"[{host}]"
            if host not in out:
                out.append(host)
        return out


class AirflowSettings(_Section):
    """How the Airflow DAGs in ``dags/`` run the batch pipeline and watch freshness, and
    where the dev stack's Airflow listens (``lamina stack up --with-airflow``).

    Endpoints: when an Airflow connection named by ``*_conn_id`` exists, its host and port
    override this file's ``[spark] master``, ``[cassandra]`` and ``[kafka]`` endpoints for
    the DAGs' tasks (e.g. ``AIRFLOW_CONN_LAMINA_CASSANDRA='cassandra://node1:9042'``).
    """

    host: str = "127.0.0.1"
    """Where the dev stack's Airflow API server (UI, REST and execution API) listens."""
    port: int = Field(default=8080, ge=1, le=65535)
    """Its port; the scheduler's tasks reach the execution API at
    ``http://<host>:<port>/execution/``, which the stack configures."""
    runner: Literal["taskflow", "spark_submit"] = "taskflow"
    """``taskflow``: the recompute runs ``batch.steps.build_views`` inside the Airflow worker
    (Spark per ``[spark] master``). ``spark_submit``: it runs ``batch/driver.py`` through
    the Spark provider's ``SparkSubmitOperator`` on the master of ``spark_conn_id``."""
    spark_conn_id: str = "lamina_spark"
    """Spark connection (the master URL); required by the ``spark_submit`` runner."""
    cassandra_conn_id: str = "lamina_cassandra"
    """Optional connection overriding ``[cassandra] host``/``port`` for the tasks."""
    kafka_conn_id: str = "lamina_kafka"
    """Optional connection overriding ``[kafka] host``/``port`` for the tasks."""
    build_timeout_s: float = Field(default=4 * 3600, gt=0)
    """Execution timeout of one recompute (Spark build) attempt, in seconds."""
    step_timeout_s: float = Field(default=600, gt=0)
    """Execution timeout of the short steps (validate, publish, purge, checks), in seconds."""
    max_divergence: float = Field(default=0.1, ge=0, le=1)
    """Alert threshold, never a gate: when more than this fraction of the reconciled (key,
    bucket) cells differ, or are missing on one side, between a new batch version and the
    real-time view, and the batch passed its self-check against the master dataset, the
    report says the speed layer diverged and the DAG's ``validate`` raises an alert; the
    version is published all the same (it is the speed layer's correction). A batch that
    fails its self-check is never published, whatever this value (1 = never alert)."""
    freshness_schedule: str = "*/15 * * * *"
    """Schedule of ``lamina_freshness``, which alerts on views past ``max_staleness_s``."""


class Settings(BaseSettings):
    """All of Lamina's settings. Build with :func:`load_settings`, not directly."""

    model_config = SettingsConfigDict(
        env_prefix="LAMINA_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    stack: StackSettings = Field(default_factory=StackSettings)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    cassandra: CassandraSettings = Field(default_factory=CassandraSettings)
    spark: SparkSettings = Field(default_factory=SparkSettings)
    pipeline: PipelineSettings = Field(default_factory=PipelineSettings)
    batch: BatchSettings = Field(default_factory=BatchSettings)
    serving: ServingSettings = Field(default_factory=ServingSettings)
    airflow: AirflowSettings = Field(default_factory=AirflowSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file's contents arrive as init kwargs; env vars must win over them.
        return (env_settings, init_settings)

    @property
    def checkpoint_dir(self) -> Path:
        return self.spark.checkpoint_dir or self.stack.state_dir / "checkpoints"

    @property
    def jobs_dir(self) -> Path:
        return self.spark.jobs_dir or self.stack.state_dir / "jobs"

    @property
    def master_dir(self) -> Path:
        return self.pipeline.master_dir or self.stack.state_dir / "master"


def default_config_path() -> Path | None:
    """The settings file to use: ``$LAMINA_CONFIG``, else ``./conf/lamina.toml`` if present."""
    explicit = os.environ.get(CONFIG_ENV)
    if explicit:
        return Path(explicit)
    local = Path("conf/lamina.toml")
    return local if local.is_file() else None


def _describe(err: ValidationError, source: str) -> str:
    parts = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            parts.append(f"{where}: unknown setting (check the spelling against conf/lamina.toml)")
        else:
            parts.append(f"{where}: {e['msg']} (got {e.get('input')!r})")
    return f"invalid settings in {source}: " + "; ".join(parts)


def load_settings(path: Path | str | None = None) -> Settings:
    """Load settings from ``path`` (or :func:`default_config_path`) plus env overrides.

    Raises :class:`ConfigError` naming the file, the key and the problem.
    """
    path = Path(path) if path is not None else default_config_path()
    data: dict[str, Any] = {}
    source = "defaults and LAMINA_* environment variables"
    if path is not None:
        source = f"{path} (or LAMINA_* environment variables)"
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(
                f"settings file {path} does not exist", hint=f"create it or unset {CONFIG_ENV}"
            ) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from None
    except SettingsError as exc:  # an environment value that is not the JSON it must be
        raise ConfigError(_describe_env_json(exc)) from None


def _describe_env_json(exc: SettingsError) -> str:
    """Name the ``LAMINA_*`` variables whose JSON does not parse (pydantic-settings names
    only the section)."""
    import json

    bad = []
    for name, value in sorted(os.environ.items()):
        if not name.upper().startswith("LAMINA_") or not value.lstrip().startswith(("{", "[")):
            continue
        try:
            json.loads(value)
        except ValueError as e:
            bad.append(f"{name} is not valid JSON ({e})")
    return "; ".join(bad) if bad else f"environment overrides: {exc}"


@contextlib.contextmanager
def environment(overrides: Mapping[str, str]) -> Iterator[None]:
    """Apply ``overrides`` to ``os.environ`` for the block, restored afterwards (also on
    errors), so settings loaded inside see them as ``LAMINA_*`` overrides."""
    saved = {k: os.environ.get(k) for k in overrides}
    os.environ.update(overrides)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
