"""The streams' Spark-free contract: query names, checkpoint locks, progress files, Kafka
topics and offsets.

Every streaming query has a name, a checkpoint under ``settings.checkpoint_dir`` and a
``lamina-status.json`` next to it, rewritten by the job after each micro-batch (see
:class:`speed.queries.ProgressRecorder`). This module reads those files and Kafka's end
offsets, so the CLI, the HTTP API and the metrics endpoint can report rates and lag without
starting a JVM.

A job is a source: one query ``source-<name>`` reads the source's topic once and writes the
master dataset, the dead letters (``<topic>.deadletters``), the listed duplicates
(``<topic>.duplicates``) and every real-time view of the source (:mod:`speed.microbatch`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from lamina.errors import ConfigError, ConflictError, NotFoundError
from lamina.files import read_json, write_json_atomic
from lamina.settings import Settings
from lamina.views import Source, ViewCatalog

ARCHIVER = "archiver"
"""The name the source jobs record their master-dataset progress under (``_progress/``)."""

EPOCH_MARK_KEY = b"lamina:epoch-mark"
EPOCH_MARK_VALUE = b'{"lamina": "epoch-mark", "v": 1}'
"""An *epoch mark*: the record a source job appends to a partition of its topic that had no
record in the current ingest epoch, so that the partition's broker timestamps move on and
earlier epochs can be declared complete from offsets (:mod:`speed.completeness`). A record
with exactly this key and value is never an event nor a dead letter; other consumers of the
topic should skip it too (at most one per partition and epoch, and only on idle partitions)."""
EPOCH_MARK_REASON = "lamina epoch mark (not an event)"


def deadletter_topic(source: Source) -> str:
    return f"{source.topic}.deadletters"


DEADLETTER_RAW_MAX = 512 * 1024
"""Most bytes of a rejected record a dead letter repeats (``raw_base64``; ``raw_size`` is the
record's whole size): base64 makes 4/3 of them, and a letter must fit one Kafka message (the
broker's and the producer's default limit, 1 MiB) however large the record was. A longer
record stays whole in its source topic, at the letter's origin, while the topic keeps it."""


def duplicates_topic(source: Source) -> str:
    """Where a source job lists the duplicates it could not drop (see :mod:`speed.dedup`)."""
    return f"{source.topic}.duplicates"


def source_query(source: Source) -> str:
    return f"source-{source.name}"


def job_names(catalog: ViewCatalog) -> list[str]:
    """Every job of a deployment: each source a view reads (a source no view reads has
    nothing to keep fresh; ``master import`` archives its history)."""
    return list(dict.fromkeys(v.source.name for v in catalog.views.values()))


def job_source(catalog: ViewCatalog, what: str) -> Source:
    """The source of job ``what``; raises :class:`~lamina.errors.NotFoundError` for anything
    else, naming the job a view belongs to (jobs were per view before Lamina 0.4)."""
    names = job_names(catalog)
    if what in names:
        return catalog.sources[what]
    hint = f"jobs are sources: {', '.join(names) or 'none'}"
    if what in catalog.views:
        src = catalog.views[what].source.name
        hint = f"view {what!r} is kept by the job of its source: {src!r}"
    elif what == ARCHIVER:
        hint = f"every source job archives its source: {', '.join(names) or 'none'}"
    raise NotFoundError(f"unknown streaming job {what!r}", hint=hint)


def job_queries(catalog: ViewCatalog, what: str) -> dict[str, Source]:
    """The queries job ``what`` (a source name) runs, each with the source it reads."""
    src = job_source(catalog, what)
    return {source_query(src): src}


def checkpoint_path(settings: Settings, query: str) -> Path:
    return settings.checkpoint_dir / query


