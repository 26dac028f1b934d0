"""``lamina stream``, ``lamina deadletters`` and ``lamina duplicates``: the speed layer's
jobs, its rejects and the duplicates it could not drop."""

from __future__ import annotations

import argparse
import json
from typing import Any

from lamina.cli.common import age, find_source, fmt, non_negative, print_job, say
from lamina.context import load_catalog
from lamina.errors import LaminaError
from lamina.settings import Settings


def cmd_stream_run(settings: Settings, args: argparse.Namespace) -> int:
    from engine.session import spark_session
    from speed.queries import lock_jobs, run_until_stopped, start_all

    catalog = load_catalog(settings)
    lock_jobs(settings, catalog, args.jobs or None)  # refuse before starting a JVM
    spark = spark_session(settings, "lamina-stream")
    queries = start_all(spark, settings, catalog, args.jobs or None, trigger_s=args.trigger)
    say(
        f"running {len(queries)} streaming queries: {', '.join(q.name for q in queries)}; "
        f"checkpoints under {settings.checkpoint_dir}; Ctrl-C stops them gracefully"
    )
    failed = run_until_stopped(spark, queries, say, settings.spark.stop_timeout_s)
    if failed is not None:
        raise LaminaError(failed, hint="see the log above; a restart resumes from its checkpoint")
    say("all streaming queries stopped")
    return 0


def cmd_stream_submit(settings: Settings, args: argparse.Namespace) -> int:
    from speed.launcher import parse_conf, submit

    job = submit(
        settings, load_catalog(settings), args.job, master=args.master, conf=parse_conf(args.conf)
    )
    if args.format == "json":
        print(json.dumps(job.as_dict(), indent=2))
        return 0
    say(f"submitted job {job.id} ({job.what}) to {job.master}; log: {job.log}")
    say(f"follow it: lamina stream status {job.id}; stop it: lamina stream stop {job.id}")
    return 0


def cmd_stream_list(settings: Settings, args: argparse.Namespace) -> int:
    from speed.launcher import jobs

    found = [j.as_dict() for j in jobs(settings)]
    if args.format == "json":
        print(json.dumps(found, indent=2))
        return 0
    from speed.launcher import foreground_runs

    foreground = foreground_runs(settings)
    if not found and not foreground:
        say(f"no submitted jobs in {settings.jobs_dir} (lamina stream submit JOB starts one)")
    for j in found:
        print_job(j)
    for source, holder in foreground.items():
        print(f"{'(foreground)':<40} {source:<16} {'running':<10} {holder}")
    return 0


def cmd_stream_status(settings: Settings, args: argparse.Namespace) -> int:
    from lamina.streams import job_names
    from speed.launcher import status

    if args.id is None or args.id in job_names(load_catalog(settings)):
        return _source_status(settings, args)
    st = status(settings, args.id)
    if args.format == "json":
        print(json.dumps(st, indent=2))
        return 0
    print_job(st)
    print(f"  submitted {age(st['submitted_at'])}, checkpoints: {', '.join(st['checkpoints'])}")
    print(f"  log: {st['log']}")
    print(
        f"  pids: supervisor {st['supervisor_pid'] or '-'}, spark-submit "
        f"{st['launcher_pid'] or '-'}, driver {st['driver_pid'] or '-'}"
    )
    if st["restarts"]:
        print(
            f"  restarts {st['restarts']}, last relaunched {age(st['last_restart_at'])}"
            + (f"; the driver before it ended: {st['last_exit']}" if st["last_exit"] else "")
        )
    if st["message"]:
        print(f"  {st['message']}")
    print(
        f"  {'query':<28} {'batch':>6} {'in rows/s':>10} {'done rows/s':>11} "
        f"{'batch ms':>9} {'lag':>8}  last progress"
    )
    for q in st["queries"]:
        print(
            f"  {q['query']:<28} {fmt(q['batch_id']):>6} {fmt(q['input_rows_per_s']):>10} "
            f"{fmt(q['processed_rows_per_s']):>11} {fmt(q['batch_duration_ms']):>9} "
            f"{fmt(q['lag']):>8}  {age(q['last_progress'])}"
        )
    for src, epoch in st.get("complete_before_epoch", {}).items():
        print(f"  master dataset of {src} complete before ingest epoch {fmt(epoch)}")
    return 0


