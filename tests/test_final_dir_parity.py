"""The Spark engines of vocab, session-data and profiles write the local engine's bytes."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from test_denormalize import fake_metadata_stage
from test_tracks import copy_excerpt

from utils.baseline.summaries import summarize
from utils.core.config import ClusterParams, SessionParams, WorkLayout
from utils.core.errors import SessionlenError
from utils.core.stage_io import MANIFEST
from utils.data_processing.denormalize import denormalize
from utils.data_processing.tracks import build_unique_tracks
from utils.models_with_clusters.profiles import build_user_profiles
from utils.models_with_clusters.session_data import build_session_data
from utils.models_with_clusters.vocab import build_vocab

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

pytestmark = pytest.mark.spark

MASTER = "local[2]"
# Low enough that most users get a profile, high enough that some are excluded.
THRESHOLDS = ClusterParams(min_rows=40, min_sessions=3, max_average_length=20000.0)


@pytest.fixture(scope="module")
def spark() -> Iterator[SparkSession]:
    from utils.core.spark import get_spark

    session = get_spark(MASTER)
    yield session
    session.stop()


def summarized(raw: Path, work: Path) -> Path:
    """WORK with tracks, a stand-in metadata stage, user_dir and summary_dir (local engine)."""
    build_unique_tracks(raw, work)
    fake_metadata_stage(work)
    denormalize(raw, work)
    summarize(work, SessionParams())
    return work


def final_stages(work: Path, engine: str) -> list[dict]:
    """vocab, session-data and profiles on one engine; their summaries."""
    return [build_vocab(work, engine=engine, spark_master=MASTER),
            build_session_data(work, engine=engine, spark_master=MASTER),
            build_user_profiles(work, THRESHOLDS, engine=engine, spark_master=MASTER)]


def final_files(work: Path) -> dict[str, bytes]:
    """Every file of final_dir but the manifest (it records the engine and timings)."""
    root = WorkLayout(work).final_dir
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != MANIFEST}


def manifest_counts(work: Path) -> dict[str, dict]:
    """Row accounting (and per-split counts) of each final_dir stage's manifest entry."""
    entries = json.loads((WorkLayout(work).final_dir / MANIFEST).read_text())
    keep = ("rows_in", "rows_out", "rows_rejected", "splits", "excluded_by_reason")
    return {stage: {k: v for k, v in entry.items() if k in keep}
            for stage, entry in entries.items()}


def without_run(summary: dict) -> dict:
    """A stage summary without what depends on the engine, the run and the WORK path."""
    return {k: v for k, v in summary.items()
            if k not in ("engine", "seconds", "vocab_dir", "final_dir", "profile_file")}


def run_both(raw: Path, root: Path) -> tuple[Path, Path, list[dict], list[dict]]:
    """The upstream stages once, then the final_dir stages on each engine in a copy of WORK."""
    local = summarized(raw, root / "local")
    remote = root / "spark"
    shutil.copytree(local, remote)
    return local, remote, final_stages(local, "local"), final_stages(remote, "spark")


def assert_same(local: Path, remote: Path, want: list[dict], got: list[dict]) -> None:
    """Identical bytes in every final_dir file, identical accounting and summaries."""
    expected, actual = final_files(local), final_files(remote)
    assert actual.keys() == expected.keys()
    assert [name for name in expected if actual[name] != expected[name]] == []
    assert manifest_counts(remote) == manifest_counts(local)
    assert [without_run(s) for s in got] == [without_run(s) for s in want]


def test_synthetic_same_files_on_both_engines(spark: SparkSession, tmp_path: Path) -> None:
    from utils.synthetic.generate import generate_dataset

    raw = tmp_path / "raw"
    generate_dataset(raw, scale="tiny", users=10, seed=3)
    local, remote, want, got = run_both(raw, tmp_path)
    assert_same(local, remote, want, got)
    splits = got[1]["splits"]
    assert all(splits[name]["plays"] > 0 for name in splits)
    # Unseen names in validate/test and users excluded by a threshold are both exercised.
    assert splits["test"]["unknown_track_plays"] > 0
    assert 0 < got[2]["excluded"] < got[2]["users"]


def test_real_excerpt_same_files_on_both_engines(spark: SparkSession, sample_dir: Path,
                                                 tmp_path: Path) -> None:
    raw = copy_excerpt(sample_dir, tmp_path / "raw")
    local, remote, want, got = run_both(raw, tmp_path)
    assert_same(local, remote, want, got)
    assert got[1]["plays"] == 5000
    assert got[2]["users"] == 2


def test_spark_refuses_plays_changed_after_summarizing(spark: SparkSession,
                                                       tmp_path: Path) -> None:
    from utils.synthetic.generate import generate_dataset

    raw = tmp_path / "raw"
    generate_dataset(raw, scale="tiny", users=4, seed=3)
    work = summarized(raw, tmp_path / "work")
    path = sorted(WorkLayout(work).user_dir.glob("*/*.csv"))[0]
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    path.write_text("".join(lines[:-5]), encoding="utf-8")
    messages = []
    for engine in ("local", "spark"):
        with pytest.raises(SessionlenError, match="rerun `sessionlen summarize`") as info:
            build_vocab(work, engine=engine, spark_master=MASTER)
        messages.append(str(info.value))
    assert messages[1] == messages[0]