def planned_offsets(settings: Settings, query: str, batch_id: int) -> dict[int, int] | None:
    """The Kafka offsets (per partition) up to which micro-batch ``batch_id`` of ``query``
    reads, from the query's checkpoint (its offset log); ``None`` if not logged."""
    path = checkpoint_path(settings, query) / "offsets" / str(batch_id)
    try:
        last = path.read_text().strip().splitlines()[-1]
        (offsets,) = json.loads(last).values()
    except (OSError, IndexError, ValueError):
        return None
    return {int(p): int(o) for p, o in offsets.items()}


def committed_offsets(settings: Settings, query: str) -> dict[int, int] | None:
    """The Kafka offsets (per partition) up to which ``query`` has processed and committed
    its micro-batches, from its checkpoint (the offset log of the newest committed
    micro-batch); ``None`` before the first commit."""
    commits = checkpoint_path(settings, query) / "commits"
    try:
        done = [int(p.name) for p in commits.iterdir() if p.name.isdigit()]
    except OSError:
        return None
    for batch_id in sorted(done, reverse=True):
        found = planned_offsets(settings, query, batch_id)
        if found is not None:
            return found
    return None


_HELD: dict[str, IO[str]] = {}
"""Checkpoint locks this process holds, by lock-file path."""


def try_lock(settings: Settings, query: str, *, hold: bool = True) -> str | None:
    """Try to take the exclusive lock of ``query``'s checkpoint.

    Returns ``None`` on success (with ``hold=False`` the lock is released at once: a probe),
    else a description of the process holding it. A lock this process already holds counts
    as success. Locks are ``flock``s on ``<checkpoint_dir>/<query>.lock``; the kernel drops
    them when the holder exits, however it exits.
    """
    path = settings.checkpoint_dir / f"{query}.lock"
    if str(path) in _HELD:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    f = path.open("a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        return holder
    if not hold:
        f.close()
        return None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} ({' '.join(sys.argv)[:120]})")
    f.flush()
    _HELD[str(path)] = f
    return None


def lock_checkpoint(settings: Settings, query: str, *, hold: bool = True) -> None:
    """Take (``hold=False``: only probe) the lock of ``query``'s checkpoint, or refuse.

    Two processes writing one checkpoint corrupt it, so a second one is refused with
    :class:`~lamina.errors.ConflictError` naming the holder (see :func:`try_lock`). The lock
    protects a checkpoint directory on a local filesystem; on shared cluster storage the job
    registry's check (:mod:`speed.launcher`) is what stops a second submit.
    """
    holder = try_lock(settings, query, hold=hold)
    if holder is not None:
        raise ConflictError(
            f"the checkpoint of streaming query {query} is in use by {holder}",
            hint="stop that job or process first (lamina stream list / lamina stream stop ID):"
            " one checkpoint serves one running query",
        )


def lock_holder(settings: Settings, query: str) -> str | None:
    """Who holds ``query``'s checkpoint lock now (``None``: nobody), looked up without
    touching the lock (a probe that took it could make a job starting at that moment
    refuse): ``/proc/locks`` names the pid of the ``flock`` on the lock file's inode, and
    the file holds the description its holder wrote (see :func:`try_lock`)."""
    path = settings.checkpoint_dir / f"{query}.lock"
    try:
        st = path.stat()
        locks = Path("/proc/locks").read_text()
    except OSError:
        return None
    file_id = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in locks.splitlines():
        f = line.split()
        if len(f) > 5 and f[1] == "FLOCK" and f[5] == file_id:
            try:
                text = path.read_text().strip()
            except OSError:
                text = ""
            return text or f"pid {f[4]}"
    return None


def release_locks() -> None:
    """Release every checkpoint lock this process holds (its queries have stopped)."""
    while _HELD:
        _, f = _HELD.popitem()
        f.close()


def status_file(settings: Settings, query: str) -> Path:
    return checkpoint_path(settings, query) / "lamina-status.json"


def source_report_file(settings: Settings, query: str) -> Path:
    """The source job's own report (:mod:`speed.microbatch`): the last micro-batch's counts
    and time per step, running counters, duplicate index size, real-time cell I/O."""
    return checkpoint_path(settings, query) / "lamina-source.json"


