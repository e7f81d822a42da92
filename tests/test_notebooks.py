"""Every stage notebook, executed for real (papermill) in order on the tiny synthetic scale."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from utils import runner
from utils.core import config
from utils.synthetic.generate import generate_dataset

DESIGN_NOTEBOOKS = [
    "data_processing/1_get_unique_tracks.ipynb",
    "data_processing/2_get_track_metadata.ipynb",
    "data_processing/3_create_denormalized_users.ipynb",
    "baseline/1_create_summarized_user_session.ipynb",
    "baseline/2_train_and_test_model.ipynb",
    "models_with_clusters/1_build_complete_vocab.ipynb",
    "models_with_clusters/2_build_session_data.ipynb",
    "models_with_clusters/3_build_user_profiles.ipynb",
    "models_with_clusters/4_cluster_analysis.ipynb",
    "models_with_clusters/5_train_and_test_model.ipynb",
    "models_with_clusters/6_in_session.ipynb",
]


def _existing() -> list[Path]:
    return [config.PROJECT_ROOT / name for name in DESIGN_NOTEBOOKS
            if (config.PROJECT_ROOT / name).is_file()]


def test_runner_finds_the_design_notebooks_in_order() -> None:
    found = [str(p.relative_to(config.PROJECT_ROOT)) for p in runner.stage_notebooks()]
    assert found == [str(p.relative_to(config.PROJECT_ROOT)) for p in _existing()]
    assert found, "no stage notebooks found"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> runner.RunPaths:
    root = tmp_path_factory.mktemp("pipeline")
    raw = root / "raw"
    generate_dataset(raw, scale="tiny", seed=1)
    return runner.run_pipeline(raw=raw, work=root / "work", scale="tiny", seed=1)


@pytest.mark.notebooks
def test_every_notebook_executes_at_tiny_scale(tiny_run: runner.RunPaths) -> None:
    executed = sorted(str(p.relative_to(tiny_run.notebooks))
                      for p in tiny_run.notebooks.rglob("*.ipynb"))
    assert executed == sorted(str(p.relative_to(config.PROJECT_ROOT)) for p in _existing())
    assert tiny_run.skipped == (), "the tiny synthetic dataset is big enough for every notebook"


@pytest.mark.notebooks
def test_results_table_has_baselines_and_models(tiny_run: runner.RunPaths) -> None:
    results = pd.read_csv(tiny_run.experiments)
    models = set(results["model"])
    assert {"global_median", "user_mean", "user_median", "previous_session", "oracle",
            "lightgbm", "gru", "lstm", "layered_lstm", "blend"} <= models
    assert (results["mae_s"] > 0).all()
    at_start = results[results["checkpoint_s"].isna()]
    assert at_start["n_test"].nunique() == 1, "every model must be scored on the same test rows"
    # In-session rows: the same test rows per checkpoint, the sessions that lasted that long.
    in_session = results.groupby("checkpoint_s")["n_test"]
    assert (in_session.nunique() == 1).all() and len(in_session) == 3
    assert in_session.first().is_monotonic_decreasing
    assert (in_session.first() < at_start["n_test"].iloc[0]).all()


@pytest.mark.notebooks
def test_executed_notebooks_write_nothing_to_stderr(tiny_run: runner.RunPaths) -> None:
    import nbformat

    written = {}
    for path in sorted(tiny_run.notebooks.rglob("*.ipynb")):
        cells = nbformat.read(path, as_version=4).cells
        text = "".join(o.get("text", "") for c in cells if c.cell_type == "code"
                       for o in c.outputs if o.get("name") == "stderr")
        if text:
            written[path.name] = text[:300]
    assert written == {}


@pytest.mark.notebooks
def test_results_follow_the_validation_protocol(tiny_run: runner.RunPaths) -> None:
    results = pd.read_csv(tiny_run.experiments)
    assert {"user_mean_running", "user_median_running"} <= set(results["model"])
    assert set(results["stage"]) == {"baseline", "clusters", "in_session"}
    in_session = results[results["stage"] == "in_session"]
    assert in_session["checkpoint_s"].notna().all()
    assert results.loc[results["stage"] != "in_session", "checkpoint_s"].isna().all()
    # The in-session stage picks one model per checkpoint; the others one per stage.
    for stage, rows in results.groupby(["stage", "checkpoint_s"], dropna=False):
        assert rows["selected"].sum() == 1, stage
        assert rows["val_mae_s"].notna().all() and rows["reference"].nunique() == 1
        for name in ("mae", "headroom", "diff_vs_reference"):
            assert rows[f"{name}_ci_low"].notna().all(), (stage, name)
    report = tiny_run.report.read_text(encoding="utf-8")
    assert "selected on validation" in report and "## Comparisons" in report
