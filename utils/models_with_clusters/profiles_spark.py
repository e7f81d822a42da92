"""The profiles stage's Spark engine: the train plays of final_dir reduced to per-user parts.

Spark reads every train file and reduces the plays to what a profile is made of: the latest
play's profile fields, the most played artist and track ids, the number of plays and one length
per session. Means and medians are then taken on the driver by the local code
(`profiles.profiles_of`) from these few rows, so both engines write the same digits.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa

from utils.baseline.summaries_spark import read_failure
from utils.core import columns as C
from utils.core.spark import get_spark
from utils.models_with_clusters.final_dir import FINAL_TYPES, UNKNOWN_ID, ProfileParts

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

PROFILE_FIELDS = [C.GENDER, C.AGE, C.COUNTRY, C.REGISTERED]
PLAYS = "plays"
USER_COLUMNS = [C.USER_ID, *PROFILE_FIELDS, PLAYS, C.ARTIST_NAME, C.TRACK_NAME]


def read_train(spark: SparkSession, paths: list[str]) -> DataFrame:
    """The train plays of final_dir, typed as the local reader types them."""
    from pyspark.sql.types import DoubleType, LongType, StructField, StructType

    schema = StructType([
        StructField(name, LongType() if pa.types.is_integer(kind) else DoubleType())
        for name, kind in FINAL_TYPES.items()])
    return spark.read.schema(schema).option("header", True).option("mode", "FAILFAST").csv(paths)


def top_ids(train: DataFrame, column: str) -> DataFrame:
    """Each user's most played id: known ids first, then most plays, then the smaller id."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    counts = train.groupBy(C.USER_ID, column).agg(F.count(F.lit(1)).alias(PLAYS))
    order = Window.partitionBy(C.USER_ID).orderBy(
        (F.col(column) == UNKNOWN_ID).asc(), F.col(PLAYS).desc(), F.col(column).asc())
    return (counts.withColumn("_rank", F.row_number().over(order))
            .where(F.col("_rank") == 1).select(C.USER_ID, column))


def per_user(train: DataFrame) -> DataFrame:
    """One row per user: the latest play's profile fields, plays and the two top ids.

    Plays tied at the latest time are in one session, so they share the profile fields.
    """
    from pyspark.sql import functions as F

    latest = F.max_by(F.struct(*PROFILE_FIELDS), F.col(C.CURRENT_TIMESTAMP))
    users = train.groupBy(C.USER_ID).agg(latest.alias("_latest"),
                                          F.count(F.lit(1)).alias(PLAYS))
    return (users.select(C.USER_ID, "_latest.*", PLAYS)
            .join(top_ids(train, C.ARTIST_NAME), C.USER_ID)
            .join(top_ids(train, C.TRACK_NAME), C.USER_ID)
            .orderBy(C.USER_ID))


def session_lengths(train: DataFrame) -> DataFrame:
    """One row per train session: user id and session_length, in user and session order."""
    return (train.select(C.USER_ID, C.SESSION_ID, C.SESSION_LENGTH).dropDuplicates(
        [C.USER_ID, C.SESSION_ID]).orderBy(C.USER_ID, C.SESSION_ID)
        .select(C.USER_ID, C.SESSION_LENGTH))


def to_pandas(frame: DataFrame) -> pd.DataFrame:
    """A small result on the driver; a malformed train file becomes a one-line error."""
    try:
        return frame.toArrow().to_pandas()
    except Exception as exc:  # the JVM's failure arrives as a py4j or gRPC error
        failure = read_failure(exc)
        if failure is None:
            raise
        raise failure from None


def spark_profile_parts(train_dir: Path, master: str | None) -> ProfileParts:
    """Spark engine: the profile parts of every user of final_dir/train."""
    paths = sorted(os.path.abspath(p) for p in Path(train_dir).glob("*.csv"))
    if paths:
        train = read_train(get_spark(master), paths)
        users, lengths = to_pandas(per_user(train)), to_pandas(session_lengths(train))
    else:
        # No user has train plays: Spark cannot read an empty list of files.
        users = pd.DataFrame({name: np.zeros(0, np.int64) for name in USER_COLUMNS})
        lengths = pd.DataFrame({C.USER_ID: np.zeros(0, np.int64),
                                C.SESSION_LENGTH: np.zeros(0, np.float64)})
    users = users.set_index(C.USER_ID)
    return ProfileParts(
        latest=users[PROFILE_FIELDS], top_artist=users[C.ARTIST_NAME],
        top_track=users[C.TRACK_NAME], rows=users[PLAYS],
        lengths=lengths,
    )
