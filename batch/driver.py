"""spark-submit entry point of a batch build: ``spark-submit batch/driver.py VIEW [VIEW ...]
--cutoff E``.

The Airflow ``spark_submit`` runner (``SparkSubmitOperator``) runs this file; it builds one
new, unpublished version of each ``VIEW`` at ``cutoff`` with :func:`batch.steps.build_views`
(views of one source share one read of it) and prints ``{"view", "cutoff", "version"}`` as
one JSON line per view. The DAG's next tasks find the versions in the store
(:func:`batch.steps.built_version`). ``--full``: a full recompute
even where ``[batch] incremental`` allows an incremental build (a from-scratch run).

Settings come from ``$LAMINA_CONFIG`` and ``LAMINA_*`` variables like every step, except the
Spark master: spark-submit (its ``--master``, deploy mode and resources, from the Airflow
connection) has already configured the JVM, so the build runs on the session spark-submit
provides. Exit status 1 with one line on stderr on a Lamina error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="batch/driver.py", description=__doc__.splitlines()[0])
    parser.add_argument("views", nargs="+", metavar="VIEW", help="view name(s) from the views file")
    parser.add_argument("--cutoff", type=int, required=True, help="ingest-epoch cutoff (s)")
    parser.add_argument(
        "--full",
        action="store_true",
        help="a full recompute even where [batch] incremental allows an incremental build",
    )
    args = parser.parse_args(argv)

    from pyspark.sql import SparkSession

    from batch.steps import build_views
    from lamina.errors import LaminaError

    # The first session takes spark-submit's configuration; the build's own session
    # builder then finds it (same master) instead of starting one per [spark] master.
    master = SparkSession.builder.getOrCreate().conf.get("spark.master")
    if master:
        os.environ["LAMINA_SPARK__MASTER"] = master
    try:
        built = build_views(dict.fromkeys(args.views, args.cutoff), full=args.full)
    except LaminaError as exc:
        print(f"lamina: error: {exc}", file=sys.stderr)
        return 1
    for view, version in built.items():
        print(json.dumps({"view": view, "cutoff": args.cutoff, "version": version}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
