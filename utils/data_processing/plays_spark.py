"""The raw plays file on Spark, read in one pass: the local reader's verdict on every line, the
kept plays for the job that uses them, and the rejected lines gathered while that job runs.

The plays file is read as text (split on LF only, as the local reader does) and every line gets
the local reader's verdict, in the same order of checks, with the same reasons. The kept plays
carry an id ordered as the file (for the local engine's tie-break on the later line); the lines
are counted and the rejected ones collected by an observation of the same job, so the file is
parsed once. Rejected lines are numbered from the lines before each input partition, counted by
a second, count-only pass that runs only when some line was rejected, and written by the
reader's own writer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from utils.core import columns as C
from utils.core.civil_dates import SECONDS_PER_DAY
from utils.core.config import USER_ID_PATTERN
from utils.data_processing import plays_reader as pr
from utils.data_processing import raw_lines as rl

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, Observation, SparkSession

TS_S = "ts_s"
TS_TEXT = "ts_text"
LINE = "line_number"
PART = "part"
# monotonically_increasing_id(): partition index in the upper bits, row in partition below;
# ordered as the file, since a single text file's input partitions follow its byte order.
ROW_ID = "id"
ROW_BITS = 33
# RE2 (Arrow) anchors `$` at the very end; Java lets it match before a final line terminator.
SPARK_USER_ID_PATTERN = USER_ID_PATTERN.removesuffix("$") + r"\z"
TIMESTAMP_SHAPE = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z"
# A kept line's shape in one regular expression (with the UTF-8, "."/".." and calendar checks
# it is the whole verdict): nearly all lines match, so the check-by-check verdict that names a
# line's first failing rule runs only for the few that do not.
PLAIN_LINE = ("^" + USER_ID_PATTERN.removeprefix("^").removesuffix("$")
              + r"\t[0-9]{4}-[0-9]{2}-[0-9]{2}T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]Z"
              + r"\t[^\t\r]*\t[^\t\r]+\t[^\t\r]*\t[^\t\r]+\z")
ROWS_IN = "rows_in"
REJECTS = "rejects"


@dataclass(frozen=True)
class SparkPlays:
    """The kept plays of a plays file (not read yet) and the line accounting their job fills.

    `kept` has PART, ROW_ID, the user id, TS_TEXT, TS_S and the four name and MBID columns;
    `lines` is filled by the first action that reads `kept`: ROWS_IN and the REJECTS.
    """

    path: Path
    kept: DataFrame
    lines: Observation


def numbered_text(spark: SparkSession, path: Path) -> DataFrame:
    """The file's lines (split on LF only) with their partition and an id ordered as the file."""
    from pyspark.sql import functions as F

    return spark.read.option("lineSep", "\n").text(os.path.abspath(path)).select(
        F.spark_partition_id().alias(PART), F.monotonically_increasing_id().alias(ROW_ID),
        "value")


def line_number(offsets: np.ndarray) -> Column:
    """1-based line number of a numbered_text row, from the lines before each partition."""
    from pyspark.sql import functions as F

    offset = F.element_at(F.array(*[F.lit(int(o)) for o in offsets]), F.col(PART) + 1)
    local_row = F.col(ROW_ID) - F.shiftleft(F.col(PART).cast("long"), ROW_BITS)
    return offset + local_row + 1


def _timestamp_checks(stamp: Column) -> tuple[Column, Column, Column]:
    """(valid, seconds since epoch, is a calendar date) of a YYYY-MM-DDTHH:MM:SSZ field.

    `valid` is the reader's strict rule; the calendar part alone completes PLAIN_LINE.
    """
    from pyspark.sql import functions as F

    def number(start: int, length: int) -> Column:
        return F.substring(stamp, start, length).cast("int")

    date = F.make_date(number(1, 4), number(6, 2), number(9, 2))
    hour, minute, second = number(12, 2), number(15, 2), number(18, 2)
    valid = ((F.octet_length(stamp) == pr.TIMESTAMP_WIDTH) & stamp.rlike(TIMESTAMP_SHAPE)
             & date.isNotNull() & (hour < 24) & (minute < 60) & (second < 60))
    seconds = (F.unix_date(date).cast("long") * SECONDS_PER_DAY + hour * 3600 + minute * 60
               + second)
    return F.coalesce(valid, F.lit(False)), seconds, date.isNotNull()


