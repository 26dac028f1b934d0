"""The ``lamina`` command line: ``lamina stack ...``, ``lamina demo`` and friends.

Every :class:`~lamina.errors.LaminaError` is printed as one line on stderr (what is wrong
and how to fix it) with exit status 1; usage errors exit with 2, like argparse.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING

from lamina import __version__
from lamina.errors import ConfigError, LaminaError
from lamina.settings import Settings, load_settings

if TYPE_CHECKING:
    from lamina.views import Source, ViewCatalog
    from serving.store import Store

log = logging.getLogger("lamina")


def _say(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


# -- stack ------------------------------------------------------------------------------


def cmd_stack_up(settings: Settings, args: argparse.Namespace) -> int:
    from lamina.stack.manager import Stack

    stack = Stack(settings, args.services)
    t0 = time.monotonic()
    statuses = stack.up(progress=_say)
    if args.with_spark:
        from lamina.stack.fetch import ensure_bundle
        from lamina.stack.services import spark_connector_bundle

        ensure_bundle(spark_connector_bundle(), settings.stack.cache_dir)
    _say(f"stack up in {time.monotonic() - t0:.1f}s; logs under {settings.stack.state_dir}")
    for st in statuses:
        _say(f"  {st.name:<10} {st.host}:{st.port}  pid {st.pid}  log {st.log}")
    return 0


def cmd_stack_down(settings: Settings, args: argparse.Namespace) -> int:
    from lamina.stack.manager import Stack

    Stack(settings, args.services).down(progress=_say)
    return 0


def cmd_stack_status(settings: Settings, args: argparse.Namespace) -> int:
    from lamina.stack.manager import Stack

    statuses = Stack(settings, args.services).status()
    if args.format == "json":
        print(
            json.dumps(
                [
                    {
                        "service": s.name,
                        "state": s.state,
                        "host": s.host,
                        "port": s.port,
                        "pid": s.pid,
                        "version": s.version,
                        "log": str(s.log),
                    }
                    for s in statuses
                ],
                indent=2,
            )
        )
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"Lamina stack ({settings.stack.state_dir})")
        for col in ("service", "state", "address", "pid", "version", "log"):
            table.add_column(col)
        for s in statuses:
            colour = "green" if s.healthy else ("red" if s.pid else "dim")
            table.add_row(
                s.name,
                f"[{colour}]{s.state}[/]",
                f"{s.host}:{s.port}",
                str(s.pid or "-"),
                s.version or "-",
                str(s.log),
            )
        Console().print(table)
    # Exit status tells scripts whether everything asked for is healthy.
    return 0 if all(s.healthy for s in statuses) else 3


def cmd_stack_logs(settings: Settings, args: argparse.Namespace) -> int:
    from lamina.stack.manager import Stack

    stack = Stack(settings)
    services = [stack.service(args.service)] if args.service else stack.services
    for svc in services:
        path = svc.stdout_file if args.stdout else svc.log_file
        print(f"==> {svc.name}: {path} <==")
        try:
            lines = path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            print("(no log yet: the service has not been started)")
            continue
        print("\n".join(lines[-args.lines :]))
    return 0


# -- views, master, batch, query, serve ---------------------------------------------------


def _catalog(settings: Settings) -> ViewCatalog:
    from lamina.views import load_views

    return load_views(settings.pipeline.views_file)


def _source(settings: Settings, name: str) -> Source:
    catalog = _catalog(settings)
    if name not in catalog.sources:
        raise ConfigError(
            f"unknown source {name!r}", hint=f"declared sources: {', '.join(catalog.sources)}"
        )
    return catalog.sources[name]


def cmd_views(settings: Settings, args: argparse.Namespace) -> int:
    catalog = _catalog(settings)
    for v in catalog.views.values():
        aggs = ", ".join(f"{n}={a.fn}({a.field or '*'})" for n, a in v.aggregations.items())
        print(
            f"{v.name}: source {v.source.name} (topic {v.source.topic}), keys "
            f"{', '.join(v.keys)}, per {v.bucket.label}: {aggs}"
        )
    return 0


def cmd_master_import(settings: Settings, args: argparse.Namespace) -> int:
    from batch.master import import_files

    report = import_files(
        settings,
        _source(settings, args.source),
        args.paths,
        on_progress=lambda ok, bad: _say(f"... {ok} accepted, {bad} rejected"),
    )
    _say(
        f"imported {report.accepted} events into {settings.master_dir / args.source} "
        f"(ingest epoch {report.epoch}); rejected {report.rejected}"
    )
    for reason, n in report.reasons.most_common():
        _say(f"  rejected {n}: {reason}")
    if report.deadletters:
        _say(f"rejected rows with their reasons: {report.deadletters}")
    return 0


def cmd_batch_run(settings: Settings, args: argparse.Namespace) -> int:
    from batch.run import run_batch
    from batch.spark import spark_session

    catalog = _catalog(settings)
    for v in args.view or []:
        catalog.view(v)  # unknown names fail before Spark starts
    spark = spark_session(settings, "lamina-batch")
    try:
        results = run_batch(spark, settings, catalog, args.view, cutoff=args.cutoff, progress=_say)
    finally:
        spark.stop()
    for r in results:
        _say(
            f"{r.view}: version {r.version} published (cutoff {r.cutoff}, {r.events} events "
            f"-> {r.rows} rows, {r.timings['total_s']:.1f}s)"
        )
    return 0


def _store(settings: Settings) -> AbstractContextManager[Store]:
    from serving.store import open_store

    return open_store(settings.cassandra)


def cmd_batch_versions(settings: Settings, args: argparse.Namespace) -> int:
    view = _catalog(settings).view(args.view)
    with _store(settings) as store:
        pub = store.published(view)
        versions = store.versions(view)
    if not versions:
        print(
            f"view {view.name} has no batch versions yet: run `lamina batch run --view {view.name}`"
        )
        return 0
    print(f"{'version':>7}  {'state':<10} {'cutoff (UTC)':<20} {'rows':>9} {'seconds':>8}  hash")
    for v in versions:
        mark = "*" if pub and pub.version == v.version else " "
        cut = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(v.cutoff))
        secs = v.timings.get("total_s", 0.0)
        print(
            f"{v.version:>6}{mark}  {v.state:<10} {cut:<20} {v.rows:>9} {secs:>8.1f}  "
            f"{v.definition_hash}"
        )
    return 0


def cmd_batch_report(settings: Settings, args: argparse.Namespace) -> int:
    """Print the reconciliation report stored with a version (see ``batch.reconcile``)."""
    from lamina.errors import NotFoundError

    view = _catalog(settings).view(args.view)
    with _store(settings) as store:
        versions = store.versions(view)
        version = args.version or (versions[0].version if versions else None)
        report = None if version is None else store.reconciliation(view, version)
    if report is None:
        raise NotFoundError(
            f"view {view.name!r} has no reconciliation report for version {version}",
            hint="reports are written by builds; see `lamina batch versions VIEW`",
        )
    if args.format == "json":
        print(json.dumps(report, indent=2))
        return 0
    span = (
        f"epochs {report['epoch_from']}..{report['cutoff']}"
        if report["epoch_from"] is not None
        else "no real-time rows before the cutoff"
    )
    print(
        f"{view.name} v{report['version']} vs real time ({span}, {report['realtime_rows']} rows):"
        f" {report['cells']} cells, {report['equal']} equal, {report['differing']} differing,"
        f" {report['missing_realtime']} missing in real time, {report['missing_batch']} missing"
        f" in batch ({report['divergence']:.1%} diverging)"
    )
    for smp in report["samples"]:
        print(
            f"  {smp['kind']:<16} key {smp['key']} bucket {smp['bucket']} "
            f"{', '.join(smp['aggregations'])}: batch {smp['batch']} vs real time {smp['realtime']}"
        )
    return 0


def cmd_batch_rollback(settings: Settings, args: argparse.Namespace) -> int:
    view = _catalog(settings).view(args.view)
    with _store(settings) as store:
        pub = store.rollback(view, args.version)
    _say(f"{view.name}: version {pub.version} (cutoff {pub.cutoff}) is published again")
    return 0


def cmd_query(settings: Settings, args: argparse.Namespace) -> int:
    from serving.query import QueryService

    catalog = _catalog(settings)
    with _store(settings) as store:
        answer = QueryService(store, catalog, settings).query(
            args.view, args.key, args.start, args.end, args.granularity, args.q
        )
    if args.format == "json":
        print(json.dumps(answer, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    prov = answer["provenance"]
    title = (
        f"{answer['view']} per {answer['granularity']} — batch version "
        f"{prov['version'] or '-'} (cutoff {prov['cutoff_iso'] or 'none'})"
    )
    for res in answer["results"]:
        table = Table(title=f"{title}\nkey {res['key']}")
        names = list(catalog.view(args.view).aggregations)
        for col in ("bucket", *names, "sources"):
            table.add_column(col)
        for b in res["buckets"]:
            src = ("batch" if b["from_batch"] else "") + (
                f"{' + ' if b['from_batch'] else ''}rt {len(b['realtime_epochs'])} epoch(s)"
                if b["realtime_epochs"]
                else ""
            )
            table.add_row(b["bucket"], *(_fmt(b["values"][n]) for n in names), src)
        Console().print(table)
    return 0


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e6 else f"{v:.0f}"
    return "null" if v is None else str(v)


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from serving.api import create_app

    app = create_app(settings, _catalog(settings))
    host = args.host or settings.serving.host
    port = args.port or settings.serving.port
    _say(f"serving on http://{host}:{port} (OpenAPI docs at /docs)")
    uvicorn.run(app, host=host, port=port, log_level="warning")
    return 0


def cmd_stream_run(settings: Settings, args: argparse.Namespace) -> int:
    from batch.spark import spark_session
    from speed.jobs import lock_jobs, run_until_stopped, start_all

    catalog = _catalog(settings)
    lock_jobs(settings, catalog, args.jobs or None)  # refuse before starting a JVM
    spark = spark_session(settings, "lamina-stream")
    queries = start_all(spark, settings, catalog, args.jobs or None, trigger_s=args.trigger)
    _say(
        f"running {len(queries)} streaming queries: {', '.join(q.name for q in queries)}; "
        f"checkpoints under {settings.checkpoint_dir}; Ctrl-C stops them gracefully"
    )
    failed = run_until_stopped(spark, queries, _say, settings.spark.stop_timeout_s)
    if failed is not None:
        raise LaminaError(failed, hint="see the log above; a restart resumes from its checkpoint")
    _say("all streaming queries stopped")
    return 0


def _age(ts: float | None) -> str:
    return "-" if ts is None else f"{time.time() - ts:.0f}s ago"


def _print_job(job: dict[str, object]) -> None:
    print(
        f"{job['id']:<40} {job['what']:<16} {job['state']:<9} {job['master']:<10} "
        f"pid {job['driver_pid'] or job['launcher_pid'] or '-'!s:<8} "
        f"{job['app_id'] or '-'!s:<24} restarts {job['restarts']}"
    )


def cmd_stream_submit(settings: Settings, args: argparse.Namespace) -> int:
    from speed.registry import parse_conf, submit

    job = submit(
        settings, _catalog(settings), args.job, master=args.master, conf=parse_conf(args.conf)
    )
    if args.format == "json":
        print(json.dumps(job.as_dict(), indent=2))
        return 0
    _say(f"submitted job {job.id} ({job.what}) to {job.master}; log: {job.log}")
    _say(f"follow it: lamina stream status {job.id}; stop it: lamina stream stop {job.id}")
    return 0


def cmd_stream_list(settings: Settings, args: argparse.Namespace) -> int:
    from speed.registry import jobs

    found = [j.as_dict() for j in jobs(settings)]
    if args.format == "json":
        print(json.dumps(found, indent=2))
        return 0
    if not found:
        _say(f"no submitted jobs in {settings.jobs_dir} (lamina stream submit JOB starts one)")
    for j in found:
        _print_job(j)
    return 0


def cmd_stream_status(settings: Settings, args: argparse.Namespace) -> int:
    from speed.registry import status

    st = status(settings, args.id)
    if args.format == "json":
        print(json.dumps(st, indent=2))
        return 0
    _print_job(st)
    print(f"  submitted {_age(st['submitted_at'])}, checkpoints: {', '.join(st['checkpoints'])}")
    print(f"  log: {st['log']}")
    if st["message"]:
        print(f"  {st['message']}")
    print(
        f"  {'query':<28} {'batch':>6} {'in rows/s':>10} {'done rows/s':>11} "
        f"{'batch ms':>9} {'lag':>8}  last progress"
    )
    for q in st["queries"]:
        print(
            f"  {q['query']:<28} {_fmt(q['batch_id']):>6} {_fmt(q['input_rows_per_s']):>10} "
            f"{_fmt(q['processed_rows_per_s']):>11} {_fmt(q['batch_duration_ms']):>9} "
            f"{_fmt(q['lag']):>8}  {_age(q['last_progress'])}"
        )
    for src, epoch in st.get("complete_before_epoch", {}).items():
        print(f"  master dataset of {src} complete before ingest epoch {_fmt(epoch)}")
    return 0


def cmd_stream_stop(settings: Settings, args: argparse.Namespace) -> int:
    from speed.registry import stop

    job = stop(settings, args.id, timeout_s=args.timeout, progress=_say)
    _say(f"job {job.id}: {job.state}{f' ({job.message})' if job.message else ''}")
    return 0 if job.state == "stopped" else 1


def cmd_stream_restart(settings: Settings, args: argparse.Namespace) -> int:
    from speed.registry import restart

    job = restart(settings, args.id, progress=_say)
    _say(f"job {job.id} restarted ({job.state}); log: {job.log}")
    return 0


def cmd_deadletters(settings: Settings, args: argparse.Namespace) -> int:
    from speed.deadletters import read_deadletters

    letters = read_deadletters(settings, _source(settings, args.source))
    newest = letters[-args.limit :] if args.limit else []
    if args.format == "json":
        print(json.dumps(newest, indent=2))
        return 0
    from collections import Counter

    for d in newest:
        print(f"{d['topic']}[{d['partition']}]@{d['offset']}  {d['reason']}  raw={d['raw'][:80]!r}")
    counts = Counter(d["reason"].split(":")[0] for d in letters)
    summary = ", ".join(f"{n} {r}" for r, n in counts.most_common())
    _say(
        f"{len(letters)} dead letters for source {args.source}"
        + (f": {summary}" if summary else "")
    )
    return 0


def _non_negative(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 0")
    return n


# -- demo -------------------------------------------------------------------------------


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from lamina.demo import run_demo

    return run_demo(settings, events=args.events, stop=args.stop, progress=_say)


# -- parser -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lamina",
        description="Lamina: a Lambda-architecture platform (Kafka, Spark, Cassandra, Airflow).",
    )
    p.add_argument("--version", action="version", version=f"lamina {__version__}")
    p.add_argument(
        "-c",
        "--config",
        type=Path,
        metavar="PATH",
        help="settings file (default: $LAMINA_CONFIG, else ./conf/lamina.toml)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    stack = sub.add_parser("stack", help="run the local Kafka and Cassandra on 127.0.0.1")
    ssub = stack.add_subparsers(dest="action", required=True, metavar="ACTION")
    services_help = "services to act on (default: all of kafka, cassandra)"
    up = ssub.add_parser("up", help="fetch jars (first time), start services, wait until ready")
    up.add_argument("services", nargs="*", metavar="SERVICE", help=services_help)
    up.add_argument(
        "--no-spark",
        dest="with_spark",
        action="store_false",
        help="do not fetch Spark's Kafka connector jars",
    )
    up.set_defaults(func=cmd_stack_up)
    down = ssub.add_parser("down", help="stop the services this stack started")
    down.add_argument("services", nargs="*", metavar="SERVICE", help=services_help)
    down.set_defaults(func=cmd_stack_down)
    status = ssub.add_parser(
        "status", help="health, port, pid and version of each service (exit 3 if not healthy)"
    )
    status.add_argument("services", nargs="*", metavar="SERVICE", help=services_help)
    status.add_argument("--format", choices=("table", "json"), default="table")
    status.set_defaults(func=cmd_stack_status)
    logs = ssub.add_parser("logs", help="print the end of a service's log")
    logs.add_argument("service", nargs="?", metavar="SERVICE", help="kafka or cassandra")
    logs.add_argument("-n", "--lines", type=int, default=50, help="lines to show (default 50)")
    logs.add_argument("--stdout", action="store_true", help="show the JVM's stdout instead")
    logs.set_defaults(func=cmd_stack_logs)

    views = sub.add_parser("views", help="list the views defined in the views file")
    views.set_defaults(func=cmd_views)

    master = sub.add_parser("master", help="the master dataset")
    msub = master.add_subparsers(dest="action", required=True, metavar="ACTION")
    imp = msub.add_parser("import", help="append historical events from JSONL, CSV or Parquet")
    imp.add_argument("source", help="source name from the views file")
    imp.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    imp.set_defaults(func=cmd_master_import)

    batch = sub.add_parser("batch", help="batch views: recompute, versions, rollback")
    bsub = batch.add_subparsers(dest="action", required=True, metavar="ACTION")
    run = bsub.add_parser("run", help="recompute views from the master dataset and publish")
    run.add_argument("--view", action="append", metavar="VIEW", help="repeatable; default all")
    run.add_argument(
        "--cutoff",
        type=int,
        metavar="EPOCH_S",
        help="ingest-epoch cutoff (default: the last complete epoch)",
    )
    run.set_defaults(func=cmd_batch_run)
    ver = bsub.add_parser("versions", help="list a view's batch versions (* = published)")
    ver.add_argument("view")
    ver.set_defaults(func=cmd_batch_versions)
    rep = bsub.add_parser(
        "report", help="a version's reconciliation with the real-time view (default: newest)"
    )
    rep.add_argument("view")
    rep.add_argument("--version", type=int, metavar="N", help="version number (default: newest)")
    rep.add_argument("--format", choices=("table", "json"), default="table")
    rep.set_defaults(func=cmd_batch_report)
    rb = bsub.add_parser("rollback", help="publish an older retained version again")
    rb.add_argument("view")
    rb.add_argument("version", type=int)
    rb.set_defaults(func=cmd_batch_rollback)

    query = sub.add_parser("query", help="merged batch + real-time answer for keys of a view")
    query.add_argument("view")
    query.add_argument("key", nargs="+", help="key value(s); multi-field keys as a,b")
    query.add_argument("--from", dest="start", metavar="T", help="ISO-8601 or epoch seconds")
    query.add_argument("--to", dest="end", metavar="T", help="ISO-8601 or epoch seconds")
    query.add_argument("--granularity", metavar="G", help="view bucket or a multiple: day, 6h")
    query.add_argument("--q", type=float, default=0.5, help="quantile to present (default 0.5)")
    query.add_argument("--format", choices=("table", "json"), default="table")
    query.set_defaults(func=cmd_query)

    stream = sub.add_parser("stream", help="streaming jobs: the archiver and the speed views")
    stsub = stream.add_subparsers(dest="action", required=True, metavar="ACTION")
    srun = stsub.add_parser("run", help="run the archiver and speed jobs in the foreground")
    srun.add_argument(
        "jobs",
        nargs="*",
        metavar="JOB",
        help="'archiver' and/or view names (default: archiver + every view)",
    )
    srun.add_argument(
        "--trigger",
        type=float,
        metavar="SECONDS",
        help="micro-batch interval (default: as fast as possible)",
    )
    srun.set_defaults(func=cmd_stream_run)
    ssub_ = stsub.add_parser(
        "submit",
        help="launch a job through spark-submit, detached, and register it",
        description="Launch 'archiver' or one view's speed job with spark-submit (client "
        "mode), detached, logging to a file under spark.jobs_dir. Refused if another running "
        "job or process uses its checkpoint.",
    )
    ssub_.add_argument("job", metavar="JOB", help="'archiver' or a view name")
    ssub_.add_argument("--master", help="Spark master URL (default: spark.master)")
    ssub_.add_argument(
        "--conf",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra Spark setting, repeatable (e.g. --conf spark.executor.memory=2g)",
    )
    ssub_.add_argument("--format", choices=("table", "json"), default="table")
    ssub_.set_defaults(func=cmd_stream_submit)
    slist = stsub.add_parser("list", help="the submitted jobs and their states")
    slist.add_argument("--format", choices=("table", "json"), default="table")
    slist.set_defaults(func=cmd_stream_list)
    sstat = stsub.add_parser(
        "status", help="a job's queries: rates, batch duration, Kafka lag, last progress"
    )
    sstat.add_argument("id", metavar="ID")
    sstat.add_argument("--format", choices=("table", "json"), default="table")
    sstat.set_defaults(func=cmd_stream_status)
    sstop = stsub.add_parser("stop", help="stop a job gracefully, between micro-batches")
    sstop.add_argument("id", metavar="ID")
    sstop.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="kill it if it has not stopped by then (default: spark.stop_timeout_s + 30)",
    )
    sstop.set_defaults(func=cmd_stream_stop)
    srestart = stsub.add_parser(
        "restart", help="stop a job (if running) and launch it again from its checkpoints"
    )
    srestart.add_argument("id", metavar="ID")
    srestart.set_defaults(func=cmd_stream_restart)

    dead = sub.add_parser("deadletters", help="rejected events of a source, with reasons")
    dead.add_argument("source")
    dead.add_argument(
        "--limit",
        type=_non_negative,
        default=20,
        help="print the newest N letters (default 20; 0 = only the summary line)",
    )
    dead.add_argument("--format", choices=("table", "json"), default="table")
    dead.set_defaults(func=cmd_deadletters)

    serve = sub.add_parser("serve", help="run the HTTP query API (OpenAPI at /docs)")
    serve.add_argument("--host", help="default: serving.host")
    serve.add_argument("--port", type=int, help="default: serving.port")
    serve.set_defaults(func=cmd_serve)

    demo = sub.add_parser("demo", help="run the demo pipeline on the local stack")
    demo.add_argument("--events", type=int, default=20_000, help="events to produce")
    demo.add_argument("--stop", action="store_true", help="stop the stack at the end")
    demo.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # Client libraries narrate every connection at INFO; operators want Lamina's own lines.
    # The driver logs each refused connection of a readiness poll as an ERROR with a traceback.
    for noisy, quiet in (
        ("kafka", logging.WARNING),
        ("cassandra", logging.CRITICAL),
        ("py4j", logging.WARNING),
    ):
        logging.getLogger(noisy).setLevel(logging.DEBUG if args.verbose else quiet)
    try:
        settings = load_settings(args.config)
        return int(args.func(settings, args))
    except LaminaError as exc:
        print(f"lamina: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("lamina: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
