"""The Spark engine of denormalize: the local engine's code in Spark tasks, one per byte range
of the plays file that holds whole users (`plays_ranges`).

Each task reads its range with the local reader, joins it with the lookups the driver wrote
(Arrow IPC files, memory-mapped) and writes its users' files with the local engine's code into a
staging folder of its own: no play crosses the network and nothing is shuffled. The driver checks
that no user was met by two tasks, moves the users' folders into place and accounts for the
lines as the local reader does, so both engines write the same bytes. A file whose users are not
in blocks is denormalized again by the Spark SQL plan (`spark_stages.spark_denormalize`), which
assumes no layout. Executors write user_dir by path: WORK must be on a filesystem that every
node shares (README, Engines).
"""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from utils.core.arrow_memory import prefer_jemalloc
from utils.core.errors import SessionlenError
from utils.core.spark import get_spark
from utils.data_processing import plays_ranges as ranges
from utils.data_processing.denormalize_local import (
    ENCODED_COLUMNS,
    PLAY_COLUMNS,
    join_counts,
    prepare_fields,
    write_user_files,
)
from utils.data_processing.plays_spark import check_plays_head

# Hidden (user_files skips it) inside the stage's output folder, removed before it is published.
STAGING = ".ranges"
LOOKUPS = "lookups"
PEOPLE_FILE = "people.arrow"
METADATA_FILE = "metadata.arrow"

COUNTS = ("rows_out", "users_without_profile", "plays_without_profile", "plays_without_metadata")
RESULT_SCHEMA = pa.schema([*ranges.ACCOUNTING_SCHEMA, *[(n, pa.int64()) for n in COUNTS]])


def mapped_lookups(folder: str) -> tuple[pa.Table, pa.Table]:
    """The driver's profile and metadata lookups, memory-mapped (nothing is copied)."""
    def read(name: str) -> pa.Table:
        return pa.ipc.open_file(pa.memory_map(os.path.join(folder, name))).read_all()

    return read(PEOPLE_FILE), read(METADATA_FILE)


def denormalize_range(index: int, start: int, stop: int, plays_path: str, lookups: str,
                      staging: str) -> dict[str, Any]:
    """Read, join and write the users of one range into staging/{index}; its report."""
    folder = Path(staging) / f"{index:05d}"
    # A task run again (a retry) starts from an empty folder.
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    counts = dict.fromkeys(COUNTS, 0)
    read = ranges.read_range(plays_path, start, stop, PLAY_COLUMNS, ENCODED_COLUMNS)
    if read is None:
        return ranges.accounting(index) | counts
    plays, rejects, lines = read
    users: list[str] = []
    if plays.num_rows:
        fields = prepare_fields(plays, *mapped_lookups(lookups))
        del plays  # the fields hold every code and text the lines need
        counts["rows_out"] = write_user_files(folder, fields)
        counts |= {name: value for name, value in join_counts(fields).items() if name in COUNTS}
        users = fields.users.to_pylist()
    return ranges.accounting(index, lines, rejects, users) | counts


def denormalize_ranges(batches: Iterator[pa.RecordBatch], plays_path: str, lookups: str,
                       staging: str) -> Iterator[pa.RecordBatch]:
    """mapInArrow's function: one report per range row of the task's partition."""
    prefer_jemalloc()
    for batch in batches:
        for row in batch.to_pylist():
            try:
                report = denormalize_range(row["index"], row["start"], row["stop"],
                                           plays_path, lookups, staging)
            except (SessionlenError, OSError) as exc:
                report = ranges.accounting(row["index"], error=ranges.task_error(
                    exc, plays_path)) | dict.fromkeys(COUNTS, 0)
            yield pa.RecordBatch.from_pylist([report], schema=RESULT_SCHEMA)


def write_lookups(people: pa.Table, metadata: pa.Table, folder: Path) -> None:
    """The lookups as Arrow IPC files, for the tasks to memory-map."""
    folder.mkdir(parents=True)
    for table, name in ((people, PEOPLE_FILE), (metadata, METADATA_FILE)):
        with pa.OSFile(str(folder / name), "wb") as sink, \
                pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)


def run_ranges(spark_master: str | None, plays_path: Path, staging: Path) -> list[dict[str, Any]]:
    """Every range's report, in file order (one Spark job, one task per range)."""
    # Absolute: a Spark Connect server or a cluster does not share our working directory.
    task = functools.partial(denormalize_ranges, plays_path=os.path.abspath(plays_path),
                             lookups=os.path.abspath(staging / LOOKUPS),
                             staging=os.path.abspath(staging))
    frame = ranges.range_frame(get_spark(spark_master), plays_path)
    return (frame.mapInArrow(task, ranges.spark_ddl(RESULT_SCHEMA)).toArrow()
            .sort_by("index").to_pylist())


def spark_denormalize(plays_path: Path, rejects_dir: Path, people: pa.Table,
                      metadata: pa.Table, out_dir: Path, spark_master: str | None
                      ) -> dict[str, Any]:
    """Stage denormalize on Spark: write every user's file into out_dir; the manifest counts."""
    from utils.data_processing import spark_stages

    plays_path, out_dir = Path(plays_path), Path(out_dir)
    check_plays_head(plays_path)
    staging = out_dir / STAGING
    try:
        write_lookups(people, metadata, staging / LOOKUPS)
        reports = run_ranges(spark_master, plays_path, staging)
        ranges.raise_first_error(reports)
        blocks = ranges.users_in_blocks(reports)
        if blocks:
            for report in reports:
                for user in report["users"]:
                    os.replace(staging / f"{report['index']:05d}" / user, out_dir / user)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if not blocks:
        return spark_stages.spark_denormalize(plays_path, rejects_dir, people, metadata, out_dir,
                                              spark_master)
    return ranges.account_lines(plays_path, rejects_dir, reports) | {
        "users": sum(len(r["users"]) for r in reports),
        **{name: sum(r[name] for r in reports) for name in COUNTS}}
