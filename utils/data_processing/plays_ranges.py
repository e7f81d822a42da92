"""The plays file cut into byte ranges that hold whole users, for Spark tasks that run the local
engine's code on them (`denormalize_spark`, `tracks_spark`).

A Last.fm plays file holds each user's plays as one block of lines. The driver cuts the file into
ranges of about equal size; each task moves both ends of its range forward to the next line
whose user field differs from the line before (`owned_start`: the same rule on both sides of a
cut, so every line belongs to exactly one task) and reads its lines with the local reader. Each
task reports its lines, its rejected lines (numbered from its first line) and the users it met;
the driver numbers the rejects in the whole file from the lines of the ranges before them,
refuses a mostly malformed file and writes the rejects file as the local reader does. A file
whose users are not in blocks (a user met by two tasks) needs a plan that assumes no layout.
Executors read the plays file by path: the raw data must be on a filesystem every node shares.
"""

from __future__ import annotations

from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from utils.core.errors import SessionlenError
from utils.core.spark import task_count
from utils.data_processing import plays_reader as pr
from utils.data_processing import raw_lines as rl

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

# How far back to look at a time for the start of the line before a cut.
BACK_STEP = 1 << 16

# What every task reports of its range, beside its own results.
ACCOUNTING_SCHEMA = pa.schema([
    ("index", pa.int64()), ("lines", pa.int64()), ("users", pa.list_(pa.string())),
    ("reject_lines", pa.list_(pa.int64())), ("reject_reasons", pa.list_(pa.string())),
    ("reject_texts", pa.list_(pa.string())), ("error", pa.string()),
])
SPARK_TYPES = {pa.int64(): "bigint", pa.string(): "string",
               pa.list_(pa.int64()): "array<bigint>", pa.list_(pa.string()): "array<string>"}


def spark_ddl(schema: pa.Schema) -> str:
    """The Spark DDL of an Arrow schema of the types above."""
    return ", ".join(f"{field.name} {SPARK_TYPES[field.type]}" for field in schema)


def range_frame(spark: SparkSession, plays_path: Path) -> DataFrame:
    """One row per range of the file (index, nominal start, nominal stop), one per partition."""
    from pyspark.sql import functions as F

    size = Path(plays_path).stat().st_size
    n = task_count(size)
    return spark.range(0, n, 1, n).select(
        F.col("id").alias("index"), F.expr(f"id * {size} div {n}").alias("start"),
        F.expr(f"(id + 1) * {size} div {n}").alias("stop"))


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


def accounting(index: int, lines: int = 0, rejects: rl.Rejects | None = None,
               users: list[str] | None = None, error: str | None = None) -> dict[str, Any]:
    """A task's report of its range."""
    return {"index": index, "lines": lines, "users": users or [],
            "reject_lines": rejects.line_numbers.tolist() if rejects else [],
            "reject_reasons": rejects.reasons if rejects else [],
            "reject_texts": rejects.lines if rejects else [], "error": error}


def read_range(plays_path: str, start: int, stop: int, columns: list[str] | tuple[str, ...],
               encoded: tuple[str, ...] = ()) -> tuple[pa.Table, rl.Rejects, int] | None:
    """The lines of the users whose blocks start in bytes start..stop, read and checked by the
    local reader: (kept plays, rejects numbered from the range's first line, lines); None when
    the range owns no line."""
    with open(plays_path, "rb") as fh:
        first, end = owned_start(fh, start), owned_start(fh, stop)
    return pr.read_plays_range(Path(plays_path), first, end, columns, encoded)


def task_error(exc: Exception, plays_path: str) -> str:
    """The one-line message of a task's failure: the local reader's own, or a shared-filesystem
    hint for a file an executor cannot use."""
    if isinstance(exc, OSError):
        return (f"{exc.filename or plays_path}: cannot be used by a Spark executor "
                f"({exc.strerror}): the raw data and WORK must be on a filesystem that every "
                "node shares")
    return str(exc)


def raise_first_error(reports: list[dict[str, Any]]) -> None:
    """Fail with the error of the first range (in file order) that had one."""
    for report in reports:
        if report["error"]:
            raise SessionlenError(report["error"])


def users_in_blocks(reports: list[dict[str, Any]]) -> bool:
    """Whether no user was met by two ranges."""
    met = [user for report in reports for user in report["users"]]
    return len(set(met)) == len(met)


def numbered_rejects(reports: list[dict[str, Any]]) -> rl.Rejects:
    """The ranges' rejected lines numbered in the whole file (reports in file order)."""
    offsets = np.cumsum([0] + [r["lines"] for r in reports[:-1]], dtype=np.int64)
    return rl.Rejects(
        np.concatenate([np.asarray(r["reject_lines"], dtype=np.int64) + offset
                        for r, offset in zip(reports, offsets, strict=True)])
        if reports else np.zeros(0, np.int64),
        [reason for r in reports for reason in r["reject_reasons"]],
        [text for r in reports for text in r["reject_texts"]])


def account_lines(plays_path: Path, rejects_dir: Path, reports: list[dict[str, Any]]
                  ) -> dict[str, Any]:
    """Refuse an empty or mostly malformed file, write the rejects as the local reader does,
    and return the line accounting (reports in file order)."""
    rejects = numbered_rejects(reports)
    rows_in = sum(r["lines"] for r in reports)
    rl.check_not_empty(plays_path, "plays", pr.PLAYS_EXPECTED, rows_in)
    rl.check_mostly_valid(plays_path, "plays", pr.PLAYS_EXPECTED, rows_in, rejects)
    target = rl.write_rejects(plays_path, rejects_dir, rejects)
    return {"rows_in": rows_in, "rows_rejected": len(rejects.line_numbers),
            "rejects_path": str(target) if target else None}
