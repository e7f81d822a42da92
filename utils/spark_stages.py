"""The Spark engine of the tracks and denormalize stages: the local engine's rules, its bytes.

The plays file is read as text (split on LF only, as the local reader does) and every line gets
the local reader's verdict, in the same order of checks, with the same reasons; rejected lines
are collected and written by the reader's own rejects writer. Keys use Spark's `lower` with ICU
case mappings (locale-independent full case mapping, like Python's `str.lower`) after trimming
the characters Python's `str.strip` removes. The two agree on every code point assigned up to
Unicode 14 (Python 3.11's database); they differ only on the ~55 letters with case added in
Unicode 15-17, which no 2005-2009 listening log holds. Profile and metadata fields are
formatted once on the driver by the local code and joined in, so the text cannot drift.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from utils import columns as C
from utils import raw_reader as rr
from utils.config import USER_ID_PATTERN
from utils.csv_text import NEEDS_QUOTING, header_line
from utils.denormalize import (
    COUNTRY_TEXT,
    DURATION_TEXT,
    GENDER_TEXT,
    GENRE_TEXT,
    REGISTERED_DAY_KEY,
    REGISTERED_TEXT,
    REGISTERED_YEAR,
    SECONDS_PER_DAY,
    USER_FILE,
)
from utils.spark import get_spark
from utils.tracks import MAX_IN_SESSION_GAP_S

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

# What Python's str.strip() removes: every character for which str.isspace() is true.
PYTHON_WHITESPACE = "".join(chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace())
TS_S = "ts_s"
TS_TEXT = "ts_text"
LINE = "line_number"
# monotonically_increasing_id(): partition index in the upper bits, row in partition below.
ROW_BITS = 33
# RE2 (Arrow) anchors `$` at the very end; Java lets it match before a final line terminator.
SPARK_USER_ID_PATTERN = USER_ID_PATTERN.removesuffix("$") + r"\z"
TIMESTAMP_SHAPE = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z"


def spark_session(master: str | None) -> SparkSession:
    """The project's Spark session, with case mappings pinned to ICU (locale-independent)."""
    spark = get_spark(master)
    spark.conf.set("spark.sql.icu.caseMappings.enabled", "true")
    return spark


def name_key(name: Column) -> Column:
    """Spark twin of tracks.name_key: strip Python's whitespace, then lower-case."""
    from pyspark.sql import functions as F

    return F.lower(F.trim(name, F.lit(PYTHON_WHITESPACE)))


def quote_minimal(value: Column) -> Column:
    """Spark twin of csv_text.quote_minimal (null becomes empty)."""
    from pyspark.sql import functions as F

    text = F.coalesce(value, F.lit(""))
    quoted = F.concat(F.lit('"'), F.replace(text, F.lit('"'), F.lit('""')), F.lit('"'))
    return F.when(text.rlike(NEEDS_QUOTING), quoted).otherwise(text)


def numbered_lines(spark: SparkSession, path: Path) -> tuple[DataFrame, int]:
    """The file's lines (split on LF only) with 1-based line numbers, and the line count."""
    from pyspark.sql import functions as F

    text = spark.read.option("lineSep", "\n").text(str(path)).select(
        F.spark_partition_id().alias("part"), F.monotonically_increasing_id().alias("id"),
        "value")
    sizes = dict(text.groupBy("part").count().collect())
    parts = max(sizes, default=-1) + 1
    offsets = np.concatenate([[0], np.cumsum([sizes.get(p, 0) for p in range(parts)])])
    offset = F.element_at(F.array(*[F.lit(int(o)) for o in offsets[:-1]]), F.col("part") + 1)
    local_row = F.col("id") - F.shiftleft(F.col("part").cast("long"), ROW_BITS)
    lines = text.select((offset + local_row + 1).alias(LINE), "value")
    return lines, int(offsets[-1])


def _timestamp_checks(stamp: Column) -> tuple[Column, Column]:
    """(valid, seconds since epoch) of a YYYY-MM-DDTHH:MM:SSZ field, the reader's strict rule."""
    from pyspark.sql import functions as F

    def number(start: int, length: int) -> Column:
        return F.substring(stamp, start, length).cast("int")

    date = F.make_date(number(1, 4), number(6, 2), number(9, 2))
    hour, minute, second = number(12, 2), number(15, 2), number(18, 2)
    valid = ((F.octet_length(stamp) == rr.TIMESTAMP_WIDTH) & stamp.rlike(TIMESTAMP_SHAPE)
             & date.isNotNull() & (hour < 24) & (minute < 60) & (second < 60))
    seconds = (F.unix_date(date).cast("long") * SECONDS_PER_DAY + hour * 3600 + minute * 60
               + second)
    return F.coalesce(valid, F.lit(False)), seconds


