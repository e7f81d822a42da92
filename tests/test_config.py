"""The config module: scales, paths and strict hyperparameter dataclasses."""

from __future__ import annotations

import pytest

from utils.core import config
from utils.core.errors import SessionlenError


def test_unknown_parameter_lists_valid_names() -> None:
    with pytest.raises(SessionlenError, match="unknown ModelParams parameter.*epoch.*valid names:"):
        config.ModelParams.from_dict({"epoch": 3})


@pytest.mark.parametrize(
    ("cls", "values"),
    [
        (config.ModelParams, {"epochs": "3"}),
        (config.ModelParams, {"dropout": [0.1, "a"]}),
        (config.ModelParams, {"layered": 1}),
        (config.SessionParams, {"split": "random"}),
        (config.ClusterParams, {"clusters": 2.5}),
    ],
)
def test_wrong_types_are_rejected(cls: type, values: dict) -> None:
    with pytest.raises(SessionlenError, match="wrong type"):
        cls.from_dict(values)


def test_valid_parameters_round_trip() -> None:
    params = config.ClusterParams.from_dict({"clusters": 3, "cluster_columns": ["age", 4]})
    assert config.ClusterParams.from_dict(params.to_dict()) == params


def test_unknown_scale_is_an_error() -> None:
    with pytest.raises(SessionlenError, match="valid scales: tiny, demo, full"):
        config.get_scale("huge")


def test_work_layout_follows_design(tmp_path) -> None:
    layout = config.WorkLayout(tmp_path)
    assert layout.unique_tracks == tmp_path / "tracks" / "unique_tracks.csv"
    assert layout.experiments == tmp_path / "results" / "experiments.csv"
    assert config.resolve_work("tiny", tmp_path) == tmp_path
    assert config.resolve_work("tiny").name == "tiny"
