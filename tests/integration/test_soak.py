"""The soak harness, short: every fault kind once, on the real stack, with exact answers.

``bench/soak.py`` runs the whole platform as a user would (submitted source jobs under their
supervisor, ``lamina serve``, ``lamina batch run`` between rounds) against late events,
redeliveries and malformed records from the fuzz corpus, and kills each part with SIGKILL
while queries run: a job's Python driver, a job's Spark JVM in the middle of a micro-batch, a
batch while it publishes, Cassandra and Kafka (restarted after a pause). This test runs two
cycles of it with every fault kind and asserts what the long run is judged on: every cell of
every merged answer equals the truth at each checkpoint, no query got a wrong answer or an
unexplained error, every malformed record is a dead letter with a reason, and the jobs were
brought back by their supervisor, not by the harness.

It stops and starts the session stack's Cassandra and Kafka (and always leaves them up).
"""

from __future__ import annotations

from pathlib import Path

from bench.soak import FAULTS, Config, run
from lamina.settings import Settings


def test_the_platform_survives_every_fault_with_exact_answers(
    stack: Settings, tmp_path: Path
) -> None:
    cfg = Config(
        events=4500,
        cycles=2,
        faults=FAULTS,
        min_each=1,
        pause_s=5,
        round_s=8,
        malformed=0.01,
        state=tmp_path,
    )
    report = run(cfg)
    summary = {k: v for k, v in vars(report).items() if k != "config"}
    assert report.failure == "", summary
    assert report.ok, summary
    assert report.faults == dict.fromkeys(FAULTS, 1), summary
    assert report.checkpoints == 4 and report.batch_cycles == 2, summary
    # The killed drivers (Python and JVM) came back by their supervisor.
    assert report.job_restarts >= 2, summary
    assert report.cells_checked > 0 and report.queries.get("200", 0) > 0, summary
    assert report.malformed_sent > 0, summary
    assert report.dead_letters_matched >= report.malformed_sent, summary
