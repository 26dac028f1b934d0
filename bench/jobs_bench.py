"""Streaming-job lifecycle figures: how long ``lamina stream submit|stop|restart`` take.

Submits one view's speed job through ``spark-submit`` (:mod:`speed.launcher`) on private
topics, checkpoints, job registry and keyspace, and prints:

- submit call (spawn + registry write), submit -> driver running, submit -> first progress;
- catch-up: ``--events`` events preloaded -> lag 0 (events/s of one job);
- graceful stop; restart -> running; events produced while stopped -> lag 0 again.

Needs the local stack (``lamina stack up``). Example::

    .venv/bin/python bench/jobs_bench.py --events 20000 --repeat 2
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from common import ROOT, private_settings  # type: ignore[import-not-found]
from kafka import KafkaProducer
from rich.console import Console
from rich.table import Table

from lamina.settings import Settings
from lamina.streams import end_offsets, ensure_topics
from lamina.views import load_views
from speed import launcher

VIEW = "cloud_metering"


def setup(workdir: Path) -> Settings:
    base = private_settings(workdir, "jbench")
    suffix = uuid.uuid4().hex[:8]
    workdir.mkdir(parents=True, exist_ok=True)
    views = workdir / "views.toml"
    text = (ROOT / "conf" / "views.toml").read_text()
    views.write_text(re.sub(r'^topic = "([^"]+)"', rf'topic = "\1-{suffix}"', text, flags=re.M))
    return base.model_copy(
        update={
            "pipeline": base.pipeline.model_copy(update={"views_file": views}),
            "spark": base.spark.model_copy(
                update={"checkpoint_dir": workdir / "ck", "jobs_dir": workdir / "jobs"}
            ),
        }
    )


def produce(settings: Settings, topic: str, n: int, seed: int) -> None:
    producer = KafkaProducer(**settings.kafka.client_config(), linger_ms=20)
    base = int(time.time()) - 3600
    for i in range(n):
        ev = {
            "usage_id": f"{seed}-{i}",
            "customer": f"c{i % 50}",
            "instance_type": "m5.xlarge",
            "instance_seconds": 60,
            "ts": base + i % 3600,
        }
        producer.send(topic, json.dumps(ev).encode())
    producer.flush()
    producer.close()


def wait_for(what: str, check: Any, timeout_s: float = 600) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if check():
            return time.monotonic() - t0
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


def caught_up(settings: Settings, job_id: str, topic: str) -> bool:
    want = end_offsets(settings, {topic})[topic]
    st = launcher.status(settings, job_id)
    done = st["queries"][0]["processed_offsets"] or {}
    return all(done.get(p, -1) >= o for p, o in want.items())


def one_round(settings: Settings, events: int, seed: int) -> dict[str, float]:
    catalog = load_views(settings.pipeline.views_file)
    topic = catalog.view(VIEW).source.topic
    ensure_topics(settings, [topic, f"{topic}.deadletters"])
    produce(settings, topic, events, seed)
    out: dict[str, float] = {}
    t0 = time.monotonic()
    job = launcher.submit(settings, catalog, VIEW)
    out["submit_call_s"] = time.monotonic() - t0
    wait_for("running", lambda: launcher.load(settings, job.id).state == "running")
    out["to_running_s"] = time.monotonic() - t0
    wait_for("catch-up", lambda: caught_up(settings, job.id, topic))
    out["to_caught_up_s"] = time.monotonic() - t0
    out["catchup_events_per_s"] = events / (out["to_caught_up_s"] - out["to_running_s"])
    t0 = time.monotonic()
    stopped = launcher.stop(settings, job.id)
    out["stop_s"] = time.monotonic() - t0
    assert stopped.state == "stopped", stopped
    produce(settings, topic, events // 10, seed + 1)
    t0 = time.monotonic()
    launcher.restart(settings, job.id)
    wait_for("running again", lambda: launcher.load(settings, job.id).state == "running")
    out["restart_to_running_s"] = time.monotonic() - t0
    wait_for("catch-up after restart", lambda: caught_up(settings, job.id, topic))
    out["restart_to_caught_up_s"] = time.monotonic() - t0
    launcher.stop(settings, job.id)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--events", type=int, default=20_000, help="events preloaded per round")
    p.add_argument("--repeat", type=int, default=2, help="rounds (each with a fresh job)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args()
    console = Console()
    rounds = []
    with tempfile.TemporaryDirectory(prefix="lamina-jobs-bench-") as tmp:
        for r in range(args.repeat):
            settings = setup(Path(tmp) / f"r{r}")
            with console.status(f"round {r + 1}/{args.repeat}: submit, catch up, stop, restart"):
                rounds.append(one_round(settings, args.events, seed=r * 100))
    table = Table(title=f"stream job lifecycle ({VIEW}, {args.events:,} events, spark-submit)")
    table.add_column("figure")
    for r in range(len(rounds)):
        table.add_column(f"round {r + 1}", justify="right")
    table.add_column("median", justify="right")
    for key in rounds[0]:
        vals = [x[key] for x in rounds]
        table.add_row(key, *(f"{v:,.2f}" for v in vals), f"{statistics.median(vals):,.2f}")
    console.print(table)
    if args.json:
        args.json.write_text(json.dumps(rounds, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
