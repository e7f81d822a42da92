"""The Spark SQL plan of the tracks and denormalize stages: the local engine's rules, its bytes.

Their Spark engines (`tracks_spark`, `denormalize_spark`) run the local engine's code in tasks
on byte ranges of whole users; this plan assumes no layout of the plays file and takes over when
a user's lines are not one block. Tracks also finishes here: `unique_tracks_of_counts` turns
the counts of spellings and gaps into the unique-tracks table for both ways.

The plays file is read once, by the job that uses it (`plays_spark`: the local reader's
verdict on every line, rejected lines collected as the job runs and written by the reader's own
rejects writer after it). Keys use Spark's `lower` with ICU case mappings (locale-independent
full case mapping, like Python's `str.lower`) after trimming the characters Python's
`str.strip` removes. The two agree on every code point assigned up to
Unicode 14 (Python 3.11's database); they differ only on the ~55 letters with case added in
Unicode 15-17, which no 2005-2009 listening log holds. Profile and metadata fields are
formatted once on the driver by the local code and joined in, so the text cannot drift.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from functools import reduce
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from utils.core import columns as C
from utils.core.civil_dates import SECONDS_PER_DAY
from utils.core.csv_text import NEEDS_QUOTING, header_line
from utils.core.spark import get_spark
from utils.data_processing.denormalize_fields import (
    COUNTRY_TEXT,
    DURATION_TEXT,
    GENDER_TEXT,
    GENRE_TEXT,
    REGISTERED_DAY_KEY,
    REGISTERED_TEXT,
    REGISTERED_YEAR,
    USER_FILE,
)
from utils.data_processing.plays_spark import ROW_ID, TS_S, TS_TEXT, account_lines, read_plays_spark
from utils.data_processing.track_rules import MAX_IN_SESSION_GAP_S

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, Observation, SparkSession

# What Python's str.strip() removes: every character for which str.isspace() is true.
PYTHON_WHITESPACE = "".join(chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace())
# The characters NEEDS_QUOTING matches (csv_text quotes a field holding any of them).
QUOTED_CHARACTERS = tuple(chr(c) for c in range(128) if re.search(NEEDS_QUOTING, chr(c)))
SPELLINGS = (C.ARTIST_NAME, C.TRACK_NAME, C.ARTIST_MBID, C.TRACK_MBID)
GAP = "gap"
PLAYS = "plays"


def spark_session(master: str | None) -> SparkSession:
    """The project's Spark session, with case mappings pinned to ICU (locale-independent)."""
    spark = get_spark(master)
    spark.conf.set("spark.sql.icu.caseMappings.enabled", "true")
    return spark


def name_key(name: Column) -> Column:
    """Spark twin of track_rules.name_key: strip Python's whitespace, then lower-case."""
    from pyspark.sql import functions as F

    return F.lower(F.trim(name, F.lit(PYTHON_WHITESPACE)))


def quote_minimal(value: Column) -> Column:
    """Spark twin of csv_text.quote_minimal (null becomes empty).

    Byte searches for the characters of NEEDS_QUOTING: a regular expression would decode
    every name to Java text first.
    """
    from pyspark.sql import functions as F

    text = F.coalesce(value, F.lit(""))
    quoted = F.concat(F.lit('"'), F.replace(text, F.lit('"'), F.lit('""')), F.lit('"'))
    needs_quoting = reduce(lambda a, b: a | b, [text.contains(c) for c in QUOTED_CHARACTERS])
    return F.when(needs_quoting, quoted).otherwise(text)


def with_keys(plays: DataFrame) -> DataFrame:
    """Plays with their artist and track keys."""
    return plays.withColumns({C.ARTIST_KEY: name_key(plays[C.ARTIST_NAME]),
                              C.TRACK_KEY: name_key(plays[C.TRACK_NAME])})


