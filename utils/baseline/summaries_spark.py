"""The session rule on Spark DataFrames, for the final_dir stages' Spark engines.

Spark reads every user_dir file and applies the session rule with `lag` over each user's
plays (ordered by time, then file and position in the file, i.e. the local engine's stable
order; files are known by their rank in path order, from a small broadcast table), keeping
every play with its session, so that the final_dir stages can join the plays' names to their
sessions; `session_rows` aggregates the sessions, which those stages check against the
summaries. Every floating-point step mirrors the local arithmetic (session_table) operation by
operation, so the two engines agree to the bit. The summarize stage itself runs the local
code in Spark tasks (session_table_spark).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlparse

import pandas as pd

from utils.baseline.session_table import (
    LENGTH_MS,
    MS_PER_DAY,
    PLAYS,
    SOURCE_ID,
    UNKNOWN,
)
from utils.core.columns import (
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
from utils.core.errors import SessionlenError

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

# Helper column names (never written).
_FILE = "_file"
_FILE_INDEX = "_file_index"
_FOLDER = "_folder"
_BLOCK = "_block"
_ROW = "_row"
TS_MS = "_ts_ms"
PLAY_RANK = "_rank"
_IS_START = "_is_start"
_IS_END = "_is_end"
_EARLIER = "_earlier_ms"
_PROBLEM = "_problem"
_PROBLEMS = "_problems"
_FIRST_PROBLEM = "_first_problem"
_FIRST_FILE = "_first_file"
_PARSED_TS = "_parsed_ts"
_PARSED_DURATION = "_parsed_duration"
_PARSED_AGE = "_parsed_age"
_PARSED_DATE = "_parsed_date"

# Shuffle partitions of the sessions job: several per core, so one big user's partition does
# not leave a core idle; not merged by adaptive execution, which would make ~2 uneven ones.
_SESSION_PARTITIONS = 16

# What a valid value of each checked column looks like (the local reader's parsers accept them).
_TIMESTAMP_TEXT = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,3})?Z$"
_DATE_TEXT = r"^\d{4}-\d{2}-\d{2}$"
_INT_TEXT = r"^-?\d+$"


def file_table(spark: SparkSession, uris: Sequence[str]) -> DataFrame:
    """Each file as Spark names it, its rank in path order and the folder (user) it sits in."""
    from pyspark.sql import functions as F

    # One JSON literal: built in the JVM with a few calls, whatever the number of files
    # (a Python-side DataFrame would start Python workers, a column per value costs a call).
    rows = [{_FILE: uri, _FILE_INDEX: index, _FOLDER: uri.split("/")[-2]}
            for index, uri in enumerate(uris)]
    schema = f"array<struct<{_FILE}:string,{_FILE_INDEX}:int,{_FOLDER}:string>>"
    return spark.range(0, 1, 1, 1).select(F.inline(F.from_json(F.lit(json.dumps(rows)), schema)))


def read_plays(spark: SparkSession, paths: Sequence[str]) -> tuple[DataFrame, list[str]]:
    """Every user_dir file as string columns plus the file, block and row order of each play.

    Also returns the file URIs in path order: a play carries its file's rank in that list.
    """
    from pyspark.sql import functions as F
    from pyspark.sql.types import StringType, StructField, StructType

    schema = StructType([StructField(name, StringType()) for name in USER_DIR_COLUMNS])
    raw = (spark.read.schema(schema).option("header", True).option("escape", '"')
           .option("mode", "FAILFAST").csv(list(paths)))
    # The same strings as input_file_name(): both are the listed files' URIs.
    uris = sorted(raw.inputFiles())
    # Within one file block Spark reads rows in order, so the id orders a block's rows.
    plays = raw.select(
        *USER_DIR_COLUMNS,
        F.input_file_name().alias(_FILE),
        F.col("_metadata.file_block_start").alias(_BLOCK),
        F.monotonically_increasing_id().alias(_ROW),
    ).join(F.broadcast(file_table(spark, uris)), _FILE, "left").drop(_FILE)
    return plays, uris


def _invalid(raw: Column, parsed: Column) -> Column:
    """A value that is present but did not parse."""
    return raw.isNotNull() & parsed.isNull()


def with_parsed_values(plays: DataFrame) -> DataFrame:
    """Add the typed value of each parsed column, so checks and outputs parse it only once."""
    from pyspark.sql import functions as F

    return plays.select(
        "*",
        F.col(TIMESTAMP).cast("timestamp").alias(_PARSED_TS),
        F.col(DURATION).cast("double").alias(_PARSED_DURATION),
        F.col(AGE).cast("long").alias(_PARSED_AGE),
        F.to_date(REGISTERED).alias(_PARSED_DATE),
    )


def problem() -> Column:
    """The name of the first column of a play the local reader would refuse, or null.

    Reads the columns of `with_parsed_values`.
    """
    from pyspark.sql import functions as F

    duration = F.col(_PARSED_DURATION)
    flags = {
        # A play of a file missing from the file table (no folder) is refused too.
        USER_ID: ~F.coalesce(F.col(USER_ID) == F.col(_FOLDER), F.lit(False)),
        TIMESTAMP: F.col(TIMESTAMP).isNull() | ~F.col(TIMESTAMP).rlike(_TIMESTAMP_TEXT)
        | F.col(_PARSED_TS).isNull(),
        DURATION: _invalid(F.col(DURATION), duration) | F.isnan(duration) | (duration < 0)
        | (duration == float("inf")),
        AGE: F.col(AGE).isNotNull() & ~F.col(AGE).rlike(_INT_TEXT),
        REGISTERED: F.col(REGISTERED).isNotNull() & (~F.col(REGISTERED).rlike(_DATE_TEXT)
                                                     | F.col(_PARSED_DATE).isNull()),
    }
    return F.coalesce(*[F.when(flag, F.lit(name)) for name, flag in flags.items()])


def raise_on_problems(table: pd.DataFrame, uris: Sequence[str]) -> None:
    """Fail naming a file and a column if any play of any session was invalid."""
    count = int(table[_PROBLEMS].sum())
    if count:
        firsts = table.dropna(subset=[_FIRST_FILE])
        index, column = min(zip(firsts[_FIRST_FILE].astype(int), firsts[_FIRST_PROBLEM],
                                strict=True), default=(None, "user_id"))
        where = "user_dir" if index is None else _local_path(uris[index])
        raise SessionlenError(f"{where}: a row has an invalid {column} "
                              f"({count} invalid row(s) in all files)")


def mark_sessions(plays: DataFrame, gap_minutes: float, keep: Sequence[str] = ()) -> DataFrame:
    """Each play, typed, with its rank in the user's plays, its 0-based session id and whether
    it is the first and the last play of its session; `keep` names raw columns carried along."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    order = Window.partitionBy(USER_ID).orderBy(TS_MS, _FILE_INDEX, _BLOCK, _ROW)
    typed = with_parsed_values(plays).select(
        USER_ID, _FILE_INDEX, _BLOCK, _ROW, *keep, problem().alias(_PROBLEM),
        F.unix_millis(_PARSED_TS).alias(TS_MS),
        F.col(_PARSED_DURATION).alias(DURATION),
        F.when(F.col(GENDER) == "m", 1).when(F.col(GENDER) == "f", 0).otherwise(UNKNOWN)
        .cast("long").alias(GENDER),
        F.coalesce(_PARSED_AGE, F.lit(UNKNOWN)).alias(AGE),
        F.when(F.col(COUNTRY) != "", F.col(COUNTRY)).alias(COUNTRY),
        F.coalesce(F.unix_date(_PARSED_DATE).cast("long") * MS_PER_DAY,
                   F.lit(UNKNOWN).cast("long")).alias(REGISTERED),
    )
    # The rule of utils.baseline.sessions.session_starts, with the same double arithmetic.
    gap = ((F.col(TS_MS) - F.lag(TS_MS).over(order)).cast("double")
           - F.coalesce(F.lag(DURATION).over(order), F.lit(0.0)) * 1000.0)
    marked = typed.select(
        "*",
        (F.lag(TS_MS).over(order).isNull() | (gap > F.lit(gap_minutes * 60_000.0)))
        .alias(_IS_START),
        F.row_number().over(order).alias(PLAY_RANK),
    )
    # Same partitioning and order as above: Spark reuses the sort, no second shuffle.
    return marked.select(
        "*",
        (F.sum(F.col(_IS_START).cast("long")).over(
            order.rowsBetween(Window.unboundedPreceding, Window.currentRow)) - 1)
        .alias(SESSION_ID),
        F.coalesce(F.lead(_IS_START).over(order), F.lit(True)).alias(_IS_END),
    )


