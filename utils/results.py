"""The results registry WORK/results/experiments.csv: one row per evaluated model, append-only."""

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

from utils import evaluation
from utils.baselines import BASELINES, ORACLE
from utils.columns import EXPERIMENT_COLUMNS
from utils.config import WorkLayout
from utils.errors import SessionlenError
from utils.stage_io import atomic_file

STAGES = ("baseline", "clusters")
NORMALIZER = "user_mean"


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


def experiment_row(*, run_id: str, stage: str, model: str, actual_s: np.ndarray,
                   predicted_s: np.ndarray, baseline_s: np.ndarray,
                   params: Mapping[str, Any] | None = None, train_seconds: float = 0.0,
                   finished_at: str | None = None) -> dict[str, Any]:
    """One experiments.csv row; `baseline_s` are the user_mean predictions on the same rows."""
    model_mae = evaluation.mae(actual_s, predicted_s)
    baseline_mae = evaluation.mae(actual_s, baseline_s)
    return {
        "run_id": run_id, "finished_at": finished_at or utc_now(), "stage": stage,
        "model": model, "params": params_json(params), "n_test": len(actual_s),
        "mae_s": model_mae, "rmse_s": evaluation.rmse(actual_s, predicted_s),
        "baseline_mae_s": baseline_mae,
        "normalized_mae": evaluation.normalized_mae(model_mae, baseline_mae),
        "train_seconds": float(train_seconds),
    }


def evaluation_rows(actual_s: np.ndarray, predictions: pd.DataFrame, stage: str,
                    run_id: str | None = None) -> list[dict[str, Any]]:
    """One row per baseline column of `predictions` (baseline_predictions' output)."""
    if NORMALIZER not in predictions:
        raise SessionlenError(f"predictions lack the {NORMALIZER} baseline")
    run_id, finished = run_id or new_run_id(), utc_now()
    return [
        experiment_row(run_id=run_id, stage=stage, model=name, actual_s=actual_s,
                       predicted_s=predictions[name].to_numpy(),
                       baseline_s=predictions[NORMALIZER].to_numpy(), finished_at=finished)
        for name in (*BASELINES, ORACLE) if name in predictions
    ]


def _checked(row: Mapping[str, Any], index: int) -> list[Any]:
    """The row's values in EXPERIMENT_COLUMNS order, after checking names, stage and params."""
    unknown = sorted(set(row) - set(EXPERIMENT_COLUMNS))
    missing = [c for c in EXPERIMENT_COLUMNS if c not in row]
    if unknown or missing:
        raise SessionlenError(
            f"experiment row {index}: unknown column(s) {unknown}, missing column(s) {missing}; "
            f"expected exactly {', '.join(EXPERIMENT_COLUMNS)}")
    if row["stage"] not in STAGES:
        raise SessionlenError(
            f"experiment row {index}: stage {row['stage']!r} is not one of {', '.join(STAGES)}")
    values = {**row, "params": params_json(row["params"])}
    return ["" if isinstance(v, float) and math.isnan(v) else v
            for v in (values[c] for c in EXPERIMENT_COLUMNS)]


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


def _existing_text(path: Path) -> str:
    """The current file's text (header checked), or just the header for a new file."""
    header = ",".join(EXPERIMENT_COLUMNS) + "\n"
    if not path.exists():
        return header
    text = path.read_text(encoding="utf-8")
    if text.split("\n", 1)[0].rstrip("\r") != header.rstrip("\n"):
        raise SessionlenError(f"{path}: line 1: header is not {','.join(EXPERIMENT_COLUMNS)}")
    return text if text.endswith("\n") else text + "\n"


def append_experiments(work: Path, rows: Sequence[Mapping[str, Any]] | pd.DataFrame) -> Path:
    """Append rows (exactly EXPERIMENT_COLUMNS each) to WORK/results/experiments.csv atomically."""
    path = WorkLayout(Path(work)).experiments
    checked = [_checked(row, i) for i, row in enumerate(_rows_as_dicts(rows))]
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(checked)
    with _locked(path):
        text = _existing_text(path) + buffer.getvalue()
        with atomic_file(path, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
    return path


def load_experiments(work: Path) -> pd.DataFrame:
    """Every recorded experiment (an empty frame with the columns when none is recorded yet)."""
    path = WorkLayout(Path(work)).experiments
    if not path.exists():
        return pd.DataFrame(columns=EXPERIMENT_COLUMNS)
    _existing_text(path)
    return pd.read_csv(path, dtype={"run_id": str, "params": str})