def read_source_report(settings: Settings, query: str) -> dict[str, Any] | None:
    return read_json(source_report_file(settings, query))


def supervision_file(settings: Settings, query: str) -> Path:
    """What the supervisor of the submitted job running ``query`` reports
    (:mod:`speed.supervisor`): ``{"job", "restarts", "last_exit", "last_restart_at",
    "gave_up"}``, rewritten at each launch; absent for ``lamina stream run``."""
    return checkpoint_path(settings, query) / "lamina-supervisor.json"


def read_supervision(settings: Settings, query: str) -> dict[str, Any] | None:
    return read_json(supervision_file(settings, query))


def write_supervision(settings: Settings, query: str, report: dict[str, Any]) -> None:
    """Atomically replace ``query``'s :func:`supervision_file`."""
    write_json_atomic(supervision_file(settings, query), report)


def write_status(settings: Settings, query: str, status: dict[str, Any]) -> None:
    """Atomically replace ``query``'s status file."""
    write_json_atomic(status_file(settings, query), status)


@dataclass(frozen=True)
class QueryStatus:
    """The latest progress of one streaming query, plus its Kafka lag measured now.

    ``lag`` is the number of records in Kafka past the query's last processed offsets
    (``None`` if the query never completed a micro-batch or Kafka could not be asked);
    ``age_s`` is the time since the last progress report; ``epoch_mark_failures`` counts
    the epoch marks the job could not write since it started (:mod:`speed.completeness`).
    """

    query: str
    topic: str
    batch_id: int | None = None
    last_progress: float | None = None
    age_s: float | None = None
    input_rows: int | None = None
    input_rows_per_s: float | None = None
    processed_rows_per_s: float | None = None
    batch_duration_ms: int | None = None
    processed_offsets: dict[str, int] | None = None
    lag: int | None = None
    epoch_mark_failures: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_status(settings: Settings, query: str) -> dict[str, Any] | None:
    """The raw status the job last wrote for ``query``, or ``None`` if it never reported."""
    return read_json(status_file(settings, query))


def offsets_client(settings: Settings, timeout_ms: int = 3000) -> Any:
    """A group-less Kafka consumer for offset lookups that gives up after about
    ``timeout_ms`` per step when Kafka does not answer. The caller closes it."""
    from kafka import KafkaConsumer

    return KafkaConsumer(
        **settings.kafka.client_config(),
        enable_auto_commit=False,
        group_id=None,
        bootstrap_timeout_ms=timeout_ms,
        request_timeout_ms=timeout_ms,
    )


Offsets = dict[str, dict[str, int]]
"""Per topic, per partition (as a string, like Spark's progress JSON), an offset."""


def topic_offsets(
    settings: Settings, topics: set[str], timeout_ms: int = 3000
) -> tuple[Offsets, Offsets]:
    """Kafka's beginning and end offsets of every partition of ``topics`` (a topic that does
    not exist yet has ``{}``), with one client: one metadata request, one beginning- and one
    end-offsets request for all partitions. Raises if Kafka does not answer within about
    ``timeout_ms`` per step, so a status call or a metrics scrape stays bounded."""
    from kafka import TopicPartition

    consumer = offsets_client(settings, timeout_ms)
    try:
        existing = consumer.topics() & topics  # one metadata request for all topics
        tps = [
            TopicPartition(t, p)
            for t in sorted(existing)
            for p in sorted(consumer.partitions_for_topic(t) or ())
        ]
        first: Offsets = {t: {} for t in topics}
        last: Offsets = {t: {} for t in topics}
        if tps:
            for tp, off in consumer.beginning_offsets(tps, timeout_ms).items():
                first[tp.topic][str(tp.partition)] = off
            for tp, off in consumer.end_offsets(tps, timeout_ms).items():
                last[tp.topic][str(tp.partition)] = off
        return first, last
    finally:
        consumer.close()


