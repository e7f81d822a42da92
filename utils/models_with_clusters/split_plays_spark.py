"""Every user_dir play with its summary session and split, on Spark: what the Spark engines of
the vocab and session-data stages start from.

The plays are read and cut into sessions by the summarize stage's Spark code (the same rule,
order and arithmetic as the local engine). The sessions are checked on the driver against
summary_dir with the local engine's own check, then each play is joined with its session's
summary row, so it carries the very values (ids, profile codes, lengths) the baseline uses.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa

from utils.baseline.session_table import LENGTH_MS, PLAYS, SOURCE_ID
from utils.baseline.summaries_spark import (
    PLAY_RANK,
    TS_MS,
    collect,
    mark_sessions,
    raise_on_problems,
    read_plays,
    session_job_conf,
    session_rows,
)
from utils.baseline.user_plays import check_header
from utils.core import columns as C
from utils.models_with_clusters.final_dir import (
    FROM_SESSION,
    PlaySource,
    check_play_count,
    check_sessions_match,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

# The play columns the final_dir stages read besides time and duration.
NAME_COLUMNS = [C.ARTIST_NAME, C.TRACK_NAME]


def marked_plays(spark: SparkSession, source: PlaySource) -> tuple[DataFrame, list[str]]:
    """The plays of user_dir cut into sessions (summaries_spark.mark_sessions), with names."""
    # Absolute: a Spark Connect server or a cluster does not share our working directory.
    paths = [os.path.abspath(path) for files in source.users.values() for path in files]
    for path in paths:
        check_header(path)
    plays, uris = read_plays(spark, paths)
    return mark_sessions(plays, source.gap_minutes, keep=NAME_COLUMNS), uris


def check_sessions(marked: DataFrame, uris: list[str], source: PlaySource) -> int:
    """Fail unless every user's recomputed sessions are its summary sessions; the plays read."""
    table = collect(session_rows(marked))
    raise_on_problems(table, uris)
    table = table.sort_values([SOURCE_ID, C.SESSION_ID], kind="stable", ignore_index=True)
    rows = table.groupby(SOURCE_ID, sort=False).indices
    for user in source.users:
        mine = table.iloc[rows.get(user, np.zeros(0, np.int64))]
        check_sessions_match(mine[C.TIMESTAMP].to_numpy(np.int64),
                             mine[LENGTH_MS].to_numpy(np.float64) / 1000.0,
                             source.user_sessions(source.user_codes[user]),
                             str(source.user_dir / user))
    plays = int(table[PLAYS].sum())
    check_play_count(source, plays)
    return plays


def session_values(spark: SparkSession, source: PlaySource) -> DataFrame:
    """The summary sessions keyed by source user id and session id, with the final_dir names."""
    sources = {code: user for user, code in source.user_codes.items()}
    sessions = source.sessions
    table = pa.table({
        SOURCE_ID: pa.array([sources[code] for code in sessions[C.USER_ID].to_numpy()],
                            pa.string()),
        "_session": pa.array(sessions[C.SESSION_ID].to_numpy(np.int64)),
        **{final: pa.array(sessions[name].to_numpy()) for final, name in FROM_SESSION.items()},
    })
    return spark.createDataFrame(table)


def split_plays(spark: SparkSession, source: PlaySource) -> tuple[DataFrame, int]:
    """(every play with its session's FROM_SESSION values, its time, duration, names and rank;
    the number of plays), after checking the sessions against summary_dir."""
    from pyspark.sql import functions as F

    marked, uris = marked_plays(spark, source)
    plays = check_sessions(marked, uris, source)
    played = marked.select(
        F.col(C.USER_ID).alias(SOURCE_ID), F.col(C.SESSION_ID).alias("_session"), PLAY_RANK,
        F.col(TS_MS).alias(C.CURRENT_TIMESTAMP), F.col(C.DURATION).alias(C.TRACK_DURATION),
        *[F.coalesce(F.col(name), F.lit("")).alias(name) for name in NAME_COLUMNS],
    )
    joined = played.join(F.broadcast(session_values(spark, source)), [SOURCE_ID, "_session"])
    return joined.drop("_session"), plays


def rows_table(frame: DataFrame) -> pd.DataFrame:
    """A small Spark result on the driver, read under the sessions job's settings."""
    with session_job_conf(frame.sparkSession):
        return frame.toArrow().to_pandas()
