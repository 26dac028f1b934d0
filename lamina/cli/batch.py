"""``lamina master import`` and ``lamina batch``: the master dataset and the batch layer."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

from lamina.cli.common import connect_store, find_source, positive, progress, say
from lamina.context import load_catalog
from lamina.settings import Settings

log = logging.getLogger("lamina")


def cmd_master_import(settings: Settings, args: argparse.Namespace) -> int:
    from batch.imports import import_files

    report = import_files(
        settings,
        find_source(settings, args.source),
        args.paths,
        chunk_rows=args.chunk_rows,
        on_progress=lambda ok, bad: say(f"... {ok} accepted, {bad} rejected"),
    )
    say(
        f"imported {report.accepted} events into {settings.master_dir / args.source} "
        f"(ingest epoch {report.epoch}); rejected {report.rejected}"
    )
    for reason, n in report.reasons.most_common():
        say(f"  rejected {n}: {reason}")
    if report.deadletters:
        say(f"rejected rows with their reasons: {report.deadletters}")
    return 0


def cmd_master_accept_schema(settings: Settings, args: argparse.Namespace) -> int:
    from lamina.master import accept_schema

    source = find_source(settings, args.source)
    record = accept_schema(settings, source)
    say(
        f"source {source.name}: its master dataset is written under definition "
        f"{record['hash']} from now on; events stored before keep their old parse"
        + (f" (earlier: {', '.join(record['history'])})" if record["history"] else "")
    )
    return 0


def cmd_batch_run(settings: Settings, args: argparse.Namespace) -> int:
    """Recompute and publish views. Unknown views and cutoffs no build may take (beyond the
    complete cutoff, older than the published one) fail before Spark starts; the build and
    the publish check the cutoff again."""
    from batch.recompute import check_cutoff, run_batch
    from engine.session import spark_session
    from serving.store import open_store

    catalog = load_catalog(settings)
    chosen = [catalog.view(v) for v in args.view] if args.view else list(catalog.views.values())
    with open_store(settings.cassandra, catalog) as store:
        for view in chosen:
            check_cutoff(settings, store, view, args.cutoff)
    spark = spark_session(settings, "lamina-batch", progress())
    try:
        results = run_batch(
            spark,
            settings,
            catalog,
            args.view,
            cutoff=args.cutoff,
            progress=progress(),
            incremental=args.incremental,
        )
    finally:
        spark.stop()
    for r in results:
        kind = "incremental" if r.timings.get("incremental") else "full"
        say(
            f"{r.view}: version {r.version} published (cutoff {r.cutoff}, {r.events} events "
            f"-> {r.rows} rows, {kind} build, {r.timings['total_s']:.1f}s)"
        )
    return 0


def cmd_batch_versions(settings: Settings, args: argparse.Namespace) -> int:
    view = load_catalog(settings).view(args.view)
    with connect_store(settings) as store:
        pub = store.published(view)
        versions = store.versions(view)
    if not versions:
        print(
            f"view {view.name} has no batch versions yet: run `lamina batch run --view {view.name}`"
        )
        return 0
    print(
        f"{'version':>7}  {'state':<10} {'cutoff (UTC)':<20} {'rows':>9} {'seconds':>8}  "
        f"{'build':<11}  hash"
    )
    for v in versions:
        mark = "*" if pub and pub.version == v.version else " "
        cut = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(v.cutoff))
        secs = v.timings.get("total_s", 0.0)
        print(
            f"{v.version:>6}{mark}  {v.state:<10} {cut:<20} {v.rows:>9} {secs:>8.1f}  "
            f"{v.build:<11}  {v.definition_hash}"
        )
    return 0


def cmd_batch_report(settings: Settings, args: argparse.Namespace) -> int:
    """Print the report stored with a version (see ``batch.reconcile``): its reconciliation
    with the real-time view, its self-check against the master dataset, and which side
    diverged (judged with today's ``[airflow] max_divergence``)."""
    from batch.reconcile import stored_verdict
    from lamina.errors import NotFoundError

    view = load_catalog(settings).view(args.view)
    with connect_store(settings) as store:
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
    build = report.get("build")
    if build is not None:
        print(f"build: {build['kind']}: {build['why']}")
    check = report.get("self_check")
    if check is None:
        print("self-check against the master dataset: none (built by an older Lamina)")
    else:
        print(
            f"self-check against the master dataset: {'passed' if check['ok'] else 'FAILED'}"
            f" ({check['read_rows']} rows read in {len(check['epochs'])} epochs"
            + (f" + {check['legacy_rows']} from the legacy archive" if check["legacy_rows"] else "")
            + f", footers {check['footer_rows']}, {check['events']} events after the dedup,"
            f" {check['duplicates']} duplicates)"
        )
        for e in check["epochs"]:
            if e["footer_rows"] != e["read_rows"] or e["without_id"] or e["unreadable"]:
                print(
                    f"  epoch {e['epoch']}: {e['files']} files, footers {e['footer_rows']} rows,"
                    f" read {e['read_rows']}, {e['without_id']} without an event id,"
                    f" {len(e['unreadable'])} unreadable"
                )
        for problem in check["problems"]:
            print(f"  problem: {problem}")
    verdict = stored_verdict(report, settings.airflow.max_divergence)
    side = {
        "none": "none (within max_divergence)",
        "batch": "the batch: not publishable",
        "speed_layer": "the speed layer (the batch corrects it; published)",
    }[verdict.diverged]
    print(f"diverged: {side}")
    return 0


def cmd_batch_rollback(settings: Settings, args: argparse.Namespace) -> int:
    view = load_catalog(settings).view(args.view)
    with connect_store(settings) as store:
        pub = store.rollback(view, args.version)
    say(f"{view.name}: version {pub.version} (cutoff {pub.cutoff}) is published again")
    return 0


def register(sub: Any) -> None:
    """Add this group's commands to the ``lamina`` parser's subcommands."""
    master = sub.add_parser("master", help="the master dataset")
    msub = master.add_subparsers(dest="action", required=True, metavar="ACTION")
    imp = msub.add_parser("import", help="append historical events from JSONL, CSV or Parquet")
    imp.add_argument("source", help="source name from the views file")
    imp.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    imp.add_argument(
        "--chunk-rows",
        type=positive,
        default=200_000,
        metavar="N",
        help="events per Parquet file written (memory held per chunk; default 200000)",
    )
    imp.set_defaults(func=cmd_master_import)
    acc = msub.add_parser(
        "accept-schema",
        help="accept a changed source definition: stored events keep their old parse",
    )
    acc.add_argument("source", help="source name from the views file")
    acc.set_defaults(func=cmd_master_accept_schema)
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
    kind = run.add_mutually_exclusive_group()
    kind.add_argument(
        "--incremental",
        action="store_true",
        default=None,
        help="build each version as the published one plus the epochs completed since, where "
        "that equals a full recompute (same definition, no change to older epochs, at most "
        "[batch] full_every in a row), else in full; keeps each build's state "
        "(default: [batch] incremental)",
    )
    kind.add_argument(
        "--full",
        dest="incremental",
        action="store_false",
        default=None,
        help="recompute from the whole master dataset (the default unless [batch] incremental)",
    )
    run.set_defaults(func=cmd_batch_run)
    ver = bsub.add_parser("versions", help="list a view's batch versions (* = published)")
    ver.add_argument("view")
    ver.set_defaults(func=cmd_batch_versions)
    rep = bsub.add_parser(
        "report",
        help="a version's self-check and reconciliation with the real-time view (default: newest)",
    )
    rep.add_argument("view")
    rep.add_argument("--version", type=int, metavar="N", help="version number (default: newest)")
    rep.add_argument("--format", choices=("table", "json"), default="table")
    rep.set_defaults(func=cmd_batch_report)
    rb = bsub.add_parser("rollback", help="publish an older retained version again")
    rb.add_argument("view")
    rb.add_argument("version", type=int)
    rb.set_defaults(func=cmd_batch_rollback)
