"""A class-data archive for the Spark driver JVM, built once after install.

Start-up is a large part of a short Spark command: on a 2-core machine a local session takes
about 5 s to start and its first job about 2.3 s more than the same job run again, most of it
loading and verifying classes from PySpark's ~280 jars. The JVM can save the classes a run
loaded into an archive (`-XX:ArchiveClassesAtExit`) and map them on later starts
(`-XX:SharedArchiveFile`): about 3 s and 1.3 s then (README, Performance).

The JVM checks an archive against its own build and class path when it starts and ignores it
without a word when they differ (another JDK, extra jars), so a stale or foreign archive costs
only the speed-up. Executors on a cluster start their own JVMs and do not use it.

`python -m utils.core.spark_classes [DIR]` builds it (the Makefile does after installing).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from utils.core.errors import SessionlenError
from utils.core.spark import ARCHIVE_DIR, ARCHIVE_SUFFIX, archive_path, classic_session

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

# Rows of the warm-up job: enough for several tasks and a shuffle, small enough to take seconds.
WARM_UP_ROWS = 20_000


def warm_up(spark: SparkSession, scratch: Path) -> int:
    """Run the kinds of work the stages do (CSV write and read, a window, a shuffle, a join,
    a table of task inputs from a JSON literal, Arrow to and from Python workers), so that
    their classes are loaded; returns the rows."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    plays = spark.range(0, WARM_UP_ROWS, 1, 4).selectExpr(
        "id % 97 AS user", "id * 60 AS ts", "cast(id % 13 AS string) AS name")
    plays.write.option("header", True).csv(str(scratch / "plays"))
    read = (spark.read.schema("user bigint, ts bigint, name string")
            .option("header", True).csv(str(scratch / "plays")))
    gaps = read.withColumn("gap", F.col("ts") - F.lag("ts").over(
        Window.partitionBy("user").orderBy("ts")))
    per_user = gaps.groupBy("user").agg(F.count("*").alias("plays"),
                                        F.max("gap").alias("longest_gap"))
    names = read.groupBy("name").agg(F.countDistinct("user").alias("users"))
    joined = gaps.join(F.broadcast(names), "name").join(per_user, "user")
    joined.write.parquet(str(scratch / "joined"))
    table = joined.mapInArrow(lambda batches: batches, joined.schema).toArrow()
    # As the engines that run local code in tasks hand each task its share of the work.
    tasks = spark.range(0, 1, 1, 1).select(F.inline(F.from_json(
        F.lit('[{"users": ["a"]}, {"users": ["b"]}]'), "array<struct<users:array<string>>>")))
    task_rows = tasks.repartition(2).mapInArrow(lambda batches: batches, tasks.schema).toArrow()
    return table.num_rows + task_rows.num_rows


def build_archive(directory: Path = ARCHIVE_DIR) -> Path:
    """Start a local session that saves its classes at exit, warm it up, stop it and wait
    for its JVM to write the archive; the archive appears whole or not at all."""
    from pyspark import SparkContext

    if SparkContext._active_spark_context is not None:
        raise SessionlenError("a Spark session is already running in this process; build the "
                              "class archive from a fresh one (python -m utils.core.spark_classes)")
    final = archive_path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    partial = final.with_name(f".{final.name}.{os.getpid()}")
    # Classes the JVM cannot archive (from signed jars) are skipped with a warning line each.
    quiet = "-Xlog:cds=off -Xlog:cds+dynamic=off"
    spark = classic_session("local[2]", "sessionlen-classes",
                            f"-XX:ArchiveClassesAtExit={partial} {quiet}")
    try:
        with tempfile.TemporaryDirectory() as scratch:
            warm_up(spark, Path(scratch))
    except BaseException:
        _stop_jvm(spark)
        partial.unlink(missing_ok=True)
        raise
    _stop_jvm(spark)
    if not partial.is_file() or partial.stat().st_size == 0:
        partial.unlink(missing_ok=True)
        raise SessionlenError(f"{final}: the Spark driver JVM wrote no class archive")
    os.replace(partial, final)
    for stale in directory.glob(f"spark-*{ARCHIVE_SUFFIX}"):
        if stale != final:
            stale.unlink()
    return final


def _stop_jvm(spark: SparkSession) -> None:
    """Stop the session and its JVM, and wait until the JVM has exited (and so has written
    the archive, which it does as it exits, when its stdin closes)."""
    from pyspark import SparkContext

    spark.stop()
    gateway = SparkContext._gateway
    if gateway is not None and gateway.proc is not None:
        gateway.proc.stdin.close()
        gateway.proc.wait()
        # PySpark would otherwise hand the dead JVM to the next session of this process.
        SparkContext._gateway = None
        SparkContext._jvm = None


def main(argv: list[str] | None = None) -> int:
    """Build the archive (in the folder given, else the installed one); one line saying
    where, or why not."""
    args = sys.argv[1:] if argv is None else argv
    try:
        path = build_archive(Path(args[0]) if args else ARCHIVE_DIR)
    except SessionlenError as exc:
        print(f"spark_classes: error: {exc}", file=sys.stderr)
        return 1
    print(f"Spark class archive: {path} ({path.stat().st_size / 2**20:.0f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
