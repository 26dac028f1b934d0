"""``lamina demo``: start the stack, stream events through Spark into Cassandra, show answers.

For now the smoke pipeline (produce -> Structured Streaming count -> Cassandra -> read back),
checked against the counts the demo computed itself while producing.
"""

from __future__ import annotations

import random
import time
import uuid
from collections import Counter
from collections.abc import Callable

from lamina.errors import StackError
from lamina.settings import Settings

KEYS = ("checkout", "home", "pricing", "docs", "blog", "signup")


def produce_events(bootstrap: str, topic: str, n: int, seed: int = 7) -> Counter[str]:
    """Produce ``n`` JSON events keyed by page; return the count per key actually acked."""
    import json

    from kafka import KafkaProducer

    rng = random.Random(seed)
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=256 * 1024)
    truth: Counter[str] = Counter()
    try:
        futures = []
        for i in range(n):
            key = rng.choice(KEYS)
            value = {"event_id": str(uuid.uuid4()), "page": key, "ts": time.time(), "seq": i}
            futures.append(
                (key, producer.send(topic, key=key.encode(), value=json.dumps(value).encode()))
            )
        producer.flush()
        for key, fut in futures:
            fut.get(timeout=30)
            truth[key] += 1
    finally:
        producer.close()
    return truth


def run_demo(
    settings: Settings, *, events: int, stop: bool, progress: Callable[[str], None]
) -> int:
    """Run the smoke demo end to end; returns the process exit status."""
    import tempfile

    from batch.spark import spark_session
    from lamina.stack.manager import Stack
    from speed.smoke import read_counts, start_count_stream

    stack = Stack(settings)
    stack.up(progress=progress)
    try:
        topic = f"lamina-demo-{int(time.time())}"
        table = "demo_counts"
        progress(f"producing {events} events to Kafka topic {topic} ...")
        truth = produce_events(settings.kafka.bootstrap_servers, topic, events)
        progress("starting Spark (local mode) and the streaming count job ...")
        spark = spark_session(settings, "lamina-demo")
        from serving.cassandra import session
        from speed.smoke import create_count_table

        create_count_table(settings, table)
        with session(settings.cassandra, settings.cassandra.keyspace) as s:
            s.execute(f"TRUNCATE {table}")
        with tempfile.TemporaryDirectory(prefix="lamina-demo-ckpt-") as ckpt:
            query = start_count_stream(spark, settings, topic=topic, table=table, checkpoint=ckpt)  # type: ignore[arg-type]
            try:
                t0 = time.monotonic()
                query.processAllAvailable()
                progress(f"stream caught up in {time.monotonic() - t0:.1f}s")
            finally:
                query.stop()
        answers = read_counts(settings, table)
        progress(f"counts read back from Cassandra table {settings.cassandra.keyspace}.{table}:")
        width = max(len(k) for k in KEYS)
        ok = True
        for key in sorted(truth):
            got = answers.get(key)
            mark = "ok" if got == truth[key] else "MISMATCH"
            ok &= got == truth[key]
            print(f"    {key:<{width}}  cassandra={got!s:>6}  produced={truth[key]:>6}  {mark}")
        if not ok:
            raise StackError("the streamed counts differ from the produced events")
        progress("all counts match what was produced.")
    finally:
        if stop:
            stack.down(progress=progress)
        else:
            progress("the stack is still running: `lamina stack status`, `lamina stack down`")
    return 0