def classify_lines(lines: DataFrame) -> DataFrame:
    """Each line's reject code (0 = kept), checks in the local reader's order, and its fields.

    Built in steps so that the split and the verdict are computed once per line (the optimizer
    does not merge steps when that would repeat an expensive expression).
    """
    from pyspark.sql import functions as F

    value = F.col("value")
    names = [f"f{j}" for j in range(len(C.PLAYS_COLUMNS))]
    split = lines.select(LINE, "value", F.split(value, "\t", -1).alias("fields"))
    split = split.select(LINE, "value", F.size("fields").alias("n_fields"),
                         *[F.col("fields").getItem(j).alias(n) for j, n in enumerate(names)])
    user, stamp, artist, track = F.col("f0"), F.col("f1"), F.col("f3"), F.col("f5")
    stamp_ok, seconds = _timestamp_checks(stamp)
    code = (
        F.when(value == "", rr.EMPTY_LINE)
        .when(F.instr(value, "\r") > 0, rr.CARRIAGE_RETURN)
        .when(F.col("n_fields") != len(C.PLAYS_COLUMNS), rr.FIELD_COUNT)
        .when(~F.is_valid_utf8(value), rr.INVALID_UTF8)
        .when(~user.rlike(SPARK_USER_ID_PATTERN) | user.isin(".", ".."), rr.BAD_USER_ID)
        .when(~stamp_ok, rr.BAD_TIMESTAMP)
        .when(F.octet_length(artist) == 0, rr.EMPTY_ARTIST)
        .when(F.octet_length(track) == 0, rr.EMPTY_TRACK)
        .otherwise(rr.OK)
    )
    checked = split.select("*", code.alias("code"), seconds.alias(TS_S))
    return checked.select(
        LINE, "code", "n_fields",
        # Only a rejected line's raw bytes are kept, for the rejects file.
        F.when(F.col("code") != rr.OK, value.cast("binary")).alias("raw"),
        user.alias(C.USER_ID), stamp.alias(TS_TEXT), TS_S,
        F.nullif("f2", F.lit("")).alias(C.ARTIST_MBID), artist.alias(C.ARTIST_NAME),
        F.nullif("f4", F.lit("")).alias(C.TRACK_MBID), track.alias(C.TRACK_NAME),
    )


def _collect_rejects(classified: DataFrame) -> rr.Rejects:
    """The rejected lines in file order, with the reader's reasons and leniently decoded text."""
    from pyspark.sql import functions as F

    table = (classified.where(F.col("code") != rr.OK)
             .select(LINE, "code", "n_fields", "raw")
             .toArrow().sort_by(LINE))
    codes = table["code"].to_pylist()
    counts = table["n_fields"].to_pylist()
    reasons = [rr.REASONS[c].format(expected=len(C.PLAYS_COLUMNS), got=n)
               for c, n in zip(codes, counts, strict=True)]
    lines = [raw.decode("utf-8", errors="replace") for raw in table["raw"].to_pylist()]
    return rr.Rejects(table[LINE].to_numpy().astype(np.int64), reasons, lines)


