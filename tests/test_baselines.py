"""Baselines fit on train only, the synthetic oracle join, and the metrics."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from utils.baseline.baselines import BASELINES, ORACLE, baseline_predictions
from utils.baseline.session_table import SOURCE_ID
from utils.core.columns import SUMMARY_COLUMNS
from utils.core.errors import SessionlenError
from utils.core.evaluation import headroom_captured, mae, normalized_mae, rmse


def summary_rows(rows: list[tuple[int, int, int, float, float]]) -> pd.DataFrame:
    """Summary rows from (user_id, session_id, timestamp, previous, current) tuples."""
    frame = pd.DataFrame(rows, columns=["user_id", "session_id", "timestamp",
                                        "previous_session_length", "current_session_length"])
    return frame.assign(gender=1, age=-1, country=0, registered=-1,
                        average_session_length=0.0)[SUMMARY_COLUMNS]


@pytest.fixture
def splits() -> dict[str, pd.DataFrame]:
    train = summary_rows([
        (1, 0, 100, 0.0, 100.0), (1, 1, 200, 100.0, 300.0), (1, 2, 300, 300.0, 800.0),
        (2, 0, 150, 0.0, 1000.0), (2, 1, 250, 1000.0, 2000.0),
    ])
    test = summary_rows([
        (1, 3, 400, 800.0, 500.0), (2, 2, 350, 2000.0, 1500.0),
        (3, 0, 120, 0.0, 50.0), (3, 1, 220, 50.0, 70.0),  # user 3 has no train session
    ])
    return {"train": train, "validate": train.iloc[:0], "test": test}


@pytest.fixture
def user_ids() -> pd.DataFrame:
    return pd.DataFrame({SOURCE_ID: ["user_000001", "user_000002", "user_000003"],
                         "user_id": [1, 2, 3]})


def test_naive_baselines_use_train_only(splits: dict[str, pd.DataFrame],
                                        user_ids: pd.DataFrame) -> None:
    out = baseline_predictions(splits, None, user_ids)
    assert out.columns.tolist() == ["user_id", "timestamp", "session_id", *BASELINES]
    assert out[["user_id", "timestamp"]].values.tolist() == [[1, 400], [2, 350], [3, 120],
                                                            [3, 220]]
    # train lengths: 100, 300, 800, 1000, 2000 -> median 800, mean 840
    assert out["global_median"].tolist() == [800.0] * 4
    assert out["user_mean"].tolist() == [400.0, 1500.0, 840.0, 840.0]
    assert out["user_median"].tolist() == [300.0, 1500.0, 800.0, 800.0]
    # a first session has no previous one: global median
    assert out["previous_session"].tolist() == [800.0, 2000.0, 800.0, 50.0]
    assert out.attrs["cold_start_users"] == 1 and out.attrs["cold_start_rows"] == 2
    assert ORACLE not in out


def test_running_baselines_use_every_earlier_session(splits: dict[str, pd.DataFrame],
                                                      user_ids: pd.DataFrame) -> None:
    validate = summary_rows([(1, 3, 350, 800.0, 900.0)])
    out = baseline_predictions({**splits, "validate": validate}, None, user_ids)
    # user 1 before 400: 100, 300, 800 (train) and 900 (validate); user 2: 1000, 2000;
    # user 3's first session has no history (global train median 800), then 50
    assert out["user_mean_running"].tolist() == [525.0, 1500.0, 800.0, 50.0]
    assert out["user_median_running"].tolist() == [550.0, 1500.0, 800.0, 50.0]
    on_validate = baseline_predictions({**splits, "validate": validate}, None, user_ids,
                                       predict="validate")
    assert on_validate["user_mean_running"].tolist() == [400.0]
    assert on_validate["user_median_running"].tolist() == [300.0]


def write_truth(folder: Path, rows: list[tuple[str, int, float, float]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=["user_id", "start_ms", "length_s", "median_length_s"]).to_csv(
        folder / "sessions.csv", index=False)
    return folder


def test_oracle_joins_on_source_id_and_start(tmp_path: Path, splits: dict[str, pd.DataFrame],
                                             user_ids: pd.DataFrame) -> None:
    truth = write_truth(tmp_path / "ground_truth", [
        ("user_000001", 400, 500.0, 420.0), ("user_000002", 350, 1500.0, 1400.0),
        ("user_000003", 100, 60.0, 55.0), ("user_000003", 220, 70.0, 65.0),
        ("user_000001", 100, 1.0, 999.0),  # another user's start time must not match
    ])
    out = baseline_predictions(splits, truth, user_ids)
    # user 3's session at 120 is not a planted start: it takes the planted session in progress
    assert out[ORACLE].tolist() == [420.0, 1400.0, 55.0, 65.0]
    assert out.attrs["oracle_exact_rows"] == 3


def test_oracle_failures(tmp_path: Path, splits: dict[str, pd.DataFrame],
                         user_ids: pd.DataFrame) -> None:
    with pytest.raises(SessionlenError, match="ground-truth sessions not found"):
        baseline_predictions(splits, tmp_path / "nowhere", user_ids)
    other = write_truth(tmp_path / "other", [("user_000009", 0, 1.0, 1.0)])
    with pytest.raises(SessionlenError, match="no planted session for 4 of 4 test sessions"):
        baseline_predictions(splits, other, user_ids)
    bad = tmp_path / "bad"
    bad.mkdir()
    pd.DataFrame({"user_id": ["u"], "start": [0]}).to_csv(bad / "sessions.csv", index=False)
    with pytest.raises(SessionlenError, match="missing column"):
        baseline_predictions(splits, bad, user_ids)


def test_no_train_sessions_is_an_error(splits: dict[str, pd.DataFrame],
                                       user_ids: pd.DataFrame) -> None:
    with pytest.raises(SessionlenError, match="train split has no sessions"):
        baseline_predictions({**splits, "train": splits["train"].iloc[:0]}, None, user_ids)


def test_metrics() -> None:
    y = np.array([10.0, 20.0, 40.0])
    p = np.array([12.0, 20.0, 30.0])
    assert mae(y, p) == pytest.approx(4.0)
    assert rmse(y, p) == pytest.approx(math.sqrt((4 + 0 + 100) / 3))
    assert normalized_mae(3.0, 4.0) == 0.75
    assert math.isnan(normalized_mae(3.0, 0.0))
    # user_median 100, oracle 90: a model at 92.5 captures 75% of the headroom
    assert headroom_captured(92.5, 100.0, 90.0) == pytest.approx(0.75)
    assert headroom_captured(110.0, 100.0, 90.0) == pytest.approx(-1.0)
    assert math.isnan(headroom_captured(92.5, 90.0, 90.0))


@pytest.mark.parametrize(("y", "p", "message"), [
    ([1.0, 2.0], [1.0], "2 actual values but 1 predictions"),
    ([], [], "no test rows"),
    ([1.0, 2.0], [1.0, np.nan], "1 missing"),
])
def test_metric_inputs_are_checked(y: list[float], p: list[float], message: str) -> None:
    with pytest.raises(SessionlenError, match=message):
        mae(np.array(y), np.array(p))
    with pytest.raises(SessionlenError, match=message):
        rmse(np.array(y), np.array(p))
