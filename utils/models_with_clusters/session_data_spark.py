"""The session-data stage's Spark engine: every play with its session row, split and vocabulary
ids, one file per user and split written where the plays are.

Spark numbers each play within its session's plays of the same track (a window over the plays,
already grouped by user) and looks the names up in the vocabularies (joins). Each user's rows of
one split then reach one Python worker, which writes the file with the very writer the local
engine uses (`final_dir.write_final_csv`), so the bytes cannot differ. The files are written by
the executors: WORK must be on a filesystem they share with the driver.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pyarrow as pa

from utils.baseline.session_table import SOURCE_ID
from utils.baseline.summaries_spark import PLAY_RANK
from utils.core import columns as C
from utils.core.spark import get_spark
from utils.models_with_clusters.final_dir import (
    ID,
    SPLIT_COUNTS,
    SPLIT_INDEX,
    UNKNOWN_ID,
    PlaySource,
    split_counts,
    write_final_csv,
)
from utils.models_with_clusters.split_plays_spark import rows_table, split_plays

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

TARGET = "_target"
COUNTS_SCHEMA = ", ".join([f"{SPLIT_INDEX} int", *[f"{name} long" for name in SPLIT_COUNTS]])


def with_times_played(plays: DataFrame) -> DataFrame:
    """Plays with the plays of the same track in the session so far, this one included."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    same_track = Window.partitionBy(SOURCE_ID, C.SESSION_ID, C.ARTIST_NAME, C.TRACK_NAME)
    return plays.withColumn(C.TIMES_PLAYED,
                            F.row_number().over(same_track.orderBy(PLAY_RANK)).cast("long"))


def id_table(vocab: pd.DataFrame, keys: list[str], name: str) -> pa.Table:
    """A vocabulary's key columns and its ids (renamed `name`), as Arrow for Spark."""
    table = pa.Table.from_pandas(vocab[[*keys, ID]], preserve_index=False)
    return table.rename_columns([*keys, name])


def with_vocab_ids(spark: SparkSession, plays: DataFrame, artists: pd.DataFrame,
                   tracks: pd.DataFrame) -> DataFrame:
    """Plays with artist and track names replaced by vocabulary ids (UNKNOWN_ID if unseen)."""
    from pyspark.sql import functions as F

    artist_ids = spark.createDataFrame(id_table(artists, [C.ARTIST_NAME], "_artist_id"))
    track_ids = spark.createDataFrame(id_table(tracks, [C.ARTIST_NAME, C.TRACK_NAME], "_track_id"))
    joined = (plays.join(artist_ids, C.ARTIST_NAME, "left")
              .join(track_ids, [C.ARTIST_NAME, C.TRACK_NAME], "left"))
    return joined.withColumns({
        C.ARTIST_NAME: F.coalesce(F.col("_artist_id"), F.lit(UNKNOWN_ID)).cast("long"),
        C.TRACK_NAME: F.coalesce(F.col("_track_id"), F.lit(UNKNOWN_ID)).cast("long"),
    }).drop("_artist_id", "_track_id")


def write_user_split(rows: pd.DataFrame) -> pd.DataFrame:
    """Write one user's rows of one split (a Python worker's group) to their TARGET file;
    return their SPLIT_COUNTS."""
    rows = rows.sort_values(PLAY_RANK, kind="stable", ignore_index=True)
    write_final_csv(rows, Path(rows[TARGET].iloc[0]))
    return pd.DataFrame([{SPLIT_INDEX: int(rows[SPLIT_INDEX].iloc[0]), **split_counts(rows)}])


def with_target(rows: DataFrame, out: dict[str, Path]) -> DataFrame:
    """Rows with the file each belongs to: out[split]/{source user id}.csv, an absolute path
    (the workers run elsewhere)."""
    from pyspark.sql import functions as F

    folders = F.array(*[F.lit(os.path.abspath(out[name]) + os.sep) for name in C.SPLITS])
    folder = F.element_at(folders, F.col(SPLIT_INDEX).cast("int") + 1)
    return rows.withColumn(TARGET, F.concat(folder, F.col(SOURCE_ID), F.lit(".csv")))


def spark_session_data(source: PlaySource, vocabs: dict[str, pd.DataFrame],
                       out: dict[str, Path], master: str | None
                       ) -> tuple[dict[str, dict[str, int]], int]:
    """Write every user's per-split files into `out` (split -> folder); (totals per split, plays).

    `vocabs` holds the artist and track vocabulary tables (id and name columns).
    """
    spark = get_spark(master)
    plays, plays_in = split_plays(spark, source)
    rows = with_vocab_ids(spark, with_times_played(plays), vocabs["artists"], vocabs["tracks"])
    written = with_target(rows, out).select(
        TARGET, PLAY_RANK, *C.FINAL_COLUMNS, SPLIT_INDEX).groupBy(TARGET).applyInPandas(
        write_user_split, COUNTS_SCHEMA)
    counts = rows_table(written)
    totals = counts.groupby(SPLIT_INDEX)[SPLIT_COUNTS].sum()
    return {name: {key: int(totals[key].get(index, 0)) for key in SPLIT_COUNTS}
            for index, name in enumerate(C.SPLITS)}, plays_in