def read_plays_spark(spark: SparkSession, path: Path, rejects_dir: Path
                     ) -> tuple[DataFrame, dict[str, Any]]:
    """Kept plays (cached) and the line accounting, rejects written as the local reader does."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    # The local reader's quick refusal of a file that is not in the format at all.
    head = rr.parse_plays_chunk(rr.read_head(path, rr.SNIFF_BYTES))
    rr.check_not_empty(path, "plays", rr.PLAYS_EXPECTED, head.n_lines)
    rr.check_mostly_valid(path, "plays", rr.PLAYS_EXPECTED, head.n_lines, head.rejects,
                           scope=" at the start of the file")
    lines, rows_in = numbered_lines(spark, path)
    classified = classify_lines(lines).persist(StorageLevel.MEMORY_AND_DISK)
    rejects = _collect_rejects(classified)
    rr.check_mostly_valid(path, "plays", rr.PLAYS_EXPECTED, rows_in, rejects)
    target = rr.write_rejects(path, rejects_dir, rejects)
    kept = classified.where(F.col("code") == rr.OK).drop("code", "n_fields", "raw")
    return kept, {"rows_in": rows_in, "rows_rejected": len(rejects.line_numbers),
                  "rejects_path": str(target) if target else None}


def with_keys(plays: DataFrame) -> DataFrame:
    """Plays with their artist and track keys."""
    return plays.withColumns({C.ARTIST_KEY: name_key(plays[C.ARTIST_NAME]),
                              C.TRACK_KEY: name_key(plays[C.TRACK_NAME])})


def with_in_session_gaps(plays: DataFrame) -> DataFrame:
    """Plays with `gap`: seconds to the same user's next play when 1 s..30 min, else null."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    order = Window.partitionBy(C.USER_ID).orderBy(F.col(TS_S), F.col(LINE).desc())
    gap = F.lead(TS_S).over(order) - F.col(TS_S)
    return plays.withColumn("gap", F.when((gap > 0) & (gap <= MAX_IN_SESSION_GAP_S), gap))


def unique_tracks_frame(plays: DataFrame) -> DataFrame:
    """Spark twin of tracks.unique_tracks_table (unsorted, unformatted).

    `mode(..., deterministic=True)` is the most frequent non-null value, ties to the lowest in
    byte order, which is the local engine's code point order.
    """
    from pyspark.sql import functions as F

    keyed = with_in_session_gaps(with_keys(plays))
    spellings = [F.mode(c, deterministic=True).alias(c)
                 for c in (C.ARTIST_NAME, C.TRACK_NAME, C.ARTIST_MBID, C.TRACK_MBID)]
    tracks = keyed.groupBy(C.ARTIST_KEY, C.TRACK_KEY).agg(
        F.count(F.lit(1)).alias(C.PLAY_COUNT), F.median("gap").alias(C.GAP_MEDIAN_S),
        F.count("gap").alias(C.GAP_COUNT), *spellings)
    artists = keyed.groupBy(C.ARTIST_KEY).agg(F.median("gap").alias(C.ARTIST_GAP_MEDIAN_S))
    return tracks.join(artists, C.ARTIST_KEY, "left").select(*C.UNIQUE_TRACKS_COLUMNS)


def spark_unique_tracks(plays_path: Path, rejects_dir: Path, spark_master: str | None
                        ) -> tuple[pa.Table, dict[str, Any]]:
    """Stage tracks on Spark: the unique-tracks table (collected) and the line accounting."""
    spark = spark_session(spark_master)
    plays, counts = read_plays_spark(spark, plays_path, rejects_dir)
    try:
        table = unique_tracks_frame(plays).toArrow()
    finally:
        plays.unpersist()
    return table, counts


def _play_years(stamp: Column, reg_year: Column, reg_key: Column) -> Column:
    """Spark twin of denormalize.whole_years, from the play's timestamp text."""
    from pyspark.sql import functions as F

    def number(start: int, length: int) -> Column:
        return F.substring(stamp, start, length).cast("long")

    year = number(1, 4)
    key = ((number(6, 2) * 32 + number(9, 2)) * SECONDS_PER_DAY + number(12, 2) * 3600
           + number(15, 2) * 60 + number(18, 2))
    forward = (year - reg_year) - (key < reg_key).cast("long")
    backward = -((reg_year - year) - (reg_key < key).cast("long"))
    after = (year > reg_year) | ((year == reg_year) & (key >= reg_key))
    return F.when(reg_year.isNull(), F.lit(0)).when(after, forward).otherwise(backward)


def play_line(joined: DataFrame) -> Column:
    """The CSV line of a joined play (no terminator: the text writer adds LF)."""
    from pyspark.sql import functions as F

    age = F.col(C.AGE) + _play_years(F.col(TS_TEXT), F.col(REGISTERED_YEAR),
                                     F.col(REGISTERED_DAY_KEY))
    text = [
        F.col(C.USER_ID), F.col(TS_TEXT), quote_minimal(F.col(C.ARTIST_NAME)),
        quote_minimal(F.col(C.TRACK_NAME)), F.col(GENDER_TEXT), age.cast("string"),
        F.col(COUNTRY_TEXT), F.col(REGISTERED_TEXT), F.col(DURATION_TEXT), F.col(GENRE_TEXT),
    ]
    return F.concat_ws(",", *[F.coalesce(t, F.lit("")) for t in text])