def classify_lines(lines: DataFrame) -> DataFrame:
    """Each line's reject code (0 = kept), checks in the local reader's order, and its fields.

    Built in steps so that the split and the verdict are computed once per line (the optimizer
    does not merge steps when that would repeat an expensive expression). The verdict is one
    regular expression and the calendar check for a plain line; the checks one by one, which
    name the first failing rule, run only on lines that are not plain.
    """
    from pyspark.sql import functions as F

    value = F.col("value")
    names = [f"f{j}" for j in range(len(C.PLAYS_COLUMNS))]
    keep = [c for c in lines.columns if c != "value"]
    split = lines.select(*keep, "value", F.split(value, "\t", -1).alias("fields"))
    split = split.select(*keep, "value", F.size("fields").alias("n_fields"),
                         *[F.col("fields").getItem(j).alias(n) for j, n in enumerate(names)])
    user, stamp, artist, track = F.col("f0"), F.col("f1"), F.col("f3"), F.col("f5")
    stamp_ok, seconds, calendar_ok = _timestamp_checks(stamp)
    plain = value.rlike(PLAIN_LINE) & F.is_valid_utf8(value) & calendar_ok
    code = (
        F.when(plain, rl.OK)
        .when(value == "", rl.EMPTY_LINE)
        .when(F.instr(value, "\r") > 0, rl.CARRIAGE_RETURN)
        .when(F.col("n_fields") != len(C.PLAYS_COLUMNS), rl.FIELD_COUNT)
        .when(~F.is_valid_utf8(value), rl.INVALID_UTF8)
        .when(~user.rlike(SPARK_USER_ID_PATTERN), rl.BAD_USER_ID)
        .when(~stamp_ok, rl.BAD_TIMESTAMP)
        .when(F.octet_length(artist) == 0, rl.EMPTY_ARTIST)
        .when(F.octet_length(track) == 0, rl.EMPTY_TRACK)
        .otherwise(rl.OK)
    )
    checked = split.select("*", code.alias("code"), seconds.alias(TS_S))
    return checked.select(
        *keep, "code", "n_fields",
        # Only a rejected line's raw bytes are kept, for the rejects file.
        F.when(F.col("code") != rl.OK, value.cast("binary")).alias("raw"),
        user.alias(C.USER_ID), stamp.alias(TS_TEXT), TS_S,
        F.nullif("f2", F.lit("")).alias(C.ARTIST_MBID), artist.alias(C.ARTIST_NAME),
        F.nullif("f4", F.lit("")).alias(C.TRACK_MBID), track.alias(C.TRACK_NAME),
    )


def check_plays_head(path: Path) -> None:
    """Refuse, before any Spark job, a file whose first lines are not plays (or that has none)."""
    head = pr.parse_plays_chunk(pr.read_head(path, pr.SNIFF_BYTES))
    rl.check_not_empty(path, "plays", pr.PLAYS_EXPECTED, head.n_lines)
    rl.check_mostly_valid(path, "plays", pr.PLAYS_EXPECTED, head.n_lines, head.rejects,
                           scope=" at the start of the file")


def read_plays_spark(spark: SparkSession, path: Path) -> SparkPlays:
    """The kept plays of the file, counting lines and collecting rejects as they are read.

    Nothing is read here but the file's head, which the local reader also checks first.
    """
    from pyspark.sql import Observation
    from pyspark.sql import functions as F

    check_plays_head(path)
    lines = Observation("plays_lines")
    rejected = F.struct(PART, ROW_ID, "code", "n_fields", "raw")
    observed = classify_lines(numbered_text(spark, path)).observe(
        lines, F.count(F.lit(1)).alias(ROWS_IN),
        F.collect_list(F.when(F.col("code") != rl.OK, rejected)).alias(REJECTS))
    kept = observed.where(F.col("code") == rl.OK).drop("code", "n_fields", "raw")
    return SparkPlays(path, kept, lines)


def partition_offsets(spark: SparkSession, path: Path) -> np.ndarray:
    """The lines before each input partition of the file (and their total last), counted."""
    from pyspark.sql import functions as F

    table = numbered_text(spark, path).groupBy(PART).agg(F.count(F.lit(1)).alias("lines")) \
        .toArrow()
    sizes = dict(zip(table[PART].to_pylist(), table["lines"].to_pylist(), strict=True))
    counts = [sizes.get(p, 0) for p in range(max(sizes, default=-1) + 1)]
    return np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])


def _rejects(rows: list[Any], offsets: np.ndarray) -> rl.Rejects:
    """The rejected lines in file order, with the reader's reasons and leniently decoded text."""
    parts = np.array([r[PART] for r in rows], dtype=np.int64)
    local = np.array([r[ROW_ID] for r in rows], dtype=np.int64) - (parts << ROW_BITS)
    numbers = offsets[parts] + local + 1
    order = np.argsort(numbers, kind="stable").tolist()
    reasons = [rl.REASONS[rows[i]["code"]].format(expected=len(C.PLAYS_COLUMNS),
                                                  got=rows[i]["n_fields"]) for i in order]
    lines = [bytes(rows[i]["raw"]).decode("utf-8", errors="replace") for i in order]
    return rl.Rejects(numbers[order].astype(np.int64), reasons, lines)


def account_lines(spark: SparkSession, plays: SparkPlays, rejects_dir: Path) -> dict[str, Any]:
    """After a job has read `plays.kept`: refuse a mostly malformed file, write the rejects as
    the local reader does, and return the line accounting."""
    metrics = plays.lines.get
    rows_in, rows = int(metrics[ROWS_IN]), list(metrics[REJECTS])
    # Line numbers need the lines before each partition: counted only when some are rejected.
    offsets = partition_offsets(spark, plays.path) if rows else np.zeros(1, np.int64)
    rejects = _rejects(rows, offsets)
    rl.check_mostly_valid(plays.path, "plays", pr.PLAYS_EXPECTED, rows_in, rejects)
    target = rl.write_rejects(plays.path, rejects_dir, rejects)
    return {"rows_in": rows_in, "rows_rejected": len(rejects.line_numbers),
            "rejects_path": str(target) if target else None}
