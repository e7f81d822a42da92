"""The results registry: exact columns, atomic appends, sorted params, baseline rows."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from utils.core.columns import (
    COMPARISON_FILE_COLUMNS,
    EXPERIMENT_COLUMNS,
    EXPERIMENT_FILE_COLUMNS,
)
from utils.core.errors import SessionlenError
from utils.core.results import (
    append_comparisons,
    append_experiments,
    load_comparisons,
    load_experiments,
    new_run_id,
)

# The columns of the first experiments.csv, before validation and intervals were recorded.
FIRST_COLUMNS = ["run_id", "finished_at", "stage", "model", "params", "n_test", "mae_s",
                 "rmse_s", "baseline_mae_s", "normalized_mae", "train_seconds"]


def row(model: str = "gru", **overrides: object) -> dict[str, object]:
    base = {
        "run_id": "r1", "finished_at": "2024-01-01T00:00:00Z", "stage": "baseline",
        "model": model, "params": {"b": 2, "a": 1}, "n_test": 10, "val_mae_s": 98.0,
        "mae_s": 100.5, "mae_ci_low": 90.0, "mae_ci_high": 110.0, "rmse_s": 200.25,
        "baseline_mae_s": 120.0, "normalized_mae": 100.5 / 120.0,
        "normalized_mae_ci_low": 0.8, "normalized_mae_ci_high": 0.9, "reference": "user_median",
        "headroom_captured": float("nan"), "headroom_ci_low": float("nan"),
        "headroom_ci_high": float("nan"), "diff_vs_reference_s": -5.0,
        "diff_vs_reference_ci_low": -9.0, "diff_vs_reference_ci_high": -1.0,
        "selected": False, "train_seconds": 3.0,
    }
    # Columns added later (the distributional metrics) are empty for a point-only model.
    return {**dict.fromkeys(EXPERIMENT_COLUMNS, ""), **base, **overrides}


def test_append_creates_then_appends(tmp_path: Path) -> None:
    path = append_experiments(tmp_path, [row("a")])
    assert path == tmp_path / "results" / "experiments.csv"
    append_experiments(tmp_path, [row("b"), row("c", stage="clusters")])
    lines = path.read_text().splitlines()
    assert lines[0] == ",".join(EXPERIMENT_FILE_COLUMNS)
    assert len(lines) == 4
    table = load_experiments(tmp_path)
    assert table.columns.tolist() == EXPERIMENT_FILE_COLUMNS
    assert table["checkpoint_s"].isna().all(), "only the in-session stage has checkpoints"
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
    assert table.empty and table.columns.tolist() == EXPERIMENT_FILE_COLUMNS


def test_a_file_from_before_the_new_columns_is_carried_over(tmp_path: Path) -> None:
    path = tmp_path / "results" / "experiments.csv"
    path.parent.mkdir()
    path.write_text(",".join(FIRST_COLUMNS) + "\n"
                    + 'r0,2023-01-01T00:00:00Z,baseline,gru,"{""a"": 1}",10,99.5,150,120,0.83,2\n')
    append_experiments(tmp_path, [row("new", selected=True)])
    table = load_experiments(tmp_path)
    assert path.read_text().splitlines()[0] == ",".join(EXPERIMENT_FILE_COLUMNS)
    assert table["model"].tolist() == ["gru", "new"]
    assert table.loc[0, "mae_s"] == 99.5 and pd.isna(table.loc[0, "val_mae_s"])
    assert table.loc[1, "selected"] and table.loc[1, "reference"] == "user_median"


def test_comparisons_are_appended_and_checked(tmp_path: Path) -> None:
    compared = pd.DataFrame([{"run_id": "r1", "stage": "clusters", "model": "cluster_lightgbm",
                              "versus": "global_lightgbm", "diff_mae_s": -3.5,
                              "diff_ci_low": -9.0, "diff_ci_high": 2.0,
                              "verdict": "not distinguishable"}])
    append_comparisons(tmp_path, compared)
    append_comparisons(tmp_path, compared.assign(run_id="r2"))
    table = load_comparisons(tmp_path)
    assert table.columns.tolist() == COMPARISON_FILE_COLUMNS
    assert table["run_id"].tolist() == ["r1", "r2"]
    with pytest.raises(SessionlenError, match="stage 'final'"):
        append_comparisons(tmp_path, compared.assign(stage="final"))


def test_run_ids_differ() -> None:
    assert new_run_id() != new_run_id()
