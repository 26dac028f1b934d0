"""Fuzz run: malformed records (``bench/corpus.py``) through a source's stream job and through
``lamina master import``; every one must be a dead letter with a reason, and none may stop a
job or reach the master dataset or a view.

    python bench/fuzz.py --records 100000 [--source pageviews] [--seed 0] [--json out.json]

On the running local stack (``conf/lamina.toml`` + ``LAMINA_*``), in a private world: topics
``<topic>-fz<hex>``, keyspace ``fz_<hex>``, master dataset, checkpoints and job registry under
a temporary directory, all deleted at the end (``--keep`` keeps them). Steps:

1. ``--records`` malformed records plus one valid record per ``--valid-every`` are sent to the
   source's topic, and the source's job runs (``lamina stream run SOURCE`` in a new process)
   until its checkpoint has committed the topic's end offsets. Checked: the process did not
   exit on its own (no crash) and stops cleanly on SIGINT (exit 0); every malformed record
   has exactly one dead letter, with a reason, and no valid record has one
   (:func:`corpus.match_dead_letters`); the job's archive holds exactly the valid records;
   the views' real-time tables count exactly the valid records.
2. The same records, those that are one JSON line each (:func:`corpus.is_line`: the corpus's
   blank records and those with a newline byte are left out), are written as a JSON-lines
   file and imported with ``lamina master import`` (a new process). Checked: exit 0, the
   import's rejects file holds one line with a reason per malformed record, the imported
   files hold exactly the valid records.

Prints progress and a report; ``--json`` writes it. Exit status 0 iff every check passed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import corpus  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from kafka import KafkaAdminClient, KafkaProducer  # noqa: E402

from lamina.master import archive_dir, deadletter_dir, imports_dir  # noqa: E402
from lamina.settings import Settings, environment, load_settings  # noqa: E402
from lamina.streams import (  # noqa: E402
    committed_offsets,
    deadletter_topic,
    duplicates_topic,
    end_offsets,
    ensure_topics,
    source_query,
)
from lamina.views import Source, load_views  # noqa: E402
from speed.deadletters import read_deadletters  # noqa: E402

Say = Callable[[str], None]


def say(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)


# -- the private world ----------------------------------------------------------------------


def private_env(workdir: Path, prefix: str = "fz") -> dict[str, str]:
    """``LAMINA_*`` for a private world under ``workdir``: every topic of conf/views.toml
    renamed ``<topic>-<prefix><hex>``, keyspace ``<prefix>_<hex>``."""
    suffix = uuid.uuid4().hex[:8]
    views = workdir / "views.toml"
    text = (ROOT / "conf" / "views.toml").read_text()
    views.write_text(
        re.sub(r'^topic = "([^"]+)"', rf'topic = "\1-{prefix}{suffix}"', text, flags=re.M)
    )
    return {
        "LAMINA_CONFIG": str(ROOT / "conf" / "lamina.toml"),
        "LAMINA_CASSANDRA__KEYSPACE": f"{prefix}_{suffix}",
        "LAMINA_PIPELINE__VIEWS_FILE": str(views),
        "LAMINA_PIPELINE__MASTER_DIR": str(workdir / "master"),
        "LAMINA_SPARK__CHECKPOINT_DIR": str(workdir / "checkpoints"),
        "LAMINA_SPARK__JOBS_DIR": str(workdir / "jobs"),
        "LAMINA_SPARK__DRIVER_MEMORY": "1g",
    }


def settings_of(env: dict[str, str]) -> Settings:
    with environment(env):
        return load_settings()


def drop_world(settings: Settings, source: Source) -> None:
    """Delete the private keyspace and the source's topics (never shared names)."""
    from serving.cassandra import session

    ks = settings.cassandra.keyspace
    shared = {s.topic for s in load_views(ROOT / "conf" / "views.toml").sources.values()}
    if source.topic in shared or not re.fullmatch(r"[a-z]+_[0-9a-f]{8}", ks):
        raise ValueError(f"refusing to drop {ks} / {source.topic}: not a private world")
    with session(settings.cassandra) as s:
        s.execute(f"DROP KEYSPACE IF EXISTS {ks}", timeout=120)
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers)
    try:
        mine = {source.topic, deadletter_topic(source), duplicates_topic(source)}
        doomed = sorted(mine & set(admin.list_topics()))
        if doomed:
            admin.delete_topics(doomed, timeout_ms=60_000)
    finally:
        admin.close()


# -- the records ----------------------------------------------------------------------------