def _source_status(settings: Settings, args: argparse.Namespace) -> int:
    """``lamina stream status [SOURCE]``: each source job, run in the foreground or
    submitted: who runs it, its lag (Kafka records not processed, ``events``: those that are
    events, not its own epoch marks), whether it caught up, how far it archived."""
    from speed.launcher import source_statuses

    found = source_statuses(settings, None if args.id is None else [args.id])
    if args.format == "json":
        print(json.dumps(found, indent=2))
        return 0
    print(
        f"{'source':<16} {'run by':<44} {'lag':>8} {'events':>7}  {'caught up':<9}  "
        "archived before epoch"
    )
    for s in found:
        caught = {None: "?", True: "yes", False: "no"}[s["caught_up"]]
        epoch = s["complete_before_epoch"]
        archived = "-" if epoch is None else f"{epoch} ({age(epoch)})"
        print(
            f"{s['source']:<16} {(s['run_by'] or 'not running')[:44]:<44} "
            f"{fmt(s['lag']):>8} {fmt(s['events_behind']):>7}  {caught:<9}  {archived}"
        )
    return 0


def cmd_stream_stop(settings: Settings, args: argparse.Namespace) -> int:
    from speed.launcher import stop

    job = stop(settings, args.id, timeout_s=args.timeout, progress=say)
    say(f"job {job.id}: {job.state}{f' ({job.message})' if job.message else ''}")
    return 0 if job.state == "stopped" else 1


def cmd_stream_restart(settings: Settings, args: argparse.Namespace) -> int:
    from speed.launcher import restart

    job = restart(settings, args.id, progress=say)
    say(f"job {job.id} restarted ({job.state}); log: {job.log}")
    return 0


def cmd_deadletters(settings: Settings, args: argparse.Namespace) -> int:
    from lamina.events import reason_kind
    from speed.deadletters import read_deadletters, read_duplicates, summarize

    read = read_duplicates if args.what == "duplicates" else read_deadletters
    letters = read(settings, find_source(settings, args.source))
    newest = letters[-args.limit :] if args.limit else []
    if args.format == "json":
        print(json.dumps([{**d, "kind": reason_kind(d["reason"])} for d in newest], indent=2))
        return 0
    for d in newest:
        print(f"{d['topic']}[{d['partition']}]@{d['offset']}  {d['reason']}  raw={d['raw'][:80]!r}")
    noun = "listed duplicates" if args.what == "duplicates" else "dead letters"
    kinds = summarize(letters)
    summary = ", ".join(f"{k['count']} {k['kind']}" for k in kinds)
    say(f"{len(letters)} {noun} for source {args.source}" + (f": {summary}" if summary else ""))
    for k in kinds:  # the kinds whose letters say more: their newest distinct reasons
        if k["examples"]:
            shown = ", ".join(
                f"{d['reason']!r} ({d['topic']}[{d['partition']}]@{d['offset']})"
                for d in k["examples"]
            )
            say(f"  {k['kind']}, e.g. {shown}")
    return 0


def register(sub: Any) -> None:
    """Add this group's commands to the ``lamina`` parser's subcommands."""
    stream = sub.add_parser(
        "stream",
        help="streaming jobs, one per source: archive, dead letters and real-time views",
    )
    stsub = stream.add_subparsers(dest="action", required=True, metavar="ACTION")
    srun = stsub.add_parser("run", help="run source jobs in the foreground")
    srun.add_argument(
        "jobs",
        nargs="*",
        metavar="SOURCE",
        help="source names (default: every source a view reads)",
    )
    srun.add_argument(
        "--trigger",
        type=float,
        metavar="SECONDS",
        help="micro-batch interval (default: pipeline.trigger_s, 0.5; 0 = back to back)",
    )
    srun.set_defaults(func=cmd_stream_run)
    ssub_ = stsub.add_parser(
        "submit",
        help="launch a job through spark-submit, detached, and register it",
        description="Launch one source's job (its archive, dead letters and every view of "
        "the source) with spark-submit (client mode), detached, logging to a file under "
        "spark.jobs_dir, under a supervisor that relaunches it from its checkpoints if its "
        "driver ends without a stop request (settings spark.restart_*). Refused if another "
        "running job or process uses its checkpoint.",
    )
    ssub_.add_argument("job", metavar="SOURCE", help="a source name")
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
        "status",
        help="each source job (foreground or submitted): lag, caught up, archived epoch; "
        "or a submitted job's queries: rates, batch duration, lag, last progress",
    )
    sstat.add_argument(
        "id",
        metavar="ID|SOURCE",
        nargs="?",
        help="a submitted job's id, or a source (default: every source job)",
    )
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
    for what, text in (
        ("deadletters", "rejected events of a source, with reasons"),
        ("duplicates", "duplicates the speed layer could not drop (past its horizon, reordered)"),
    ):
        _listing(sub, what, text)


def _listing(sub: Any, what: str, text: str) -> None:
    dead = sub.add_parser(what, help=text)
    dead.set_defaults(what=what)
    dead.add_argument("source")
    dead.add_argument(
        "--limit",
        type=non_negative,
        default=20,
        help="print the newest N letters (default 20; 0 = only the summary line)",
    )
    dead.add_argument("--format", choices=("table", "json"), default="table")
    dead.set_defaults(func=cmd_deadletters)