def events_behind(
    settings: Settings,
    topic: str,
    processed: dict[str, int],
    latest: dict[str, int],
    most: int = 1000,
    timeout_ms: int = 3000,
) -> int | None:
    """How many of the records of ``topic`` between ``processed`` and ``latest`` (partition
    -> offset) are events, not the job's own epoch marks (:data:`EPOCH_MARK_KEY`): a job
    that read every event is caught up even while its latest marks wait for its next
    micro-batch. Reads those records (at most ``most``; ``None`` when there are more, or
    Kafka does not answer in time)."""
    from kafka import TopicPartition

    behind = {p: end - processed.get(p, 0) for p, end in latest.items()}
    behind = {p: n for p, n in behind.items() if n > 0}
    if not behind:
        return 0
    if sum(behind.values()) > most:
        return None
    consumer = offsets_client(settings, timeout_ms)
    try:
        tps = {TopicPartition(topic, int(p)): processed.get(p, 0) for p in behind}
        consumer.assign(list(tps))
        for tp, off in tps.items():
            consumer.seek(tp, off)
        left, events = dict(behind), 0
        deadline = time.monotonic() + timeout_ms / 1000
        while any(n > 0 for n in left.values()) and time.monotonic() < deadline:
            for tp, records in consumer.poll(timeout_ms=200).items():
                for r in records:
                    p = str(tp.partition)
                    if left.get(p, 0) <= 0 or r.offset >= latest[p]:
                        continue
                    left[p] -= 1
                    events += r.key != EPOCH_MARK_KEY
        return events if not any(n > 0 for n in left.values()) else None
    except Exception:  # Kafka down or slow: unknown
        return None
    finally:
        consumer.close()


def end_offsets(settings: Settings, topics: set[str], timeout_ms: int = 3000) -> Offsets:
    """Kafka's end offsets of ``topics`` (see :func:`topic_offsets`)."""
    return topic_offsets(settings, topics, timeout_ms)[1]


def query_statuses(
    settings: Settings,
    queries: dict[str, Source],
    *,
    with_lag: bool = True,
    latest: Offsets | None = None,
) -> list[QueryStatus]:
    """The status of each query in ``queries`` (name -> source it reads).

    Lag is Kafka's end offsets now (``latest`` if the caller already read them, else one
    round trip to Kafka for all queries) minus the offsets of the last committed micro-batch
    (from the query's checkpoint);
    it is ``None`` with ``with_lag=False`` or when Kafka is unreachable.
    """
    if latest is None:
        latest = {}
        if with_lag:
            try:
                latest = end_offsets(settings, {src.topic for src in queries.values()})
            except Exception:  # Kafka down: report progress without lag
                latest = {}
    now = time.time()
    out = []
    for query, source in queries.items():
        raw = read_status(settings, query)
        if raw is None:
            out.append(QueryStatus(query=query, topic=source.topic))
            continue
        # What the checkpoint says is done, not what the listener last wrote (a restarted
        # job re-running an unfinished micro-batch has not written its status yet).
        committed = committed_offsets(settings, query)
        processed = (
            {str(p): o for p, o in committed.items()}
            if committed is not None
            else {p: int(o) for p, o in raw.get("end_offsets", {}).get(source.topic, {}).items()}
        )
        lag = None
        if latest.get(source.topic):
            lag = sum(max(0, end - processed.get(p, 0)) for p, end in latest[source.topic].items())
        written = raw.get("written_at")
        out.append(
            QueryStatus(
                query=query,
                topic=source.topic,
                batch_id=raw.get("batch_id"),
                last_progress=written,
                age_s=None if written is None else round(now - written, 3),
                input_rows=raw.get("input_rows"),
                input_rows_per_s=raw.get("input_rows_per_s"),
                processed_rows_per_s=raw.get("processed_rows_per_s"),
                batch_duration_ms=raw.get("durations_ms", {}).get("triggerExecution"),
                processed_offsets=processed,
                lag=lag,
                epoch_mark_failures=raw.get("epoch_mark_failures"),
            )
        )
    return out