def records(source: Source, n: int, seed: int, valid_every: int) -> Iterator[tuple[str, bytes]]:
    """``n`` malformed records of the corpus, with a valid one (kind ``valid``) after every
    ``valid_every`` of them (0: none)."""
    import random

    rng = random.Random(seed + 1)
    now = time.time()
    for i, got in enumerate(corpus.corpus(source, n, seed), 1):
        yield got
        if valid_every and i % valid_every == 0:
            rec = corpus.valid(source, rng)
            rec[source.event_time] = event_time(source, now - rng.uniform(0, 600))
            yield "valid", json.dumps(rec).encode()


def event_time(source: Source, seconds: float) -> Any:
    """``seconds`` since the epoch as ``source`` writes event times."""
    if source.event_time_format == "iso8601":
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
    value = seconds * (1000 if source.event_time_format == "epoch_ms" else 1)
    return int(value) if source.fields[source.event_time] == "long" else value


def produce(settings: Settings, topic: str, values: list[bytes], progress: Say) -> None:
    """Send ``values`` to ``topic``; each acknowledged, or raise."""
    producer = KafkaProducer(
        bootstrap_servers=settings.kafka.bootstrap_servers,
        linger_ms=20,
        batch_size=256 << 10,
        max_request_size=corpus.MAX_RECORD_BYTES + (48 << 10),
        acks="all",
    )
    try:
        futures = []
        for i, v in enumerate(values, 1):
            futures.append(producer.send(topic, value=v))
            if i % 20_000 == 0:
                progress(f"sent {i}/{len(values)} records")
        producer.flush()
        for f in futures:
            f.get(timeout=60)
    finally:
        producer.close()


# -- checks ---------------------------------------------------------------------------------


def parquet_ids(root: Path, source: Source) -> list[Any]:
    """The event ids in the parquet files under ``root`` (staging directories excluded)."""
    ids: list[Any] = []
    for p in sorted(root.rglob("*.parquet")) if root.is_dir() else []:
        if "_staging" in p.parts or any(part.startswith(".") for part in p.parts):
            continue
        ids += pq.read_table(p, columns=[source.event_id]).column(0).to_pylist()
    return ids


def view_counts(settings: Settings, source: Source) -> dict[str, int]:
    """Per view of ``source``: the events its real-time table counts (the sum of its first
    ``count`` aggregation over every row), or -1 if the view has no count."""
    from serving.cassandra import session
    from serving.schema import realtime_table

    catalog = load_views(settings.pipeline.views_file)
    out: dict[str, int] = {}
    with session(settings.cassandra) as s:
        for view in catalog.views.values():
            if view.source.name != source.name:
                continue
            counts = [n for n, a in view.aggregations.items() if a.fn == "count"]
            if not counts:
                out[view.name] = -1
                continue
            table = f"{settings.cassandra.keyspace}.{realtime_table(view)}"
            try:
                rows = s.execute(f"SELECT {counts[0]} FROM {table}", timeout=60)
                out[view.name] = sum(int(r[0] or 0) for r in rows)
            except Exception as e:  # reported as a count that cannot match, not raised
                print(f"cannot read {table}: {e}", file=sys.stderr)
                out[view.name] = -1
    return out


