"""The results timeline and WORK/results/report.md."""

from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import LineCollection, PathCollection

from utils import cli, report
from utils.core import evaluation
from utils.core.columns import EXPERIMENT_COLUMNS
from utils.core.config import WorkLayout
from utils.core.errors import SessionlenError
from utils.core.plots import save_figure
from utils.core.results import append_comparisons, append_experiments, load_experiments

ACTUAL = np.array([600.0, 1200.0, 3000.0, 900.0])
USERS = np.array([1, 1, 2, 3])
USER_MEAN = np.array([800.0, 1000.0, 2000.0, 1000.0])


def _rows(stage: str, run_id: str, models: dict[str, np.ndarray],
          params: dict[str, dict] | None = None) -> pd.DataFrame:
    """experiments.csv rows of one run, every model scored on the same test rows; the
    validation MAE is taken equal to the test MAE and user_median is the reference."""
    params = params or {}
    scores = evaluation.bootstrap_scores(ACTUAL, models, USERS, resamples=200)
    table = evaluation.score_table(scores, "user_mean", "user_median", "oracle")
    trained = [m for m in models if m not in ("user_mean", "user_median", "oracle",
                                               "global_median")]
    best = min(trained, key=lambda m: table.loc[m, "mae_s"])
    table = table.assign(
        run_id=run_id, finished_at="2026-01-01T00:00:00Z", stage=stage, model=table.index,
        params=[json.dumps(params.get(m, {})) for m in table.index], n_test=len(ACTUAL),
        val_mae_s=table["mae_s"], rmse_s=table["mae_s"], reference="user_median",
        baseline_mae_s=table.loc["user_mean", "mae_s"], selected=table.index == best,
        train_seconds=0.0)
    return table.reindex(columns=EXPERIMENT_COLUMNS).reset_index(drop=True)


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
    points = [c for c in ax.collections if isinstance(c, PathCollection)]
    plotted = np.concatenate([c.get_offsets()[:, 0] for c in points])
    assert sorted(plotted.astype(int)) == list(range(len(experiments)))
    intervals = [s for c in ax.collections if isinstance(c, LineCollection)
                 for s in c.get_segments()]
    assert len(intervals) == (experiments["model"] != "oracle").sum()
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


def test_headline_names_the_validation_pick_and_the_verdicts(work):
    append_comparisons(work, [{
        "run_id": "20260103T000000Z-cccccc", "stage": "clusters", "model": "cluster_lightgbm",
        "versus": "global_lightgbm", "diff_mae_s": -30.0, "diff_ci_low": -80.0,
        "diff_ci_high": 12.0, "verdict": "not distinguishable"}])
    text = report.write_report(work).read_text(encoding="utf-8")
    headline = text.split("## Headline")[1].split("## Results")[0]
    assert "**clusters**: `cluster_lightgbm`, selected on validation" in headline
    assert "**baseline**: `gru (dropout 0.2)`, selected on validation" in headline
    assert "reference `user_median`" in headline
    assert ("`cluster_lightgbm` − `global_lightgbm`: -30.0 s [-80.0, +12.0]: not "
            "distinguishable") in headline
    assert "| clusters | cluster_lightgbm | global_lightgbm |" in text.split("## Comparisons")[1]


def test_oracle_coverage_is_stated_and_warned_about(work):
    rows = _rows("baseline", "20260104T000000Z-dddddd", _baseline_models(),
                 {"oracle": {"test_sessions": 1000, "exact_matches": 950}})
    append_experiments(work, rows)
    text = report.write_report(work).read_text(encoding="utf-8")
    assert "950 of 1,000 test sessions (95.0%) start exactly at a planted session" in text
    assert "50 were matched to the planted session in progress" in text
    assert "**Warning: below 99%" in text


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
    results = text.split("## Results")[1].split("## Comparisons")[0]
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


def test_report_names_the_run_of_each_figure_and_flags_older_ones(work):
    figures = WorkLayout(work).figures
    for name, run in (("baseline_error_by_bucket", "20260102T000000Z-bbbbbb"),
                      ("baseline_learning_curves", "20260101T000000Z-aaaaaa")):
        fig, ax = plt.subplots()
        ax.plot([0, 1], [1, 0])
        save_figure(fig, figures / f"{name}.png", run)
    text = report.write_report(work).read_text(encoding="utf-8")
    current = text.split("### baseline_error_by_bucket")[1].split("###")[0]
    older = text.split("### baseline_learning_curves")[1].split("###")[0]
    untied = text.split("### baseline_mae_per_model")[1].split("###")[0]
    assert "Run `20260102T000000Z-bbbbbb`" in current and "older" not in current
    assert "Run `20260101T000000Z-aaaaaa`" in older and "older than the tables above" in older
    assert "not tied to a recorded run" in untied


def test_report_command_rebuilds_the_report(work, capsys):
    (WorkLayout(work).results / "report.md").unlink(missing_ok=True)
    assert cli.main(["report", "--work", str(work)]) == 0
    assert (WorkLayout(work).results / "report.md").is_file()
    assert cli.main(["report", "--work", str(work / "nowhere")]) == 2
    assert "no experiments recorded" in capsys.readouterr().err
