"""The vocab stage's Spark engine: the train plays counted per (artist, track, country code).

Spark reduces every play to these counts, a table of at most one row per distinct track and
country of its listeners; the driver then fits the vocabularies from it with the local code
(`utils.models_with_clusters.vocab`), so both engines write the same files.
"""

from __future__ import annotations

import pandas as pd

from utils.core import columns as C
from utils.core.spark import get_spark
from utils.models_with_clusters.final_dir import COUNT, SPLIT_INDEX, PlaySource
from utils.models_with_clusters.split_plays_spark import rows_table, split_plays


def spark_train_counts(source: PlaySource, master: str | None) -> tuple[pd.DataFrame, int]:
    """(train plays per artist name, track name and country code; all plays read)."""
    from pyspark.sql import functions as F

    plays, plays_in = split_plays(get_spark(master), source)
    train = plays.where(F.col(SPLIT_INDEX) == C.SPLITS.index("train"))
    counts = train.groupBy(C.ARTIST_NAME, C.TRACK_NAME, C.COUNTRY).agg(
        F.count(F.lit(1)).alias(COUNT))
    return rows_table(counts), plays_in
