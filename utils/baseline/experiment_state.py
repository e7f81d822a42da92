"""What a baseline-stage experiment carries: its features and splits, and each model's result.

Below both the experiment steps (experiment) and the distributional scores (distribution), which
read and extend the same results.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from utils.baseline.features import FeatureSet
from utils.core import columns as C
from utils.core.results import new_run_id


@dataclass
class ModelResult:
    """One evaluated model or baseline: its validation and test predictions, and its cost.

    Predictions are in FeatureSet role order. `model` is the experiments.csv name (gru for every
    dropout value, the dropout being in `params`); `label` tells the variants apart in tables and
    figures. Validation predictions are what choices are made on; test ones are only reported.
    A distributional model also has its quantiles (rows x `quantile_levels`, seconds, sorted);
    its predictions are then its medians (utils.baseline.distribution).
    """

    model: str
    kind: str
    params: dict[str, Any]
    val_predictions_s: np.ndarray
    predictions_s: np.ndarray
    train_seconds: float = 0.0
    curves: dict[str, list[float]] | None = None
    label: str = ""
    val_quantiles_s: np.ndarray | None = None
    quantiles_s: np.ndarray | None = None
    quantile_levels: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        self.label = self.label or self.model


@dataclass
class Experiment:
    """The state a notebook carries from step to step."""

    work: Path
    features: FeatureSet
    splits: dict[str, pd.DataFrame]
    results: list[ModelResult] = field(default_factory=list)
    run_id: str = field(default_factory=new_run_id)
    seed: int = 1
    oracle_coverage: dict[str, int] = field(default_factory=dict)

    @property
    def actual_s(self) -> np.ndarray:
        """Actual lengths (seconds) of the test rows."""
        return self.features.lengths_s[self.features.rows["test"]]

    @property
    def actual_val_s(self) -> np.ndarray:
        """Actual lengths (seconds) of the validation rows."""
        return self.features.lengths_s[self.features.rows["validate"]]

    @property
    def test_users(self) -> np.ndarray:
        """The user of each test row: the unit the bootstrap resamples."""
        return self.features.role_frame("test")[C.USER_ID].to_numpy()

    def predictions(self) -> dict[str, np.ndarray]:
        """Test predictions (seconds) by model label."""
        return {r.label: r.predictions_s for r in self.results}