def join_plays(spark: SparkSession, plays: DataFrame, people: pa.Table, metadata: pa.Table
               ) -> DataFrame:
    """Plays joined with the driver-built profile and metadata lookups (left joins)."""
    from pyspark.sql import functions as F

    people_df = spark.createDataFrame(people).withColumn("has_profile", F.lit(True))
    metadata_df = spark.createDataFrame(metadata)
    return (with_keys(plays)
            .join(metadata_df, [C.ARTIST_KEY, C.TRACK_KEY], "left")
            .join(F.broadcast(people_df), C.USER_ID, "left"))


def join_counts_spark(joined: DataFrame) -> dict[str, int]:
    """Rows, users, and what found no profile or metadata (denormalize.join_counts' twin)."""
    from pyspark.sql import functions as F

    no_profile = F.col("has_profile").isNull()
    row = joined.agg(
        F.count(F.lit(1)).alias("rows_out"),
        F.count_distinct(C.USER_ID).alias("users"),
        F.count_distinct(F.when(no_profile, F.col(C.USER_ID))).alias("users_without_profile"),
        F.count_if(no_profile).alias("plays_without_profile"),
        F.count_if(F.col(DURATION_TEXT).isNull()).alias("plays_without_metadata"),
    ).first()
    return {k: int(v) for k, v in row.asDict().items()}


def write_user_texts(joined: DataFrame, out_dir: Path, partitions: int) -> int:
    """Write one text file per user (header, then plays in order) into out_dir; users written.

    Spark writes user_id=X/part-*.txt into a staging folder beside out_dir (a user id could
    be any folder name inside it), which needs out_dir on a filesystem the executors see.
    """
    from pyspark.sql import functions as F

    header = header_line(C.USER_DIR_COLUMNS).decode("utf-8").rstrip("\n")
    data = joined.select(C.USER_ID, F.lit(1).alias("kind"), TS_S, LINE,
                         play_line(joined).alias("value"))
    headers = joined.select(C.USER_ID).distinct().select(
        C.USER_ID, F.lit(0).alias("kind"), F.lit(None).cast("long").alias(TS_S),
        F.lit(None).cast("long").alias(LINE), F.lit(header).alias("value"))
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.spark-", dir=out_dir.parent))
    try:
        (data.unionByName(headers)
         .repartition(partitions, C.USER_ID)
         .sortWithinPartitions(C.USER_ID, "kind", TS_S, F.col(LINE).desc())
         .select(C.USER_ID, "value")
         .write.mode("overwrite").partitionBy(C.USER_ID).option("lineSep", "\n")
         .text(str(staging)))
        return move_user_files(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def move_user_files(staging: Path, out_dir: Path) -> int:
    """Move staging/user_id=X/part-*.txt to out_dir/X/part-00000.csv; the number of users."""
    prefix = f"{C.USER_ID}="
    moved = 0
    for folder in staging.iterdir():
        if not folder.name.startswith(prefix):
            continue
        parts = [p for p in folder.iterdir() if p.name.startswith("part-")]
        if len(parts) != 1:
            raise AssertionError(f"{folder}: expected one part file per user, found {len(parts)}")
        target = out_dir / folder.name.removeprefix(prefix)
        target.mkdir()
        os.replace(parts[0], target / USER_FILE)
        moved += 1
    return moved


def spark_denormalize(plays_path: Path, rejects_dir: Path, people: pa.Table,
                      metadata: pa.Table, out_dir: Path, spark_master: str | None
                      ) -> dict[str, Any]:
    """Stage denormalize on Spark: write every user's file into out_dir; the manifest counts."""
    spark = spark_session(spark_master)
    plays, counts = read_plays_spark(spark, plays_path, rejects_dir)
    try:
        joined = join_plays(spark, plays, people, metadata)
        counts |= join_counts_spark(joined)
        written = write_user_texts(joined, out_dir,
                                   int(spark.conf.get("spark.sql.shuffle.partitions")))
    finally:
        plays.unpersist()
    if written != counts["users"]:
        raise AssertionError(f"Spark wrote {written} user files for {counts['users']} users")
    return counts
