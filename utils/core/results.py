"""The results registry: WORK/results/experiments.csv (one row per evaluated model) and
comparisons.csv (one row per paired comparison), both append-only."""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import math
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from utils.core.columns import (
    CHECKPOINT_S,
    COMPARISON_FILE_COLUMNS,
    EXPERIMENT_FILE_COLUMNS,
    STAGE_COLUMNS,
)
from utils.core.config import WorkLayout
from utils.core.errors import SessionlenError
from utils.core.stage_io import atomic_file

STAGES = ("baseline", "clusters", "in_session")
# The stage whose rows are per checkpoint: they must say which (see columns.CHECKPOINT_S).
CHECKPOINT_STAGE = "in_session"


def new_run_id() -> str:
    """A run id that sorts by time: UTC timestamp plus a random suffix."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


def utc_now() -> str:
    """The current time as an ISO-8601 UTC string (seconds)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def params_json(params: Mapping[str, Any] | str | None) -> str:
    """Parameters as compact JSON with sorted keys (a JSON string is re-serialized sorted)."""
    if params is None:
        return "{}"
    if isinstance(params, str):
        try:
            params = json.loads(params)
        except json.JSONDecodeError as exc:
            raise SessionlenError(f"experiment params {params!r} is not JSON ({exc})") from exc
    return json.dumps(params, sort_keys=True, default=str)


def _checked(row: Mapping[str, Any], index: int, columns: list[str]) -> list[Any]:
    """The row's values in `columns` order, after checking names, stage and params.

    The stage-specific columns (STAGE_COLUMNS) may be left out of a row and are written empty;
    an in-session row must name its checkpoint.
    """
    unknown = sorted(set(row) - set(columns))
    missing = [c for c in columns if c not in row and c not in STAGE_COLUMNS]
    if unknown or missing:
        raise SessionlenError(
            f"results row {index}: unknown column(s) {unknown}, missing column(s) {missing}; "
            f"expected exactly {', '.join(columns)}")
    if row["stage"] not in STAGES:
        raise SessionlenError(
            f"results row {index}: stage {row['stage']!r} is not one of {', '.join(STAGES)}")
    if CHECKPOINT_S in columns and (row["stage"] == CHECKPOINT_STAGE) != _filled(
            row.get(CHECKPOINT_S)):
        raise SessionlenError(
            f"results row {index}: {CHECKPOINT_S} must be given for stage {CHECKPOINT_STAGE!r} "
            f"rows and only for them (stage {row['stage']!r}, {CHECKPOINT_S} "
            f"{row.get(CHECKPOINT_S)!r})")
    values = {**dict.fromkeys(STAGE_COLUMNS, ""), **row,
              **({"params": params_json(row["params"])} if "params" in row else {})}
    return ["" if isinstance(v, float) and math.isnan(v) else v
            for v in (values[c] for c in columns)]


def _filled(value: Any) -> bool:
    """Whether a cell holds a value (not None, NaN or the empty string)."""
    return not (value is None or value == "" or (isinstance(value, float) and math.isnan(value)))


def _rows_as_dicts(rows: Sequence[Mapping[str, Any]] | pd.DataFrame) -> list[Mapping[str, Any]]:
    """Rows given as dicts or as a DataFrame (its columns are the row keys)."""
    if isinstance(rows, pd.DataFrame):
        return [{k: (v.item() if isinstance(v, np.generic) else v) for k, v in r.items()}
                for r in rows.to_dict(orient="records")]
    return list(rows)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock beside `path` so concurrent appends do not lose rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _existing_text(path: Path, columns: list[str]) -> str:
    """The current file's text under the `columns` header, or just the header for a new file.

    A file written before columns were added is carried over, the new columns left empty, so
    the results of earlier runs stay readable; any other header is refused.
    """
    header = ",".join(columns) + "\n"
    if not path.exists():
        return header
    text = path.read_text(encoding="utf-8")
    found = next(csv.reader([text.split("\n", 1)[0].rstrip("\r")]), [])
    if found == columns:
        return text if text.endswith("\n") else text + "\n"
    if not found or not set(found) < set(columns):
        raise SessionlenError(f"{path}: line 1: header is not {','.join(columns)}")
    old = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    buffer = io.StringIO()
    old.reindex(columns=columns, fill_value="").to_csv(buffer, index=False, lineterminator="\n")
    return buffer.getvalue()


def _append_rows(path: Path, columns: list[str],
                 rows: Sequence[Mapping[str, Any]] | pd.DataFrame) -> Path:
    """Append rows (exactly `columns` each) to a results CSV, atomically and under a lock."""
    checked = [_checked(row, i, columns) for i, row in enumerate(_rows_as_dicts(rows))]
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(checked)
    with _locked(path):
        text = _existing_text(path, columns) + buffer.getvalue()
        with atomic_file(path, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
    return path


def _load_rows(path: Path, columns: list[str]) -> pd.DataFrame:
    """A results CSV as a frame (empty with the columns when there is no file yet)."""
    if not path.exists():
        return pd.DataFrame(columns=columns)
    text = _existing_text(path, columns)
    return pd.read_csv(io.StringIO(text), dtype={"run_id": str, "params": str})


def append_experiments(work: Path, rows: Sequence[Mapping[str, Any]] | pd.DataFrame) -> Path:
    """Append rows (EXPERIMENT_COLUMNS each, plus the stage columns a stage fills) to
    WORK/results/experiments.csv."""
    return _append_rows(WorkLayout(Path(work)).experiments, EXPERIMENT_FILE_COLUMNS, rows)


def load_experiments(work: Path) -> pd.DataFrame:
    """Every recorded experiment (an empty frame with the columns when none is recorded yet)."""
    return _load_rows(WorkLayout(Path(work)).experiments, EXPERIMENT_FILE_COLUMNS)


def append_comparisons(work: Path, rows: Sequence[Mapping[str, Any]] | pd.DataFrame) -> Path:
    """Append paired model comparisons (COMPARISON_COLUMNS, plus the stage columns a stage
    fills) to WORK/results/comparisons.csv; other columns of a frame are left out."""
    if isinstance(rows, pd.DataFrame):
        rows = rows[[c for c in COMPARISON_FILE_COLUMNS if c in rows.columns]]
    return _append_rows(WorkLayout(Path(work)).comparisons, COMPARISON_FILE_COLUMNS, rows)


def load_comparisons(work: Path) -> pd.DataFrame:
    """Every recorded comparison (an empty frame with the columns when none is recorded)."""
    return _load_rows(WorkLayout(Path(work)).comparisons, COMPARISON_FILE_COLUMNS)
