"""The summarize stage's Spark engine: the local engine's sessions table, computed in Spark tasks.

user_dir is already partitioned by user and the session rule never looks across users, so
the job needs no shuffle of plays: the driver deals the users into groups of about equal size
on disk, and each Spark task reads its group's files with the local reader
(`read_user_plays`), applies `sessionize` and returns the group's sessions as Arrow batches
(`mapInArrow`). The driver puts the groups' sessions back in user order. Both engines thereby
run the same code on each user, so they agree to the bit, and a bad row gets the same one-line
error naming its file and line. Executors read user_dir by path: WORK must be on a filesystem
that every node shares (README, Engines).
"""

from __future__ import annotations

import functools
import heapq
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pyarrow as pa

from utils.baseline.session_table import PLAYS, SESSION_TABLE_COLUMNS, SOURCE_ID, sessionize
from utils.baseline.user_plays import plays_of, read_user_plays
from utils.core.arrow_memory import prefer_jemalloc
from utils.core.columns import COUNTRY, SESSION_ID
from utils.core.errors import SessionlenError
from utils.core.spark import get_spark, task_count

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

# Columns of a group row (never written).
_INDEXES = "_indexes"
_USERS = "_users"
_FILES = "_files"
# Columns of an error row: the failing user's position in user order, and the message.
_ERROR_INDEX = "_error_index"
_ERROR = "_error"

SESSION_SCHEMA = pa.schema([(name, pa.string() if name in (SOURCE_ID, COUNTRY) else pa.int64())
                            for name in SESSION_TABLE_COLUMNS])
OUTPUT_SCHEMA = SESSION_SCHEMA.append(pa.field(_ERROR_INDEX, pa.int64())).append(
    pa.field(_ERROR, pa.string()))
_SPARK_TYPES = {pa.string(): "string", pa.int64(): "bigint"}
OUTPUT_DDL = ", ".join(f"{field.name} {_SPARK_TYPES[field.type]}" for field in OUTPUT_SCHEMA)


def deal_users(sizes: list[int], groups: int) -> list[list[int]]:
    """Users (by position) dealt into `groups` groups of near-equal total size, largest user
    first to the lightest group; each group lists its users in order."""
    heap = [(0, group) for group in range(groups)]
    members: list[list[int]] = [[] for _ in range(groups)]
    for index in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        total, group = heapq.heappop(heap)
        members[group].append(index)
        heapq.heappush(heap, (total + sizes[index], group))
    return [sorted(group) for group in members if group]


def group_count(total_bytes: int, users: int) -> int:
    """How many tasks the job runs: `task_count`'s, at most one per user."""
    return max(1, min(users, task_count(total_bytes)))


def _error_batch(index: int, message: str) -> pa.RecordBatch:
    """One row carrying an error instead of a session."""
    columns = [pa.nulls(1, field.type) for field in SESSION_SCHEMA]
    return pa.RecordBatch.from_arrays(
        [*columns, pa.array([index], pa.int64()), pa.array([message], pa.string())],
        schema=OUTPUT_SCHEMA)


def group_sessions(indexes: list[int], users: list[str], files: list[list[str]],
                   gap_minutes: float) -> pa.RecordBatch:
    """The sessions of one group of users, or the error of its first user (in order) that
    cannot be read."""
    tables = []
    for index, user, paths in zip(indexes, users, files, strict=True):
        try:
            tables.append(read_user_plays(user, [Path(path) for path in paths]))
        except SessionlenError as exc:
            return _error_batch(index, str(exc))
        except OSError as exc:
            return _error_batch(index, f"{exc.filename or user}: cannot be read by a Spark "
                                       f"executor ({exc.strerror}): WORK must be on a "
                                       "filesystem that every node shares")
    frame = sessionize(plays_of(users, tables), gap_minutes)
    sessions = pa.RecordBatch.from_pandas(frame, schema=SESSION_SCHEMA, preserve_index=False)
    rows = sessions.num_rows
    return pa.RecordBatch.from_arrays(
        [*sessions.columns, pa.nulls(rows, pa.int64()), pa.nulls(rows, pa.string())],
        schema=OUTPUT_SCHEMA)


def sessions_in_task(batches: Iterator[pa.RecordBatch],
                     gap_minutes: float) -> Iterator[pa.RecordBatch]:
    """mapInArrow's function: the sessions of each group row of the task's partition."""
    prefer_jemalloc()
    for batch in batches:
        for group in batch.to_pylist():
            yield group_sessions(group[_INDEXES], group[_USERS], group[_FILES], gap_minutes)


def group_table(spark: SparkSession, users: dict[str, list[Path]]) -> DataFrame:
    """One row per group of users (positions, ids, absolute file paths), one group a partition."""
    from pyspark.sql import functions as F

    names = list(users)
    sizes = [sum(os.path.getsize(path) for path in users[name]) for name in names]
    groups = deal_users(sizes, group_count(sum(sizes), len(names)))
    rows = [{_INDEXES: group, _USERS: [names[i] for i in group],
             # Absolute: a Spark Connect server or a cluster does not share our working dir.
             _FILES: [[os.path.abspath(path) for path in users[names[i]]] for i in group]}
            for group in groups]
    schema = (f"array<struct<{_INDEXES}:array<int>,{_USERS}:array<string>,"
              f"{_FILES}:array<array<string>>>>")
    # One JSON literal, built in the JVM (no Python worker needed to create it); round-robin
    # from one partition puts each of the rows in a partition of its own.
    table = spark.range(0, 1, 1, 1).select(F.inline(F.from_json(F.lit(json.dumps(rows)), schema)))
    return table.repartition(len(rows))


def spark_sessions(users: dict[str, list[Path]], gap_minutes: float,
                   master: str | None = None) -> tuple[pd.DataFrame, int]:
    """The Spark engine: (sessions table, plays read), same contract as `local_sessions`."""
    if not any(users.values()):
        return pd.DataFrame({name: [] for name in SESSION_TABLE_COLUMNS}), 0
    groups = group_table(get_spark(master), users)
    task = functools.partial(sessions_in_task, gap_minutes=gap_minutes)
    table = groups.mapInArrow(task, OUTPUT_DDL).toArrow().to_pandas()
    errors = table.dropna(subset=[_ERROR])
    if len(errors):
        raise SessionlenError(errors.sort_values(_ERROR_INDEX)[_ERROR].iloc[0])
    # The local engine's order: users as given, each user's sessions by id.
    order = pd.Categorical(table[SOURCE_ID], categories=list(users)).codes
    table = table.assign(_order=order).sort_values(["_order", SESSION_ID], kind="stable",
                                                   ignore_index=True)
    sessions = table[SESSION_TABLE_COLUMNS]
    return sessions, int(sessions[PLAYS].sum())