def problem_counts() -> list[Column]:
    """Aggregates: invalid plays, the first file (path order) with one, and its column."""
    from pyspark.sql import functions as F

    first = F.min(F.when(F.col(_PROBLEM).isNotNull(), F.struct(_FILE_INDEX, _PROBLEM)))
    return [F.sum(F.col(_PROBLEM).isNotNull().cast("long")).alias(_PROBLEMS),
            first[_FILE_INDEX].alias(_FIRST_FILE), first[_PROBLEM].alias(_FIRST_PROBLEM)]


def session_rows(marked: DataFrame) -> DataFrame:
    """One row per session: start, profile at the start, plays and length in integer ms."""
    from pyspark.sql import functions as F

    # A session's first and last plays hold all it needs, so only they (and the invalid plays,
    # reported after the one pass over the data) are grouped and sorted for it; the plays are
    # already hashed by user, so grouping needs no shuffle.
    ends = marked.where(F.col(_IS_START) | F.col(_IS_END) | F.col(_PROBLEM).isNotNull())
    first = [F.min_by(name, PLAY_RANK).alias(name) for name in (GENDER, AGE, COUNTRY, REGISTERED)]
    sessions = ends.groupBy(USER_ID, SESSION_ID).agg(
        F.min(TS_MS).alias(TIMESTAMP), F.max(TS_MS).alias("_last_ts"),
        F.max_by(F.coalesce(F.col(DURATION), F.lit(0.0)), PLAY_RANK).alias("_last_duration"),
        (F.max(PLAY_RANK) - F.min(PLAY_RANK) + 1).alias(PLAYS), *first,
        *problem_counts(),
    )
    # sessions.session_lengths in seconds, then session_table.to_milliseconds.
    seconds = ((F.col("_last_ts") - F.col(TIMESTAMP)).cast("double") / 1000.0
               + F.col("_last_duration"))
    return sessions.select(
        F.col(USER_ID).alias(SOURCE_ID), SESSION_ID, TIMESTAMP, GENDER, AGE, COUNTRY, REGISTERED,
        PLAYS, F.floor(seconds * 1000.0 + 0.5).cast("long").alias(LENGTH_MS),
        _PROBLEMS, _FIRST_FILE, _FIRST_PROBLEM,
    )


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
def session_job_conf(spark: SparkSession) -> Iterator[None]:
    """Settings of the sessions job, restored afterwards.

    Every field of each row is parsed, so a row with extra or missing fields fails the read:
    with column pruning Spark tokenizes only the selected columns and cannot see the others.
    """
    settings = {
        "spark.sql.csv.parser.columnPruning.enabled": "false",
        "spark.sql.shuffle.partitions": str(_SESSION_PARTITIONS),
        "spark.sql.adaptive.coalescePartitions.enabled": "false",
    }
    previous = {key: spark.conf.get(key) for key in settings}
    for key, value in settings.items():
        spark.conf.set(key, value)
    try:
        yield
    finally:
        for key, value in previous.items():
            spark.conf.set(key, value)


def collect(sessions: DataFrame) -> pd.DataFrame:
    """The sessions table on the driver, via Arrow; malformed rows become one-line errors."""
    try:
        with session_job_conf(sessions.sparkSession):
            return sessions.toArrow().to_pandas()
    except Exception as exc:  # the JVM's failure arrives as a py4j error
        failure = read_failure(exc)
        if failure is None:
            raise
        raise failure from None
