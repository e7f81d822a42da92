"""The across-seed tables of benchmarks/bench_accuracy.py, on hand-made results."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from benchmarks.bench_accuracy import distribution_summary, selected_summary, summary


def _row(seed: int, model: str, headroom: float, pinball: float | None = None,
         coverage: float | None = None, selected: bool = False,
         selected_distribution: bool = False) -> dict[str, object]:
    return {"mechanics": "standard", "stage": "baseline", "seed": seed, "model": model,
            "label": model, "normalized_mae": 0.9, "headroom_captured": headroom,
            "selected": selected, "pinball_loss_s": np.nan if pinball is None else pinball,
            "coverage_80": np.nan if coverage is None else coverage,
            "selected_distribution": selected_distribution}


RESULTS = pd.DataFrame([
    _row(1, "oracle", 1.0, 100.0, 0.8), _row(2, "oracle", 1.0, 200.0, 0.8),
    _row(1, "gru", 0.6, selected=True), _row(2, "gru", 0.8),
    _row(1, "lightgbm", 0.7), _row(2, "lightgbm", 0.5, selected=True),
    _row(1, "lightgbm_quantile", 0.7, 110.0, 0.75, selected_distribution=True),
    _row(2, "lightgbm_quantile", 0.5, 210.0, 0.85),
    _row(1, "gru_quantile", 0.6, 120.0, 0.70),
    _row(2, "gru_quantile", 0.6, 204.0, 0.90, selected_distribution=True),
])


def test_pinball_is_compared_with_the_oracle_of_the_same_run():
    table = distribution_summary(RESULTS).loc[("standard", "baseline")]
    # 110/100 and 210/200, not 110 and 210 over the oracles' mean.
    assert table.loc["lightgbm_quantile", "pinball_vs_oracle_mean"] == pytest.approx(1.075)
    assert table.loc["gru_quantile", "pinball_vs_oracle_mean"] == pytest.approx(1.11)
    assert table.loc["oracle", "pinball_vs_oracle_mean"] == pytest.approx(1.0)
    assert table.loc["gru_quantile", "coverage_80_mean"] == pytest.approx(0.8)
    assert table["selected"].to_dict() == {"oracle": 0, "lightgbm_quantile": 1,
                                           "gru_quantile": 1}
    assert "gru" not in table.index  # point models have no distribution


def test_headroom_tables_count_the_validation_picks():
    table = summary(RESULTS).loc[("standard", "baseline")]
    assert table.loc["gru", "headroom_mean"] == pytest.approx(0.7)
    assert table.loc["gru", "selected"] == 1
    picked = selected_summary(RESULTS).loc[("standard", "baseline")]
    assert picked["headroom_mean"] == pytest.approx(0.55)
    assert picked["picks"] == "gru x1, lightgbm x1"
