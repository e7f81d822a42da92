"""The results timeline and WORK/results/report.md."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from utils import report
from utils.config import WorkLayout
from utils.errors import SessionlenError
from utils.plots import save_figure
from utils.results import append_experiments, experiment_row, load_experiments

ACTUAL = np.array([600.0, 1200.0, 3000.0, 900.0])
USER_MEAN = np.array([800.0, 1000.0, 2000.0, 1000.0])


def _rows(stage: str, run_id: str, models: dict[str, np.ndarray],
          params: dict[str, dict] | None = None) -> list[dict]:
    """experiments.csv rows of one run, every model scored on the same test rows."""
    params = params or {}
    return [experiment_row(run_id=run_id, stage=stage, model=name, actual_s=ACTUAL,
                           predicted_s=pred, baseline_s=USER_MEAN, params=params.get(name))
            for name, pred in models.items()]


def _baseline_models() -> dict[str, np.ndarray]:
    return {"user_mean": USER_MEAN, "user_median": USER_MEAN * 0.95,
            "oracle": ACTUAL * 1.02, "gru": ACTUAL * 1.2, "global_median": np.full(4, 1000.0)}


@pytest.fixture()
def work(tmp_path: Path) -> Path:
    """A WORK with two baseline runs, one clusters run and a saved figure."""
    append_experiments(tmp_path, _rows("baseline", "20260101T000000Z-aaaaaa", _baseline_models()))
    append_experiments(tmp_path, _rows("baseline", "20260102T000000Z-bbbbbb", _baseline_models(),
                                       {"gru": {"dropout": 0.2}}))
    append_experiments(tmp_path, _rows(
        "clusters", "20260103T000000Z-cccccc",
        {**_baseline_models(), "global_lightgbm": ACTUAL * 1.1,
         "cluster_lightgbm": ACTUAL * 1.05},
        {"cluster_lightgbm": {"clustering": "kmeans", "clusters": 4, "standardize": True,
                              "mix_std": False, "mix_std_threshold": 200,
                              "cluster_columns": ["total_sessions"], "clusters_trained": [0, 1],
                              "adjusted_rand": {"kmeans": 0.8, "spectral": 0.7}}}))
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    save_figure(fig, WorkLayout(tmp_path).figures / "baseline_mae_per_model.png")
    return tmp_path


def test_timeline_shows_every_experiment_in_order(work):
    experiments = load_experiments(work)
    fig = report.plot_results_timeline(experiments)
    ax = fig.axes[0]
    plotted = np.concatenate([c.get_offsets()[:, 0] for c in ax.collections])
    assert sorted(plotted.astype(int)) == list(range(len(experiments)))
    levels = {round(line.get_ydata()[0], 6) for line in ax.get_lines()}
    oracle = experiments.loc[experiments["model"] == "oracle", "normalized_mae"].iloc[-1]
    assert 1.0 in levels and round(oracle, 6) in levels
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert "gru (dropout 0.2)" in labels and labels[-1] == "cluster_lightgbm"


def test_timeline_without_experiments_is_an_error():
    with pytest.raises(SessionlenError, match="no experiments"):
        report.plot_results_timeline(pd.DataFrame(columns=["stage", "model", "normalized_mae"]))


def test_latest_runs_keep_one_run_per_stage(work):
    latest = report.latest_runs(load_experiments(work))
    assert set(latest["run_id"]) == {"20260102T000000Z-bbbbbb", "20260103T000000Z-cccccc"}


def test_headroom_uses_the_runs_own_references(work):
    latest = report.with_headroom(report.latest_runs(load_experiments(work))).set_index("model")
    clusters = latest[latest["stage"] == "clusters"]
    expected = ((clusters.loc["user_median", "mae_s"] - clusters.loc["cluster_lightgbm", "mae_s"])
                / (clusters.loc["user_median", "mae_s"] - clusters.loc["oracle", "mae_s"]))
    assert clusters.loc["cluster_lightgbm", "headroom_captured"] == pytest.approx(expected)
    assert clusters.loc["oracle", "headroom_captured"] == pytest.approx(1.0)


def test_report_written_with_tables_and_links_that_exist(work):
    path = report.write_report(work, raw=None)
    layout = WorkLayout(work)
    assert path == layout.results / "report.md"
    text = path.read_text(encoding="utf-8")
    for heading in ("## Results", "## Baselines", "## Oracle", "## Per-cluster models",
                    "## Figures"):
        assert heading in text
    assert "cluster_lightgbm" in text and "global_lightgbm" in text
    assert "kmeans with k=4" in text and "'spectral': 0.7" in text
    links = re.findall(r"\]\(([^)]+)\)", text)
    assert {"figures/results_timeline.png", "figures/baseline_mae_per_model.png"} <= set(links)
    assert all((layout.results / link).is_file() for link in links)
    # Only the latest run of each stage is tabulated: 5 baseline + 7 clusters rows.
    results = text.split("## Results")[1].split("## Baselines")[0]
    assert results.count("| baseline |") == 5 and results.count("| clusters |") == 7
    assert not list(layout.results.glob(".report.md.tmp-*"))


def test_report_names_synthetic_raw_data(work, tmp_path_factory):
    raw = tmp_path_factory.mktemp("raw")
    (raw / "ground_truth").mkdir()
    text = report.write_report(work, raw).read_text(encoding="utf-8")
    assert "oracle available" in text


def test_report_without_experiments_is_an_error(tmp_path):
    with pytest.raises(SessionlenError, match="no experiments recorded"):
        report.write_report(tmp_path)


def test_markdown_table_formats_and_escapes():
    table = report.markdown_table(pd.DataFrame({"model": ["a|b"], "mae_s": [1234.5678],
                                                "normalized_mae": [0.87654], "x": [np.nan]}))
    lines = table.splitlines()
    assert lines[0] == "| model | mae_s | normalized_mae | x |"
    assert lines[1] == "|---|---|---|---|"
    assert lines[2] == "| a\\|b | 1,234.6 | 0.8765 |  |"
