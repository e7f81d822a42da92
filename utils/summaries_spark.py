"""The summarize stage's Spark engine: the same sessions table as the local engine, via windows.

Spark reads every user_dir file, applies the session rule with `lag` over each user's plays
(ordered by time, then file and position in the file, i.e. the local engine's stable order),
aggregates sessions and their running history, and returns the small sessions table to the
driver, where `utils.summaries.write_summaries` splits and writes it exactly as for the local
engine. Every floating-point step mirrors the local arithmetic operation by operation, so the
two engines agree to the bit.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlparse

import pandas as pd

from utils.columns import (
    AGE,
    COUNTRY,
    DURATION,
    GENDER,
    REGISTERED,
    SESSION_ID,
    TIMESTAMP,
    USER_DIR_COLUMNS,
    USER_ID,
)
from utils.errors import SessionlenError
from utils.spark import get_spark
from utils.summaries import (
    AVERAGE_MS,
    LENGTH_MS,
    MS_PER_DAY,
    PLAYS,
    PREVIOUS_MS,
    SESSION_TABLE_COLUMNS,
    SOURCE_ID,
    UNKNOWN,
    check_header,
)

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

# Helper column names (never written).
_FILE = "_file"
_BLOCK = "_block"
_ROW = "_row"
_TS_MS = "_ts_ms"
_RANK = "_rank"
_IS_START = "_is_start"
_EARLIER = "_earlier_ms"
_PROBLEM = "_problem"
_PROBLEMS = "_problems"
_FIRST_PROBLEM = "_first_problem"

# What a valid value of each checked column looks like (the local reader's parsers accept them).
_TIMESTAMP_TEXT = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,3})?Z$"
_DATE_TEXT = r"^\d{4}-\d{2}-\d{2}$"
_INT_TEXT = r"^-?\d+$"


def read_plays(spark: SparkSession, paths: Sequence[str]) -> DataFrame:
    """Every user_dir file as string columns plus the file, block and row order of each play."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import StringType, StructField, StructType

    schema = StructType([StructField(name, StringType()) for name in USER_DIR_COLUMNS])
    raw = (spark.read.schema(schema).option("header", True).option("escape", '"')
           .option("mode", "FAILFAST").csv(list(paths)))
    # Within one file block Spark reads rows in order, so the id orders a block's rows.
    return raw.select(
        *USER_DIR_COLUMNS,
        F.col("_metadata.file_path").alias(_FILE),
        F.col("_metadata.file_block_start").alias(_BLOCK),
        F.monotonically_increasing_id().alias(_ROW),
    )


def _invalid(raw: Column, parsed: Column) -> Column:
    """A value that is present but did not parse."""
    return raw.isNotNull() & parsed.isNull()


def problem() -> Column:
    """The name of the first column of a play the local reader would refuse, or null."""
    from pyspark.sql import functions as F

    folder = F.element_at(F.split(F.col(_FILE), "/"), -2)
    duration = F.col(DURATION).cast("double")
    flags = {
        USER_ID: F.col(USER_ID).isNull() | (F.col(USER_ID) != folder),
        TIMESTAMP: F.col(TIMESTAMP).isNull() | ~F.col(TIMESTAMP).rlike(_TIMESTAMP_TEXT)
        | F.col(TIMESTAMP).cast("timestamp").isNull(),
        DURATION: _invalid(F.col(DURATION), duration) | F.isnan(duration) | (duration < 0)
        | (duration == float("inf")),
        AGE: F.col(AGE).isNotNull() & ~F.col(AGE).rlike(_INT_TEXT),
        REGISTERED: F.col(REGISTERED).isNotNull() & (~F.col(REGISTERED).rlike(_DATE_TEXT)
                                                     | F.to_date(REGISTERED).isNull()),
    }
    return F.coalesce(*[F.when(flag, F.lit(name)) for name, flag in flags.items()])


def raise_on_problems(table: pd.DataFrame) -> None:
    """Fail naming a file and a column if any play of any session was invalid."""
    count = int(table[_PROBLEMS].sum())
    if count:
        uri, column = min(table[_FIRST_PROBLEM].dropna()).split("\t")
        raise SessionlenError(f"{_local_path(uri)}: a row has an invalid {column} "
                              f"({count} invalid row(s) in all files)")