def with_in_session_gaps(plays: DataFrame) -> DataFrame:
    """Plays with `gap`: seconds to the same user's next play when 1 s..30 min, else null."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    order = Window.partitionBy(C.USER_ID).orderBy(F.col(TS_S), F.col(ROW_ID).desc())
    with_next = plays.withColumn(GAP, F.lead(TS_S).over(order) - F.col(TS_S))
    return with_next.withColumn(GAP, F.when((F.col(GAP) > 0) & (F.col(GAP) <= MAX_IN_SESSION_GAP_S),
                                            F.col(GAP)))


def spelling_counts(plays: DataFrame, partitions: int) -> DataFrame:
    """Plays counted per spelling (names and MBIDs, gap null) and, apart, per names and gap
    (MBIDs null), with keys, hashed by artist key.

    Everything the unique-tracks table holds follows from these counts, which are a fraction
    of the plays: the keys are computed once per row of counts, not once per play, and every
    later step groups by the artist key, so nothing after this shuffles again. A spelling
    counted once for all its gaps, and gaps counted without the MBIDs, make far fewer rows
    than every (spelling, gap).
    """
    from pyspark.sql import functions as F

    gap, none = F.col(GAP), F.lit(None).cast("string")
    spelling = F.struct(*[F.col(c) for c in SPELLINGS], F.lit(None).cast("long").alias(GAP))
    evidence = F.struct(C.ARTIST_NAME, C.TRACK_NAME, none.alias(C.ARTIST_MBID),
                        none.alias(C.TRACK_MBID), gap)
    # A play without a gap gives no gap evidence.
    rows = F.when(gap.isNull(), F.array(spelling)).otherwise(F.array(spelling, evidence))
    counts = (with_in_session_gaps(plays).select(F.explode(rows).alias("e")).select("e.*")
              .groupBy(*SPELLINGS, GAP).agg(F.count(F.lit(1)).alias(PLAYS)))
    return keyed_counts(counts, partitions)


def keyed_counts(counts: DataFrame, partitions: int) -> DataFrame:
    """Counts of spellings and gaps (SPELLINGS, GAP, PLAYS) with their keys, hashed by artist
    key: what `unique_tracks_of_counts` takes."""
    return with_keys(counts).repartition(partitions, C.ARTIST_KEY)


def _tallies(counts: DataFrame) -> DataFrame:
    """Plays per (artist key, track key, kind, value): kinds 0-3 count each spelling, kind 4
    each gap of the track, kind 5 each gap of the artist (track key null)."""
    from pyspark.sql import functions as F

    def entry(kind: int, track: Column | None, value: Column | None, gap: Column | None
              ) -> Column:
        return F.struct(F.lit(kind).alias("kind"),
                        (track if track is not None else F.lit(None).cast("string")).alias("track"),
                        (value if value is not None else F.lit(None).cast("string")).alias("value"),
                        (gap if gap is not None else F.lit(None).cast("long")).alias(GAP))

    track, gap = F.col(C.TRACK_KEY), F.col(GAP)
    spellings = [entry(k, track, F.col(c), None) for k, c in enumerate(SPELLINGS)]
    gaps = [entry(len(SPELLINGS), track, None, gap), entry(len(SPELLINGS) + 1, None, None, gap)]
    entries = F.when(gap.isNull(), F.array(*spellings)).otherwise(F.array(*gaps))
    long = counts.select(C.ARTIST_KEY, PLAYS, F.explode(entries).alias("e")).select(
        C.ARTIST_KEY, "e.*", PLAYS)
    # An unknown MBID is no spelling.
    known = (F.col("kind") >= len(SPELLINGS)) | F.col("value").isNotNull()
    return (long.where(known).groupBy(C.ARTIST_KEY, "track", "kind", "value", GAP)
            .agg(F.sum(PLAYS).alias(PLAYS)))


def unique_tracks_frame(plays: DataFrame, partitions: int) -> DataFrame:
    """Spark twin of tracks.unique_tracks_table (unsorted, unformatted), in one chain of steps."""
    return unique_tracks_of_counts(spelling_counts(plays, partitions))


def unique_tracks_of_counts(counts: DataFrame) -> DataFrame:
    """The unique-tracks table of counts of spellings and gaps (`keyed_counts`); counts of the
    same spelling or gap in several rows add up.

    The most frequent spelling is the first by (count descending, value in byte order: the
    local engine's code point order). A median is the mean of the values at the 0-based
    positions (n - 1) // 2 and n // 2 of the sorted gaps, found from running counts.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    kind, count, gap = F.col("kind"), F.col(PLAYS), F.col(GAP)
    spelling = kind < len(SPELLINGS)
    group = Window.partitionBy(C.ARTIST_KEY, "track", "kind")
    ordered = group.orderBy(F.when(spelling, -count).otherwise(gap), "value")
    ranked = _tallies(counts).select(
        "*", F.row_number().over(ordered).alias("rank"),
        (2 * F.sum(PLAYS).over(ordered.rowsBetween(Window.unboundedPreceding,
                                                   Window.currentRow))).alias("twice_upto"),
        F.sum(PLAYS).over(group).alias("n"))
    twice_upto, n = F.col("twice_upto"), F.col("n")
    first = [F.max(F.when((kind == k) & (F.col("rank") == 1), F.col("value"))).alias(c)
             for k, c in enumerate(SPELLINGS)]
    lower = F.min(F.when(~spelling & (twice_upto >= n), gap))
    upper = F.min(F.when(~spelling & (twice_upto > n), gap))
    per_key = ranked.groupBy(C.ARTIST_KEY, "track").agg(
        F.sum(F.when(kind == 0, count)).alias(C.PLAY_COUNT),
        F.coalesce(F.sum(F.when(kind == len(SPELLINGS), count)), F.lit(0)).alias(C.GAP_COUNT),
        *first, ((lower + upper) / 2.0).alias("median"))
    artist_median = F.max(F.when(F.col("track").isNull(), F.col("median"))).over(
        Window.partitionBy(C.ARTIST_KEY))
    return (per_key.select("*", artist_median.alias(C.ARTIST_GAP_MEDIAN_S))
            .where(F.col("track").isNotNull())
            .withColumnsRenamed({"track": C.TRACK_KEY, "median": C.GAP_MEDIAN_S})
            .select(*C.UNIQUE_TRACKS_COLUMNS))


def shuffle_partitions(spark: SparkSession) -> int:
    """The session's number of shuffle partitions."""
    return int(spark.conf.get("spark.sql.shuffle.partitions"))


def spark_unique_tracks(plays_path: Path, rejects_dir: Path, spark_master: str | None
                        ) -> tuple[pa.Table, dict[str, Any]]:
    """Stage tracks on Spark: the unique-tracks table (collected) and the line accounting."""
    spark = spark_session(spark_master)
    plays = read_plays_spark(spark, plays_path)
    table = unique_tracks_frame(plays.kept, shuffle_partitions(spark)).toArrow()
    return table, account_lines(spark, plays, rejects_dir)


def _play_years(stamp: Column, reg_year: Column, reg_key: Column) -> Column:
    """Spark twin of denormalize_fields.whole_years, from the play's timestamp text."""
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
    """Plays joined with the driver-built profile and metadata lookups (left joins).

    Both lookups are broadcast: the plays are then joined where they are read, instead of
    being shuffled by track key only to be shuffled again by user for writing.
    """
    from pyspark.sql import functions as F

    people_df = spark.createDataFrame(people).withColumn("has_profile", F.lit(True))
    metadata_df = spark.createDataFrame(metadata)
    return (with_keys(plays)
            .join(F.broadcast(metadata_df), [C.ARTIST_KEY, C.TRACK_KEY], "left")
            .join(F.broadcast(people_df), C.USER_ID, "left"))


def observe_join_counts(joined: DataFrame) -> tuple[DataFrame, Observation]:
    """The joined plays, counting rows and what found no profile or metadata as they pass."""
    from pyspark.sql import Observation
    from pyspark.sql import functions as F

    observation = Observation("join_counts")
    observed = joined.observe(
        observation, F.count(F.lit(1)).alias("rows_out"),
        F.count_if(F.col("has_profile").isNull()).alias("plays_without_profile"),
        F.count_if(F.col(DURATION_TEXT).isNull()).alias("plays_without_metadata"))
    return observed, observation


def write_user_texts(joined: DataFrame, out_dir: Path) -> list[str]:
    """Write one text file per user (header, then plays in order) into out_dir; the users.

    The header is put before each user's first play: the plays are shuffled by user once,
    sorted, and written in that order. Spark writes user_id=X/part-*.txt into a staging
    folder beside out_dir (a user id could be any folder name inside it), which needs out_dir
    on a filesystem the executors see.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    header = header_line(C.USER_DIR_COLUMNS).decode("utf-8")
    lines = joined.select(C.USER_ID, TS_S, ROW_ID, play_line(joined).alias("value"))
    order = Window.partitionBy(C.USER_ID).orderBy(TS_S, F.col(ROW_ID).desc())
    first = F.row_number().over(order) == 1
    value = F.when(first, F.concat(F.lit(header), F.col("value"))).otherwise(F.col("value"))
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.spark-", dir=out_dir.parent))
    try:
        (lines.select(C.USER_ID, TS_S, ROW_ID, value.alias("value"))
         .sortWithinPartitions(C.USER_ID, TS_S, F.col(ROW_ID).desc())
         .select(C.USER_ID, "value")
         .write.mode("overwrite").partitionBy(C.USER_ID).option("lineSep", "\n")
         .text(os.path.abspath(staging)))
        return move_user_files(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def move_user_files(staging: Path, out_dir: Path) -> list[str]:
    """Move staging/user_id=X/part-*.txt to out_dir/X/part-00000.csv; the users moved."""
    prefix = f"{C.USER_ID}="
    moved = []
    for folder in staging.iterdir():
        if not folder.name.startswith(prefix):
            continue
        parts = [p for p in folder.iterdir() if p.name.startswith("part-")]
        if len(parts) != 1:
            raise AssertionError(f"{folder}: expected one part file per user, found {len(parts)}")
        target = out_dir / folder.name.removeprefix(prefix)
        target.mkdir()
        os.replace(parts[0], target / USER_FILE)
        moved.append(target.name)
    return moved


def spark_denormalize(plays_path: Path, rejects_dir: Path, people: pa.Table,
                      metadata: pa.Table, out_dir: Path, spark_master: str | None
                      ) -> dict[str, Any]:
    """Stage denormalize on Spark: write every user's file into out_dir; the manifest counts."""
    spark = spark_session(spark_master)
    plays = read_plays_spark(spark, plays_path)
    joined, observation = observe_join_counts(join_plays(spark, plays.kept, people, metadata))
    users = write_user_texts(joined, out_dir)
    counts = account_lines(spark, plays, rejects_dir)
    # A user without a profile is one whose id the profile lookup does not hold.
    known = set(people[C.USER_ID].to_pylist())
    counts |= {k: int(v) for k, v in observation.get.items()}
    return counts | {"users": len(users),
                     "users_without_profile": sum(u not in known for u in users)}
