"""The stack manager on a private Kafka (ports, up, status, down); a smoke check of the stack."""

from __future__ import annotations

import contextlib
import os
import random
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition

from lamina import process
from lamina.errors import PortInUseError, StackError
from lamina.settings import Settings
from lamina.stack.manager import ServiceStatus, Stack


def port_pairs() -> Iterator[tuple[int, int]]:
    """Random (client, controller) port pairs below the kernel's ephemeral range: the
    kernel never hands those out on its own (port 0, outgoing connections), so only a
    process that asked for one of them by number can hold it."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    rng = random.Random()
    while True:
        port = rng.randrange(20000, low - 1, 2)
        yield port, port + 1


def kafka_settings(stack: Settings, state_dir: Path, port: int, controller_port: int) -> Settings:
    """A private Kafka: its own state directory and ports, a small heap."""
    return stack.model_copy(
        update={
            "stack": stack.stack.model_copy(update={"state_dir": state_dir}),
            "kafka": stack.kafka.model_copy(
                update={"port": port, "controller_port": controller_port, "heap": "256m"}
            ),
        }
    )


def _lost_a_port(stack: Stack) -> bool:
    svc = stack.service("kafka")
    logs = [f for f in (svc.log_file, svc.stdout_file) if f.exists()]
    return any("Address already in use" in f.read_text(errors="replace") for f in logs)


def up_on_free_ports(
    stack: Settings, tmp: Path, attempts: int = 5, said: list[str] | None = None
) -> tuple[Stack, Settings, ServiceStatus]:
    """Start a private Kafka on ports nobody holds. A port taken before the start is
    refused by the stack manager (:class:`PortInUseError`); one taken between that check
    and Kafka's bind makes Kafka exit with "Address already in use": both move on to
    another pair, each attempt in a fresh state directory (storage is formatted for its
    controller port). ``said``: the lines of the successful start, appended."""
    ports = port_pairs()
    for attempt in range(attempts):
        settings = kafka_settings(stack, tmp / f"state{attempt}", *next(ports))
        private = Stack(settings, ["kafka"])
        lines: list[str] = []
        try:
            [status] = private.up(progress=lines.append)
            print("\n".join(lines))
            if said is not None:
                said += lines
            return private, settings, status
        except PortInUseError as exc:
            print(f"attempt {attempt}: {exc}")
        except StackError:
            private.down(progress=print)
            if not _lost_a_port(private):
                raise
            print(f"attempt {attempt}: Kafka lost a port to another process")
    raise AssertionError(f"no free pair of ports for a private Kafka in {attempts} attempts")


def test_up_is_idempotent_and_down_leaves_nothing(stack: Settings, tmp_path: Path) -> None:
    said: list[str] = []
    private, settings, first = up_on_free_ports(stack, tmp_path, said=said)
    try:
        assert first.healthy and first.pid is not None
        # Plain progress: the wait of a service it started is one line when it begins.
        assert "kafka: waiting until it is ready ..." in said, said
        assert said[-1].startswith("kafka: ready in"), said
        again_said: list[str] = []
        [again] = private.up(progress=again_said.append)
        assert again.pid == first.pid  # already up: a no-op
        assert [line.split(" (")[0].split(" in ")[0] for line in again_said] == [
            "kafka: already running",
            "kafka: ready",
        ], again_said  # no wait announced for a service already running
        [status] = private.status()
        assert status.healthy and status.version == settings.kafka.version
        assert status.port == settings.kafka.port
    finally:
        private.down(progress=print)
    svc = private.service("kafka")
    assert not process.alive(first.pid)
    assert not svc.pid_file.exists()
    assert not process.port_open(settings.kafka.host, settings.kafka.port)
    leftovers = [
        p.name
        for p in Path("/proc").iterdir()
        if p.name.isdigit() and svc.marker in (process.cmdline(int(p.name)) or "")
    ]
    assert leftovers == []
    [after] = private.status()
    assert after.state == "stopped"
    assert svc.log_file.exists()  # logs are kept after down


@pytest.mark.parametrize(
    ("label", "index", "variable"),
    [("client", 0, "LAMINA_KAFKA__PORT"), ("controller", 1, "LAMINA_KAFKA__CONTROLLER_PORT")],
)
def test_up_refuses_a_port_another_process_holds(
    stack: Settings, tmp_path: Path, label: str, index: int, variable: str
) -> None:
    """Both ports are bound here for the whole test (so nobody else can take them); only
    the one under test listens, like a process that already serves on it."""
    with contextlib.ExitStack() as held:
        for pair in port_pairs():
            socks = [held.enter_context(socket.socket()) for _ in pair]
            try:
                for sock, port in zip(socks, pair, strict=True):
                    sock.bind(("127.0.0.1", port))
                break
            except OSError:
                continue
        socks[index].listen()
        private = Stack(kafka_settings(stack, tmp_path / "state", *pair), ["kafka"])
        with pytest.raises(PortInUseError) as err:
            private.up(progress=print)
        taken = f"its {label} port 127.0.0.1:{pair[index]} is taken by pid {os.getpid()} ("
        assert taken in str(err.value) and variable in str(err.value)
    svc = private.service("kafka")
    assert not svc.pid_file.exists()  # nothing was started
    assert [s.state for s in private.status()] == ["stopped"]


def test_stack_smoke_kafka_round_trip(stack: Settings) -> None:
    """Smoke check of the shared Kafka itself (not of Lamina): records produced with
    kafka-python come back, from every partition, with their keys."""
    topic = f"t-smoke-{uuid.uuid4().hex[:8]}"
    sent = {f"k{i}".encode(): f"v{i}".encode() for i in range(100)}
    producer = KafkaProducer(bootstrap_servers=stack.kafka.bootstrap_servers)
    consumer = KafkaConsumer(
        bootstrap_servers=stack.kafka.bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=15_000,
        group_id=None,
    )
    try:
        acks = [producer.send(topic, key=k, value=v) for k, v in sent.items()]
        producer.flush()
        partitions = {f.get(timeout=30).partition for f in acks}
        assert len(partitions) == stack.kafka.partitions  # the broker's default, auto-created
        # Assigned, not subscribed: a subscription learns the topic's partitions only at
        # the consumer's next metadata refresh (minutes away when its first metadata
        # predates the topic's auto-creation), so it could read nothing for 15 s.
        consumer.assign([TopicPartition(topic, p) for p in sorted(partitions)])
        consumer.seek_to_beginning()
        got: dict[bytes, bytes] = {}
        seen: set[int] = set()
        for record in consumer:
            got[record.key] = record.value
            seen.add(record.partition)
            if len(got) == len(sent):
                break
        assert got == sent
        assert seen == partitions
    finally:
        producer.close()
        consumer.close()
        admin = KafkaAdminClient(bootstrap_servers=stack.kafka.bootstrap_servers)
        try:
            admin.delete_topics([topic])
        finally:
            admin.close()