def _passes(view: Any, ev: dict[str, Any]) -> bool:
    import operator

    ops = {"==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le}
    ops |= {">": operator.gt, ">=": operator.ge}
    for c in view.filter:
        v = ev.get(c.field)
        if c.op == "is_null":
            ok = v is None
        elif c.op == "not_null":
            ok = v is not None
        elif v is None:
            ok = False
        elif c.op in ("in", "not_in"):
            ok = (v in c.value) == (c.op == "in")
        else:
            ok = ops[c.op](v, c.value)
        if not ok:
            return False
    return all(ev.get(k) is not None for k in view.keys)


def want_counts(settings: Settings, source: Source, valid: list[bytes]) -> dict[str, int]:
    """What :func:`view_counts` should find: the valid records each view selects."""
    from lamina.events import parse_event

    catalog = load_views(settings.pipeline.views_file)
    events = [parse_event(v, source) for v in valid]
    out: dict[str, int] = {}
    for view in catalog.views.values():
        if view.source.name != source.name:
            continue
        counts = [a for a in view.aggregations.values() if a.fn == "count"]
        if not counts:
            out[view.name] = -1
            continue
        field = counts[0].field
        out[view.name] = sum(
            1
            for ev in events
            if isinstance(ev, dict) and _passes(view, ev) and (not field or ev[field] is not None)
        )
    return out


# -- the stream -----------------------------------------------------------------------------


@contextmanager
def stream_job(env: dict[str, str], source: Source, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``lamina stream run SOURCE --trigger 0`` in a new process (its output in ``log``);
    stopped with SIGINT at the end (killed if it does not stop in 120 s)."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lamina.cli", "stream", "run", source.name, "--trigger", "0"],
            env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def run_stream(
    env: dict[str, str],
    source: Source,
    sent: list[tuple[str, bytes]],
    workdir: Path,
    progress: Say,
    *,
    stall_s: float = 600.0,
) -> dict[str, Any]:
    """Step 1 of the module docstring; the stream part of the report."""
    settings = settings_of(env)
    ensure_topics(settings, [source.topic, deadletter_topic(source), duplicates_topic(source)])
    t0 = time.monotonic()
    produce(settings, source.topic, [v for _, v in sent], progress)
    produced_s = time.monotonic() - t0
    progress(f"sent {len(sent)} records to {source.topic} in {produced_s:.1f}s")
    ends = {int(p): o for p, o in end_offsets(settings, {source.topic})[source.topic].items()}
    log = workdir / "stream.log"
    crashed: str | None = None
    t1 = time.monotonic()
    with stream_job(env, source, log) as proc:
        last, last_change, done = None, time.monotonic(), False
        while not done:
            time.sleep(2)
            if proc.poll() is not None:
                crashed = f"the job exited by itself with status {proc.returncode}"
                break
            with environment(env):
                got = committed_offsets(settings, source_query(source)) or {}
            done = all(got.get(p, 0) >= o for p, o in ends.items())
            now = sum(min(got.get(p, 0), o) for p, o in ends.items())
            if now != last:
                progress(f"stream job: {now}/{sum(ends.values())} offsets committed")
                last, last_change = now, time.monotonic()
            elif time.monotonic() - last_change > stall_s:
                crashed = f"no progress for {stall_s:.0f}s at {now}/{sum(ends.values())} offsets"
                break
        drained_s = time.monotonic() - t1
    exit_code = proc.returncode
    if crashed is None and exit_code != 0:
        crashed = f"the job exited with status {exit_code} when stopped"
    progress(f"stream job {'drained' if crashed is None else 'FAILED: ' + crashed}")
    progress(f"reading the dead letters of {source.topic} and checking them")
    letters = read_deadletters(settings, source, timeout_s=30)
    bad = [v for k, v in sent if k != "valid"]
    valid = [v for k, v in sent if k == "valid"]
    match = corpus.match_dead_letters(bad, letters)
    archived = parquet_ids(archive_dir(settings, source), source)
    want_ids = sorted(json.loads(v)[source.event_id] for v in valid)
    views, want_views = view_counts(settings, source), want_counts(settings, source, valid)
    tail = log.read_text(errors="replace").splitlines()[-15:]
    return {
        "records": len(sent),
        "malformed": len(bad),
        "valid": len(valid),
        "produce_s": round(produced_s, 1),
        "drain_s": round(drained_s, 1),
        "crash": crashed,
        "exit_code": exit_code,
        "tracebacks_in_log": log.read_text(errors="replace").count("Traceback"),
        "dead_letters": match.as_dict(),
        "archive_rows": len(archived),
        "archive_ok": sorted(archived) == want_ids,
        "view_counts": views,
        "view_counts_want": want_views,
        "views_ok": views == want_views,
        "log_tail": tail if crashed else [],
    }


# -- the import -----------------------------------------------------------------------------


def run_import(
    env: dict[str, str], source: Source, sent: list[tuple[str, bytes]], workdir: Path, progress: Say
) -> dict[str, Any]:
    """Step 2 of the module docstring; the import part of the report."""
    settings = settings_of(env)
    lines = [(k, v) for k, v in sent if corpus.is_line(v)]
    path = workdir / "fuzz.jsonl"
    with path.open("wb") as f:
        for _, v in lines:
            f.write(v + b"\n")
    progress(f"importing {len(lines)} lines ({len(sent) - len(lines)} records are no line)")
    t0 = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "lamina.cli", "master", "import", source.name, str(path)],
        env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    took = time.monotonic() - t0
    progress(f"master import exited {out.returncode} after {took:.1f}s")
    letters: list[dict[str, Any]] = []
    for p in sorted(deadletter_dir(settings, source).glob("import-*.jsonl")):
        with p.open() as f:
            letters += [json.loads(line) for line in f]
    bad = [v for k, v in lines if k != "valid"]
    valid = [v for k, v in lines if k == "valid"]
    match = corpus.match_dead_letters(bad, letters)
    imported = parquet_ids(imports_dir(settings, source), source)
    want_ids = sorted(json.loads(v)[source.event_id] for v in valid)
    return {
        "lines": len(lines),
        "malformed": len(bad),
        "valid": len(valid),
        "left_out": len(sent) - len(lines),
        "import_s": round(took, 1),
        "exit_code": out.returncode,
        "traceback": "Traceback" in out.stderr,
        "stderr_tail": out.stderr.splitlines()[-10:] if out.returncode else [],
        "dead_letters": match.as_dict(),
        "imported_rows": len(imported),
        "imported_ok": sorted(imported) == want_ids,
    }


