"""The results registry: exact columns, atomic appends, sorted params, baseline rows."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from utils.columns import EXPERIMENT_COLUMNS
from utils.errors import SessionlenError
from utils.results import (
    append_experiments,
    evaluation_rows,
    experiment_row,
    load_experiments,
    new_run_id,
)


def row(model: str = "gru", **overrides: object) -> dict[str, object]:
    base = {
        "run_id": "r1", "finished_at": "2024-01-01T00:00:00Z", "stage": "baseline",
        "model": model, "params": {"b": 2, "a": 1}, "n_test": 10, "mae_s": 100.5,
        "rmse_s": 200.25, "baseline_mae_s": 120.0, "normalized_mae": 100.5 / 120.0,
        "train_seconds": 3.0,
    }
    return {**base, **overrides}


def test_append_creates_then_appends(tmp_path: Path) -> None:
    path = append_experiments(tmp_path, [row("a")])
    assert path == tmp_path / "results" / "experiments.csv"
    append_experiments(tmp_path, [row("b"), row("c", stage="clusters")])
    lines = path.read_text().splitlines()
    assert lines[0] == ",".join(EXPERIMENT_COLUMNS)
    assert len(lines) == 4
    table = load_experiments(tmp_path)
    assert table.columns.tolist() == EXPERIMENT_COLUMNS
    assert table["model"].tolist() == ["a", "b", "c"]
    assert table["stage"].tolist() == ["baseline", "baseline", "clusters"]
    assert table["params"].tolist() == ['{"a": 1, "b": 2}'] * 3
    assert table["mae_s"].tolist() == [100.5] * 3
    assert not list(path.parent.glob(".experiments.csv.tmp*"))


def test_append_accepts_a_frame_and_re_sorts_json_params(tmp_path: Path) -> None:
    frame = pd.DataFrame([row("x", params='{"z": 1, "a": [1, 2]}', n_test=np.int64(5))])
    append_experiments(tmp_path, frame[EXPERIMENT_COLUMNS])
    table = load_experiments(tmp_path)
    assert json.loads(table.loc[0, "params"]) == {"a": [1, 2], "z": 1}
    assert table.loc[0, "params"].startswith('{"a"')
    assert table.loc[0, "n_test"] == 5


@pytest.mark.parametrize(("bad", "message"), [
    ({"extra": 1}, r"unknown column\(s\) \['extra'\]"),
    ({"stage": "final"}, "stage 'final' is not one of baseline, clusters"),
    ({"params": "{not json"}, "is not JSON"),
])
def test_bad_rows_are_refused_and_nothing_is_written(tmp_path: Path, bad: dict[str, object],
                                                     message: str) -> None:
    append_experiments(tmp_path, [row("kept")])
    with pytest.raises(SessionlenError, match=message):
        append_experiments(tmp_path, [row("ok"), row("bad", **bad)])
    assert load_experiments(tmp_path)["model"].tolist() == ["kept"]


def test_missing_column_is_refused(tmp_path: Path) -> None:
    incomplete = row()
    del incomplete["rmse_s"]
    with pytest.raises(SessionlenError, match=r"missing column\(s\) \['rmse_s'\]"):
        append_experiments(tmp_path, [incomplete])
    assert not (tmp_path / "results" / "experiments.csv").exists()


def test_foreign_file_is_not_appended_to(tmp_path: Path) -> None:
    path = tmp_path / "results" / "experiments.csv"
    path.parent.mkdir()
    path.write_text("model,mae\nx,1\n")
    with pytest.raises(SessionlenError, match="line 1: header"):
        append_experiments(tmp_path, [row()])
    with pytest.raises(SessionlenError, match="line 1: header"):
        load_experiments(tmp_path)
    assert path.read_text() == "model,mae\nx,1\n"


def test_concurrent_appends_keep_every_row(tmp_path: Path) -> None:
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda i: append_experiments(tmp_path, [row(f"m{i}")]), range(24)))
    assert sorted(load_experiments(tmp_path)["model"]) == sorted(f"m{i}" for i in range(24))


def test_load_without_file_is_empty(tmp_path: Path) -> None:
    table = load_experiments(tmp_path)
    assert table.empty and table.columns.tolist() == EXPERIMENT_COLUMNS


def test_evaluation_rows_score_every_baseline(tmp_path: Path) -> None:
    actual = np.array([100.0, 200.0, 400.0])
    predictions = pd.DataFrame({
        "user_id": [1, 1, 2], "global_median": [200.0] * 3, "user_mean": [150.0, 150.0, 300.0],
        "user_median": [100.0, 100.0, 400.0], "previous_session": [0.0, 100.0, 200.0],
        "oracle": [100.0, 200.0, 390.0],
    })
    rows = evaluation_rows(actual, predictions, "baseline", run_id="run-7")
    by_model = {r["model"]: r for r in rows}
    assert list(by_model) == ["global_median", "user_mean", "user_median", "previous_session",
                              "oracle"]
    assert by_model["user_mean"]["mae_s"] == pytest.approx((50 + 50 + 100) / 3)
    assert by_model["user_mean"]["normalized_mae"] == pytest.approx(1.0)
    assert by_model["oracle"]["normalized_mae"] == pytest.approx((10 / 3) / (200 / 3))
    assert all(r["run_id"] == "run-7" and r["n_test"] == 3 for r in rows)
    assert {r["finished_at"] for r in rows} == {rows[0]["finished_at"]}
    append_experiments(tmp_path, rows)
    assert len(load_experiments(tmp_path)) == 5
    with pytest.raises(SessionlenError, match="user_mean"):
        evaluation_rows(actual, predictions.drop(columns="user_mean"), "baseline")


def test_experiment_row_and_run_ids() -> None:
    made = experiment_row(run_id="r", stage="clusters", model="gru",
                          actual_s=np.array([1.0, 3.0]), predicted_s=np.array([1.0, 1.0]),
                          baseline_s=np.array([2.0, 2.0]), params={"y": 1, "x": 0},
                          train_seconds=2.5)
    assert list(made) == EXPERIMENT_COLUMNS
    assert made["mae_s"] == 1.0 and made["baseline_mae_s"] == 1.0
    assert made["normalized_mae"] == 1.0 and made["params"] == '{"x": 0, "y": 1}'
    assert new_run_id() != new_run_id()
