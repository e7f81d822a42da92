"""The Spark engine of denormalize: the local engine's code in Spark tasks, each on a byte range
of the plays file that holds whole users.

A Last.fm plays file holds each user's plays as one block of lines. The driver cuts the file
into ranges of about equal size; each task moves both ends of its range forward to the next line
whose user field differs from the line before (`owned_start`: the same rule on both sides of a
cut, so every line belongs to exactly one task), reads its lines with the local reader, joins
them with the lookups the driver wrote (Arrow IPC files, memory-mapped) and writes its users'
files with the local engine's code into a staging folder of its own. No play crosses the network
and nothing is shuffled. The driver then checks that no user was met by two tasks, moves the
users' folders into place, numbers the rejected lines from the lines of the ranges before them
and writes the rejects file as the local reader does: both engines write the same bytes.

A file whose users are not in blocks (a user met by two tasks) is denormalized again by the
Spark SQL plan (`spark_stages.spark_denormalize`), which assumes no layout. Executors read the
plays file and write user_dir by path: the raw data and WORK must be on a filesystem that every
node shares (README, Engines).
"""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa

from utils.core.arrow_memory import prefer_jemalloc
from utils.core.errors import SessionlenError
from utils.core.spark import get_spark
from utils.data_processing import plays_reader as pr
from utils.data_processing import raw_lines as rl
from utils.data_processing.denormalize_local import (
    ENCODED_COLUMNS,
    PLAY_COLUMNS,
    join_counts,
    prepare_fields,
    write_user_files,
)
from utils.data_processing.plays_spark import check_plays_head

# About this many bytes of the plays file per task, as Spark's own file splits
# (spark.sql.files.maxPartitionBytes); at least this many tasks, so that the cores stay busy
# to the end of the job.
RANGE_BYTES = 128 << 20
MIN_RANGES = 16
# Hidden (user_files skips it) inside the stage's output folder, removed before it is published.
STAGING = ".ranges"
LOOKUPS = "lookups"
PEOPLE_FILE = "people.arrow"
METADATA_FILE = "metadata.arrow"
# How far back to look at a time for the start of the line before a cut.
BACK_STEP = 1 << 16

COUNTS = ("rows_out", "users_without_profile", "plays_without_profile", "plays_without_metadata")
RESULT_SCHEMA = pa.schema([
    ("index", pa.int64()), ("lines", pa.int64()), *[(name, pa.int64()) for name in COUNTS],
    ("users", pa.list_(pa.string())), ("reject_lines", pa.list_(pa.int64())),
    ("reject_reasons", pa.list_(pa.string())), ("reject_texts", pa.list_(pa.string())),
    ("error", pa.string()),
])
_SPARK_TYPES = {pa.int64(): "bigint", pa.string(): "string",
                pa.list_(pa.int64()): "array<bigint>", pa.list_(pa.string()): "array<string>"}
RESULT_DDL = ", ".join(f"{f.name} {_SPARK_TYPES[f.type]}" for f in RESULT_SCHEMA)