TIMESTAMP_TYPE = "message.timestamp.type"
LOG_APPEND_TIME = "LogAppendTime"


def ensure_topics(settings: Settings, topics: Iterable[str]) -> None:
    """Create missing topics (configured partition count) so a stream can start first.

    They are created with broker timestamps (``message.timestamp.type=LogAppendTime``)
    whatever the broker's default: a record's ingest epoch is its broker timestamp.
    """
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(**settings.kafka.client_config())
    try:
        existing = set(admin.list_topics())
        for t in sorted(set(topics) - existing):
            new = NewTopic(
                t, settings.kafka.partitions, 1, topic_configs={TIMESTAMP_TYPE: LOG_APPEND_TIME}
            )
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics([new])
    finally:
        admin.close()


def timestamp_types(settings: Settings, topics: Iterable[str]) -> dict[str, str]:
    """Each topic's effective ``message.timestamp.type`` (``CreateTime`` or
    ``LogAppendTime``), as the broker reports it."""
    from kafka import KafkaAdminClient
    from kafka.admin import ConfigResource, ConfigResourceType

    names = sorted(set(topics))
    admin = KafkaAdminClient(**settings.kafka.client_config())
    try:
        found = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, t, configs=[TIMESTAMP_TYPE]) for t in names],
            config_filter="all",
        )
    finally:
        admin.close()
    configs = found.get("topic", {})
    return {t: str(configs.get(t, {}).get(TIMESTAMP_TYPE, {}).get("value")) for t in names}


def require_broker_timestamps(settings: Settings, sources: Iterable[Source]) -> None:
    """Refuse source topics whose records carry the producer's clock (``CreateTime``).

    Ingest epochs, the batch cutoff and the duplicate horizon are all read from record
    timestamps: with ``CreateTime`` a producer's clock (or a replayed old timestamp) would
    file events into epochs a published batch already covers, where neither layer counts
    them. Raises :class:`~lamina.errors.ConfigError` naming each topic and the fix.
    """
    by_topic = {s.topic: s for s in sources}
    kinds = timestamp_types(settings, by_topic)
    deadline = time.monotonic() + 15
    while "None" in kinds.values() and time.monotonic() < deadline:
        # A topic created a moment ago may not be described yet (its metadata still
        # propagating): ask again rather than call it a CreateTime topic.
        time.sleep(0.5)
        kinds = timestamp_types(settings, by_topic)
    unknown = sorted(t for t, kind in kinds.items() if kind == "None")
    if unknown:
        raise ConfigError(
            f"Kafka at {settings.kafka.bootstrap_servers} does not describe source topic(s) "
            f"{', '.join(map(repr, unknown))}: they do not exist (or this user may not see "
            "their configuration)",
            hint="create them with message.timestamp.type=LogAppendTime, or let Lamina "
            "create them (lamina stream run creates missing topics)",
        )
    wrong = sorted(t for t, kind in kinds.items() if kind != LOG_APPEND_TIME)
    if wrong:
        boot = settings.kafka.bootstrap_servers
        raise ConfigError(
            "source topic(s) "
            + ", ".join(f"{t!r} ({kinds[t]})" for t in wrong)
            + f" must use broker timestamps ({TIMESTAMP_TYPE}={LOG_APPEND_TIME}): ingest "
            "epochs come from record timestamps, and producer clocks would file events into "
            "epochs a published batch already covers",
            hint=" ; ".join(
                f"kafka-configs.sh --bootstrap-server {boot} --alter --entity-type topics "
                f"--entity-name {t} --add-config {TIMESTAMP_TYPE}={LOG_APPEND_TIME}"
                for t in wrong
            ),
        )