def ok(report: dict[str, Any]) -> bool:
    s, i = report.get("stream"), report.get("import")
    good = True
    if s is not None:
        good &= s["crash"] is None and s["exit_code"] == 0 and s["dead_letters"]["ok"]
        good &= s["archive_ok"] and s["views_ok"]
    if i is not None:
        good &= i["exit_code"] == 0 and not i["traceback"] and i["dead_letters"]["ok"]
        good &= i["imported_ok"]
    return bool(good)


def fuzz(
    env: dict[str, str],
    source_name: str,
    n: int,
    *,
    seed: int = 0,
    valid_every: int = 100,
    workdir: Path,
    stream: bool = True,
    imports: bool = True,
    progress: Say = say,
) -> dict[str, Any]:
    """Run the fuzz steps in the private world ``env``; the report (``ok``: every check)."""
    source = load_views(Path(env["LAMINA_PIPELINE__VIEWS_FILE"])).sources[source_name]
    progress(f"drawing {n} malformed records of {source_name} (seed {seed})")
    sent = list(records(source, n, seed, valid_every))
    kinds: dict[str, int] = {}
    for k, _ in sent:
        kinds[k] = kinds.get(k, 0) + 1
    report: dict[str, Any] = {
        "source": source_name,
        "topic": source.topic,
        "seed": seed,
        "kinds": dict(sorted(kinds.items())),
        "bytes": sum(len(v) for _, v in sent),
    }
    if stream:
        report["stream"] = run_stream(env, source, sent, workdir, progress)
    if imports:
        report["import"] = run_import(env, source, sent, workdir, progress)
    report["ok"] = ok(report)
    return report


def _summary(report: dict[str, Any]) -> list[str]:
    out = [f"fuzz of {report['source']} (seed {report['seed']}): {report['kinds']}"]
    for part in ("stream", "import"):
        r = report.get(part)
        if r is None:
            continue
        d = r["dead_letters"]
        extra = (
            f"crash: {r['crash']}, exit {r['exit_code']}, archive ok {r['archive_ok']}, "
            f"views ok {r['views_ok']} {r['view_counts']}"
            if part == "stream"
            else f"exit {r['exit_code']}, imported ok {r['imported_ok']}, "
            f"{r['left_out']} records left out (no JSON line)"
        )
        out.append(
            f"{part}: {d['sent']} malformed, {d['matched']} dead letters matched, "
            f"{d['missing']} missing, {d['unexpected']} unexpected, {d['no_reason']} without "
            f"reason; {extra}"
        )
        if not d["ok"]:
            out.append(f"  missing e.g. {d['missing_samples']}")
            out.append(f"  unexpected e.g. {d['unexpected_samples']}")
    out.append("OK" if report["ok"] else "FAILED")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=100_000, help="malformed records")
    ap.add_argument("--source", default="pageviews")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--valid-every", type=int, default=100, help="a valid record after N bad")
    ap.add_argument("--no-stream", action="store_true")
    ap.add_argument("--no-import", action="store_true")
    ap.add_argument("--json", type=Path, help="write the report here")
    ap.add_argument("--keep", action="store_true", help="keep the private world")
    args = ap.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="lamina-fuzz-"))
    env = private_env(workdir)
    settings = settings_of(env)
    source = load_views(settings.pipeline.views_file).sources[args.source]
    say(f"private world {settings.cassandra.keyspace}, topic {source.topic}, dir {workdir}")
    try:
        report = fuzz(
            env,
            args.source,
            args.records,
            seed=args.seed,
            valid_every=args.valid_every,
            workdir=workdir,
            stream=not args.no_stream,
            imports=not args.no_import,
        )
    finally:
        if not args.keep:
            drop_world(settings, source)
            shutil.rmtree(workdir, ignore_errors=True)
    for line in _summary(report):
        say(line)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
