"""How a build's aggregation shuffle is best sized: one aggregation of N rows by key (200k
keys; the shape of a build's aggregate), best of 3, in three ways:

* ``fixed``: Spark's map-side combine, then ``spark.sql.shuffle.partitions`` = 2 tasks;
* ``sized``: a raw shuffle of the rows into :func:`batch.recompute.write_tasks` tasks;
* ``AQE``: 200 shuffle partitions coalesced by adaptive query execution.

Run from the repository root:  .venv/bin/python bench/shuffle_bench.py 3000000
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import common  # noqa: F401  (puts the repository root on sys.path)
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from batch.recompute import write_tasks


def main(n: int) -> None:
    spark = (
        SparkSession.builder.master("local[2]")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.memory", "2g")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    src = spark.range(n).select(
        F.col("id"),
        (F.xxhash64("id") % 200_000).alias("k"),
        (F.col("id") % 997).cast("double").alias("v"),
    )
    src = src.cache()
    src.count()

    def agg(df: DataFrame) -> DataFrame:
        return df.groupBy("k").agg(F.count(F.lit(1)), F.sum("v"), F.max("v"))

    def run(name: str, conf: dict[str, str], prep: Callable[[DataFrame], DataFrame]) -> None:
        for k, v in conf.items():
            spark.conf.set(k, v)
        best = float("inf")
        for _ in range(3):
            t = time.monotonic()
            agg(prep(src)).write.format("noop").mode("overwrite").save()
            best = min(best, time.monotonic() - t)
        parts = agg(prep(src)).rdd.getNumPartitions()
        print(f"{name:40s} {best:6.2f} s  {parts} partitions", flush=True)

    off = {"spark.sql.shuffle.partitions": "2", "spark.sql.adaptive.enabled": "false"}
    run("fixed: combine, shuffle.partitions=2", off, lambda d: d)
    run("sized: raw shuffle, write_tasks(n)", off, lambda d: d.repartition(write_tasks(n, 2), "k"))
    aqe = {
        "spark.sql.shuffle.partitions": "200",
        "spark.sql.adaptive.enabled": "true",
        "spark.sql.adaptive.coalescePartitions.enabled": "true",
    }
    run("AQE: 200 partitions, coalesced", aqe, lambda d: d)
    spark.stop()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3_000_000)