def range_count(size: int) -> int:
    """How many ranges a plays file of `size` bytes is cut into."""
    return max(MIN_RANGES, -(-size // RANGE_BYTES))


def _line_start(fh: IO[bytes], index: int) -> int:
    """Where the line holding byte `index` of the file starts."""
    end = index
    while end > 0:
        begin = max(0, end - BACK_STEP)
        fh.seek(begin)
        cut = fh.read(end - begin).rfind(b"\n")
        if cut >= 0:
            return begin + cut + 1
        end = begin
    return 0


def _user_field(line: bytes) -> bytes:
    """A raw line's bytes before its first tab (its end of line dropped)."""
    return line.rstrip(b"\n").split(b"\t", 1)[0]


def owned_start(fh: IO[bytes], position: int) -> int:
    """The first line start at or after `position` whose user field differs from the line
    before it, or the file's end: where the task whose range starts at `position` begins.

    A line's user field is its bytes before the first tab whether or not the line is valid, so
    a cut falls between two blocks of lines and the tasks on both sides of it agree on it.
    """
    if position <= 0:
        return 0
    fh.seek(_line_start(fh, position - 1))
    previous = fh.readline()
    at = fh.tell()
    user = _user_field(previous)
    for line in iter(fh.readline, b""):
        if _user_field(line) != user:
            return at
        at += len(line)
    return at


def _empty_result(index: int, lines: int = 0) -> dict[str, Any]:
    """A task's result before anything is counted."""
    return {"index": index, "lines": lines, **dict.fromkeys(COUNTS, 0), "users": [],
            "reject_lines": [], "reject_reasons": [], "reject_texts": [], "error": None}


def read_lookups(folder: str) -> tuple[pa.Table, pa.Table]:
    """The driver's profile and metadata lookups, memory-mapped (nothing is copied)."""
    def read(name: str) -> pa.Table:
        return pa.ipc.open_file(pa.memory_map(os.path.join(folder, name))).read_all()

    return read(PEOPLE_FILE), read(METADATA_FILE)


def denormalize_range(index: int, start: int, stop: int, plays_path: str, lookups: str,
                      staging: str) -> dict[str, Any]:
    """Read, join and write the users of one range into staging/{index}; its counts."""
    folder = Path(staging) / f"{index:05d}"
    # A task run again (a retry) starts from an empty folder.
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    with open(plays_path, "rb") as fh:
        first, end = owned_start(fh, start), owned_start(fh, stop)
    read = pr.read_plays_range(Path(plays_path), first, end, PLAY_COLUMNS, ENCODED_COLUMNS)
    if read is None:
        return _empty_result(index)
    plays, rejects, lines = read
    result = _empty_result(index, lines) | {
        "reject_lines": rejects.line_numbers.tolist(), "reject_reasons": rejects.reasons,
        "reject_texts": rejects.lines}
    if not plays.num_rows:
        return result
    fields = prepare_fields(plays, *read_lookups(lookups))
    del plays  # the fields hold every code and text the lines need
    rows_out = write_user_files(folder, fields)
    counts = join_counts(fields)
    return result | {"rows_out": rows_out, "users": fields.users.to_pylist(),
                     **{name: counts[name] for name in COUNTS[1:]}}


def denormalize_ranges(batches: Iterator[pa.RecordBatch], plays_path: str, lookups: str,
                       staging: str) -> Iterator[pa.RecordBatch]:
    """mapInArrow's function: one result row per range row of the task's partition."""
    prefer_jemalloc()
    for batch in batches:
        for row in batch.to_pylist():
            try:
                result = denormalize_range(row["index"], row["start"], row["stop"],
                                           plays_path, lookups, staging)
            except SessionlenError as exc:
                result = _empty_result(row["index"]) | {"error": str(exc)}
            except OSError as exc:
                result = _empty_result(row["index"]) | {"error": (
                    f"{exc.filename or plays_path}: cannot be used by a Spark executor "
                    f"({exc.strerror}): the raw data and WORK must be on a filesystem that "
                    "every node shares")}
            yield pa.RecordBatch.from_pylist([result], schema=RESULT_SCHEMA)


def write_lookups(people: pa.Table, metadata: pa.Table, folder: Path) -> None:
    """The lookups as Arrow IPC files, for the tasks to memory-map."""
    folder.mkdir(parents=True)
    for table, name in ((people, PEOPLE_FILE), (metadata, METADATA_FILE)):
        with pa.OSFile(str(folder / name), "wb") as sink, \
                pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)


def run_ranges(spark_master: str | None, plays_path: Path, staging: Path) -> list[dict[str, Any]]:
    """Every range's result, in file order (one Spark job, one task per range)."""
    from pyspark.sql import functions as F

    size = plays_path.stat().st_size
    n = range_count(size)
    ranges = get_spark(spark_master).range(0, n, 1, n).select(
        F.col("id").alias("index"), F.expr(f"id * {size} div {n}").alias("start"),
        F.expr(f"(id + 1) * {size} div {n}").alias("stop"))
    # Absolute: a Spark Connect server or a cluster does not share our working directory.
    task = functools.partial(denormalize_ranges, plays_path=os.path.abspath(plays_path),
                             lookups=os.path.abspath(staging / LOOKUPS),
                             staging=os.path.abspath(staging))
    return ranges.mapInArrow(task, RESULT_DDL).toArrow().sort_by("index").to_pylist()


def numbered_rejects(results: list[dict[str, Any]]) -> rl.Rejects:
    """The ranges' rejected lines numbered in the whole file (ranges in file order)."""
    offsets = np.cumsum([0] + [r["lines"] for r in results[:-1]], dtype=np.int64)
    return rl.Rejects(
        np.concatenate([np.asarray(r["reject_lines"], dtype=np.int64) + offset
                        for r, offset in zip(results, offsets, strict=True)])
        if results else np.zeros(0, np.int64),
        [reason for r in results for reason in r["reject_reasons"]],
        [text for r in results for text in r["reject_texts"]])


def spark_denormalize(plays_path: Path, rejects_dir: Path, people: pa.Table,
                      metadata: pa.Table, out_dir: Path, spark_master: str | None
                      ) -> dict[str, Any]:
    """Stage denormalize on Spark: write every user's file into out_dir; the manifest counts."""
    from utils.data_processing import spark_stages

    plays_path = Path(plays_path)
    check_plays_head(plays_path)
    staging = Path(out_dir) / STAGING
    try:
        write_lookups(people, metadata, staging / LOOKUPS)
        results = run_ranges(spark_master, plays_path, staging)
        errors = [r["error"] for r in results if r["error"]]
        if errors:
            raise SessionlenError(errors[0])
        met = [user for r in results for user in r["users"]]
        blocks = len(set(met)) == len(met)
        if blocks:
            for r in results:
                for user in r["users"]:
                    os.replace(staging / f"{r['index']:05d}" / user, Path(out_dir) / user)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if not blocks:
        return spark_stages.spark_denormalize(plays_path, rejects_dir, people, metadata, out_dir,
                                              spark_master)
    rejects = numbered_rejects(results)
    rows_in = sum(r["lines"] for r in results)
    rl.check_not_empty(plays_path, "plays", pr.PLAYS_EXPECTED, rows_in)
    rl.check_mostly_valid(plays_path, "plays", pr.PLAYS_EXPECTED, rows_in, rejects)
    target = rl.write_rejects(plays_path, rejects_dir, rejects)
    return {"rows_in": rows_in, "rows_rejected": len(rejects.line_numbers),
            "rejects_path": str(target) if target else None, "users": len(met),
            **{name: sum(r[name] for r in results) for name in COUNTS}}
