"""The Spark engine of the tracks stage: the local engine's reader and gap rule in Spark tasks,
one per byte range of the plays file that holds whole users (`plays_ranges`); Spark adds up
their counts by key.

Each task reads its range with the local reader and counts its plays per spelling (names and
MBIDs) and, apart, per names and in-session gap (the gap rule needs each user's plays in time
order, which a range of whole users has): the counts `spark_stages.spelling_counts` makes of
every play, made for one range. Spark hashes the counts of all ranges by artist key and picks
each track's spellings and medians with the SQL plan's own steps
(`spark_stages.unique_tracks_of_counts`), which add up the counts of a spelling or gap met in
several ranges. The plays never reach the JVM: only the counts do. A file whose users are not
in blocks is read again by the Spark SQL plan (`spark_stages.spark_unique_tracks`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from utils.core import columns as C
from utils.core.arrow_memory import prefer_jemalloc
from utils.core.errors import SessionlenError
from utils.data_processing import plays_ranges as ranges
from utils.data_processing import spark_stages
from utils.data_processing.play_evidence import (
    encode,
    in_session_gaps,
    play_order,
    timestamp_seconds,
)
from utils.data_processing.plays_spark import check_plays_head
from utils.data_processing.spark_stages import GAP, PLAYS, SPELLINGS

COLUMNS = (C.USER_ID, C.TIMESTAMP, *SPELLINGS)
COUNT_SCHEMA = pa.schema([*[(name, pa.string()) for name in SPELLINGS], (GAP, pa.int64()),
                          (PLAYS, pa.int64())])
# A count row has no index; a report row (one per range) has no counts.
RESULT_SCHEMA = pa.schema([*COUNT_SCHEMA, *ranges.ACCOUNTING_SCHEMA])
REPORTS = "reports"


def distinct_rows(*codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first row, row count) of each distinct combination of the codes (-1 allowed)."""
    key = np.zeros(len(codes[0]), dtype=np.int64)
    for column in codes:
        # Factorizing after each column keeps the combined key small.
        key, _ = pd.factorize(key * (int(column.max(initial=-1)) + 2) + (column + 1))
    _, first, counts = np.unique(key, return_index=True, return_counts=True)
    return first, counts


def _values(values: pa.Array, codes: np.ndarray) -> pa.Array:
    """values[codes] as strings, null where the code is -1."""
    return values.take(pa.array(codes, mask=codes < 0)).cast(pa.string())


def range_counts(plays: pa.Table) -> pa.Table:
    """Plays of whole users counted per spelling (GAP null) and per names and in-session gap
    (MBIDs null), as COUNT_SCHEMA rows."""
    encoded = [encode(plays[name]) for name in SPELLINGS]
    codes = [column_codes for column_codes, _ in encoded]
    first, counts = distinct_rows(*codes)
    spellings = pa.table(
        [*[_values(values, column_codes[first]) for column_codes, values in encoded],
         pa.nulls(len(first), pa.int64()), pa.array(counts, pa.int64())], schema=COUNT_SCHEMA)
    user_codes, _ = encode(plays[C.USER_ID])
    ts_s = timestamp_seconds(plays)
    rows, gaps = in_session_gaps(play_order(user_codes, ts_s), user_codes, ts_s)
    artist, track = (codes[SPELLINGS.index(name)][rows]
                     for name in (C.ARTIST_NAME, C.TRACK_NAME))
    first, counts = distinct_rows(artist, track, gaps)
    names = [encoded[SPELLINGS.index(name)][1] for name in (C.ARTIST_NAME, C.TRACK_NAME)]
    evidence = pa.table(
        [_values(names[0], artist[first]), _values(names[1], track[first]),
         pa.nulls(len(first), pa.string()), pa.nulls(len(first), pa.string()),
         pa.array(gaps[first], pa.int64()), pa.array(counts, pa.int64())], schema=COUNT_SCHEMA)
    return pa.concat_tables([spellings, evidence])


def count_range(index: int, start: int, stop: int, plays_path: str
                ) -> tuple[pa.Table | None, dict[str, Any]]:
    """The counts of one range (None when it has no play) and its report."""
    read = ranges.read_range(plays_path, start, stop, COLUMNS)
    if read is None:
        return None, ranges.accounting(index)
    plays, rejects, lines = read
    users = pc.unique(plays[C.USER_ID]).to_pylist()
    counts = range_counts(plays) if plays.num_rows else None
    return counts, ranges.accounting(index, lines, rejects, users)


def count_rows(counts: pa.Table) -> Iterator[pa.RecordBatch]:
    """Count rows in RESULT_SCHEMA (no report)."""
    nulls = [pa.nulls(counts.num_rows, field.type) for field in ranges.ACCOUNTING_SCHEMA]
    yield from pa.table([*counts.columns, *nulls], schema=RESULT_SCHEMA).to_batches(
        max_chunksize=1 << 16)


def report_row(report: dict[str, Any]) -> pa.RecordBatch:
    """A range's report in RESULT_SCHEMA (no counts)."""
    return pa.RecordBatch.from_pylist([{**dict.fromkeys(COUNT_SCHEMA.names), **report}],
                                      schema=RESULT_SCHEMA)


def count_ranges(batches: Iterator[pa.RecordBatch], plays_path: str) -> Iterator[pa.RecordBatch]:
    """mapInArrow's function: the count rows of each range row of the partition, then its
    report row."""
    prefer_jemalloc()
    for batch in batches:
        for row in batch.to_pylist():
            try:
                counts, report = count_range(row["index"], row["start"], row["stop"],
                                             plays_path)
            except (SessionlenError, OSError) as exc:
                counts, report = None, ranges.accounting(
                    row["index"], error=ranges.task_error(exc, plays_path))
            if counts is not None:
                yield from count_rows(counts)
            yield report_row(report)


def spark_unique_tracks(plays_path: Path, rejects_dir: Path, spark_master: str | None
                        ) -> tuple[pa.Table, dict[str, Any]]:
    """Stage tracks on Spark: the unique-tracks table (collected) and the line accounting."""
    from pyspark.sql import Observation
    from pyspark.sql import functions as F

    plays_path = Path(plays_path)
    check_plays_head(plays_path)
    spark = spark_stages.spark_session(spark_master)
    # Absolute: a Spark Connect server or a cluster does not share our working directory.
    task = functools.partial(count_ranges, plays_path=os.path.abspath(plays_path))
    rows = ranges.range_frame(spark, plays_path).mapInArrow(task, ranges.spark_ddl(RESULT_SCHEMA))
    observation = Observation("plays_ranges")
    report_row = F.struct(*ranges.ACCOUNTING_SCHEMA.names)
    observed = rows.observe(observation, F.collect_list(
        F.when(F.col("index").isNotNull(), report_row)).alias(REPORTS))
    counts = observed.where(F.col("index").isNull()).select(*COUNT_SCHEMA.names)
    table = spark_stages.unique_tracks_of_counts(spark_stages.keyed_counts(
        counts, spark_stages.shuffle_partitions(spark))).toArrow()
    reports = sorted((row.asDict(recursive=True) for row in observation.get[REPORTS]),
                     key=lambda report: report["index"])
    ranges.raise_first_error(reports)
    if not ranges.users_in_blocks(reports):
        return spark_stages.spark_unique_tracks(plays_path, rejects_dir, spark_master)
    return table, ranges.account_lines(plays_path, rejects_dir, reports)