def mark_sessions(plays: DataFrame, gap_minutes: float) -> DataFrame:
    """Each play, typed, with its rank in the user's plays and its 0-based session id."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    order = Window.partitionBy(USER_ID).orderBy(_TS_MS, _FILE, _BLOCK, _ROW)
    typed = plays.select(
        USER_ID, _FILE, _BLOCK, _ROW, problem().alias(_PROBLEM),
        F.unix_millis(F.col(TIMESTAMP).cast("timestamp")).alias(_TS_MS),
        F.col(DURATION).cast("double").alias(DURATION),
        F.when(F.col(GENDER) == "m", 1).when(F.col(GENDER) == "f", 0).otherwise(UNKNOWN)
        .cast("long").alias(GENDER),
        F.coalesce(F.col(AGE).cast("long"), F.lit(UNKNOWN)).alias(AGE),
        F.when(F.col(COUNTRY) != "", F.col(COUNTRY)).alias(COUNTRY),
        F.coalesce(F.unix_date(F.to_date(REGISTERED)).cast("long") * MS_PER_DAY,
                   F.lit(UNKNOWN).cast("long")).alias(REGISTERED),
    )
    # The rule of utils.sessions.session_starts, with the same double arithmetic.
    gap = ((F.col(_TS_MS) - F.lag(_TS_MS).over(order)).cast("double")
           - F.coalesce(F.lag(DURATION).over(order), F.lit(0.0)) * 1000.0)
    marked = typed.select(
        "*",
        (F.lag(_TS_MS).over(order).isNull() | (gap > F.lit(gap_minutes * 60_000.0)))
        .alias(_IS_START),
        F.row_number().over(order).alias(_RANK),
    )
    # Same partitioning and order as above: Spark reuses the sort, no second shuffle.
    return marked.select(
        "*",
        (F.sum(F.col(_IS_START).cast("long")).over(
            order.rowsBetween(Window.unboundedPreceding, Window.currentRow)) - 1)
        .alias(SESSION_ID),
    )


def session_rows(marked: DataFrame) -> DataFrame:
    """One row per session: start, profile at the start, plays and length in integer ms."""
    from pyspark.sql import functions as F

    # Grouping by (user, session) needs no shuffle: the plays are already hashed by user.
    first = [F.min_by(name, _RANK).alias(name) for name in (GENDER, AGE, COUNTRY, REGISTERED)]
    sessions = marked.groupBy(USER_ID, SESSION_ID).agg(
        F.min(_TS_MS).alias(TIMESTAMP), F.max(_TS_MS).alias("_last_ts"),
        F.max_by(F.coalesce(F.col(DURATION), F.lit(0.0)), _RANK).alias("_last_duration"),
        F.count(F.lit(1)).alias(PLAYS), *first,
        # Invalid plays are reported after the one pass over the data, naming a file.
        F.sum(F.col(_PROBLEM).isNotNull().cast("long")).alias(_PROBLEMS),
        F.min(F.when(F.col(_PROBLEM).isNotNull(),
                     F.concat(F.col(_FILE), F.lit("\t"), F.col(_PROBLEM)))).alias(_FIRST_PROBLEM),
    )
    # utils.sessions.session_lengths in seconds, then utils.summaries.to_milliseconds.
    seconds = ((F.col("_last_ts") - F.col(TIMESTAMP)).cast("double") / 1000.0
               + F.col("_last_duration"))
    return sessions.select(
        F.col(USER_ID).alias(SOURCE_ID), SESSION_ID, TIMESTAMP, GENDER, AGE, COUNTRY, REGISTERED,
        PLAYS, F.floor(seconds * 1000.0 + 0.5).cast("long").alias(LENGTH_MS),
        _PROBLEMS, _FIRST_PROBLEM,
    )


def with_history(sessions: DataFrame) -> DataFrame:
    """Add the previous session's length and the rounded mean of earlier ones (utils.summaries)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    order = Window.partitionBy(SOURCE_ID).orderBy(SESSION_ID)
    history = sessions.select(
        "*",
        F.coalesce(F.lag(LENGTH_MS).over(order), F.lit(0)).cast("long").alias(PREVIOUS_MS),
        F.coalesce(F.sum(LENGTH_MS).over(order.rowsBetween(Window.unboundedPreceding, -1)),
                   F.lit(0)).cast("long").alias(_EARLIER),
    )
    # Integer division, rounded half up: utils.summaries.history_ms.
    average = F.expr(f"(2 * {_EARLIER} + {SESSION_ID}) div (2 * {SESSION_ID})")
    return history.select(
        "*", F.when(F.col(SESSION_ID) > 0, average).otherwise(0).cast("long").alias(AVERAGE_MS),
    ).select(*SESSION_TABLE_COLUMNS, _PROBLEMS, _FIRST_PROBLEM)


def _local_path(uri: str) -> str:
    """A file: URI as a plain path (other URIs unchanged)."""
    return unquote(urlparse(uri).path) if uri.startswith("file:") else uri


def read_failure(exc: Exception) -> SessionlenError | None:
    """A one-line error for a Spark job that failed on a malformed CSV row, else None."""
    text = str(exc)
    record = re.search(r"Malformed CSV record: (.*?)(?: SQLSTATE|$)", text, re.MULTILINE)
    if record is None:
        return None
    where = re.search(r"while reading file (\S+?)\.?\s", text)
    path = _local_path(where.group(1)) if where else "user_dir"
    return SessionlenError(f"{path}: malformed row (wrong number of fields): {record.group(1)}")


@contextlib.contextmanager
def all_csv_columns_parsed(spark: SparkSession) -> Iterator[None]:
    """Parse every field of each row, so a row with extra or missing fields fails the read.

    With column pruning Spark tokenizes only the selected columns and cannot see the others.
    """
    key = "spark.sql.csv.parser.columnPruning.enabled"
    previous = spark.conf.get(key)
    spark.conf.set(key, "false")
    try:
        yield
    finally:
        spark.conf.set(key, previous)


def collect(sessions: DataFrame) -> pd.DataFrame:
    """The sessions table on the driver, via Arrow; malformed rows become one-line errors."""
    try:
        with all_csv_columns_parsed(sessions.sparkSession):
            return sessions.toArrow().to_pandas()
    except Exception as exc:  # the JVM's failure arrives as a py4j error
        failure = read_failure(exc)
        if failure is None:
            raise
        raise failure from None


def spark_sessions(users: dict[str, list[Path]], gap_minutes: float,
                   master: str | None = None) -> tuple[pd.DataFrame, int]:
    """The Spark engine: (sessions table, plays read), same contract as `local_sessions`."""
    paths = [path for files in users.values() for path in files]
    for path in paths:
        check_header(path)
    if not paths:
        return pd.DataFrame({name: [] for name in SESSION_TABLE_COLUMNS}), 0
    plays = read_plays(get_spark(master), [str(p) for p in paths])
    table = collect(with_history(session_rows(mark_sessions(plays, gap_minutes))))
    raise_on_problems(table)
    # Every play read falls in exactly one session (the window covers all rows).
    return table[SESSION_TABLE_COLUMNS], int(table[PLAYS].sum())
