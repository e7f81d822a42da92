"""One way to get a SparkSession: UTC, local[*] by default, any master URL, nothing downloaded."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

DEFAULT_MASTER = "local[*]"


def get_spark(master: str | None = None, app_name: str = "sessionlen") -> SparkSession:
    """Return a SparkSession on `master` (default local[*]) with the session time zone UTC."""
    from pyspark.sql import SparkSession

    # Spark's Python workers must run the interpreter that runs us, with our packages.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    return (
        SparkSession.builder.master(master or DEFAULT_MASTER)
        .appName(app_name)
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.driver.extraJavaOptions", "-Duser.timezone=UTC")
        .config("spark.executor.extraJavaOptions", "-Duser.timezone=UTC")
        .config("spark.sql.shuffle.partitions", "8")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.memory", "4g")
        .config("spark.sql.ansi.enabled", "false")
        # Summarize reads one file per user: listing ~1,000 local files on the driver takes
        # milliseconds, a Spark job to list them in parallel takes seconds.
        .config("spark.sql.sources.parallelPartitionDiscovery.threshold", "100000")
        .getOrCreate()
    )
