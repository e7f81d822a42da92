"""The Spark engine writes byte-identical summaries to the local engine."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from test_summaries import random_plays, write_user_dir

from utils.baseline.session_table_spark import deal_users, group_count, group_sessions
from utils.baseline.summaries import summarize
from utils.core.config import SessionParams
from utils.core.errors import SessionlenError
from utils.core.spark import MIN_TASKS, TASK_BYTES
from utils.core.stage_io import MANIFEST

pytestmark = [
    pytest.mark.spark,
    pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning"),
]


@pytest.fixture(scope="module")
def spark() -> Iterator[object]:
    from utils.core.spark import get_spark

    session = get_spark("local[2]")
    yield session
    session.stop()


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Plays with ties (also across the two files of a split user) and missing values."""
    plays = random_plays(seed=21, users=5, plays_per_user=250)
    plays.loc[plays.index[::17], "duration"] = np.nan
    work = tmp_path_factory.mktemp("parity")
    write_user_dir(work, plays, split_files=("user_000008", "user_000022"))
    return work


def output_files(work: Path) -> dict[str, bytes]:
    """Every file of summary_dir but the manifest (it records the engine and timings)."""
    root = work / "summary_dir"
    return {str(p.relative_to(root)): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != MANIFEST}


@pytest.mark.parametrize("params", [SessionParams(), SessionParams(split="seed", seed=4,
                                                                   gap_minutes=20.0)])
def test_spark_and_local_write_identical_files(spark: object, work: Path,
                                               params: SessionParams) -> None:
    local = summarize(work, params, engine="local")
    want = output_files(work)
    remote = summarize(work, params, engine="spark", spark_master="local[2]")
    got = output_files(work)
    assert local["plays"] == remote["plays"] and local["sessions_per_split"] == remote[
        "sessions_per_split"]
    assert sum(local["sessions_per_split"].values()) > 100
    assert got.keys() == want.keys()
    different = [name for name in want if got[name] != want[name]]
    assert different == []


@pytest.mark.parametrize(("field", "text", "message"), [
    (-2, "abc", r"part-00000\.csv: line 7: .*duration"),
    (-1, "rock,extra", r"part-00000\.csv: .*(fields|columns)"),
])
def test_both_engines_refuse_bad_rows_with_the_same_error(spark: object, work: Path,
                                                          tmp_path: Path, field: int, text: str,
                                                          message: str) -> None:
    shutil.copytree(work / "user_dir", tmp_path / "user_dir")
    path = sorted((tmp_path / "user_dir" / "user_000015").glob("*.csv"))[0]
    lines = path.read_text().splitlines(keepends=True)
    fields = lines[6].rstrip("\n").split(",")
    fields[field] = text
    lines[6] = ",".join(fields) + "\n"
    path.write_text("".join(lines))
    with pytest.raises(SessionlenError, match=message) as local:
        summarize(tmp_path, SessionParams(), engine="local")
    with pytest.raises(SessionlenError) as remote:
        summarize(tmp_path, SessionParams(), engine="spark", spark_master="local[2]")
    assert str(remote.value) == str(local.value)
    assert str(path) in str(local.value)
    assert not (tmp_path / "summary_dir").exists()


def test_the_first_bad_user_in_user_order_is_reported(spark: object, work: Path,
                                                       tmp_path: Path) -> None:
    """Users are dealt into tasks out of order; the error is still the local engine's."""
    shutil.copytree(work / "user_dir", tmp_path / "user_dir")
    for user in ("user_000015", "user_000008"):
        path = sorted((tmp_path / "user_dir" / user).glob("*.csv"))[-1]
        lines = path.read_text().splitlines(keepends=True)
        lines[3] = lines[3].replace(lines[3].split(",")[1], "", 1)
        path.write_text("".join(lines))
    with pytest.raises(SessionlenError) as local:
        summarize(tmp_path, SessionParams(), engine="local")
    with pytest.raises(SessionlenError) as remote:
        summarize(tmp_path, SessionParams(), engine="spark", spark_master="local[2]")
    assert "user_000008" in str(local.value)
    assert str(remote.value) == str(local.value)


def test_users_are_dealt_into_groups_of_near_equal_size() -> None:
    sizes = [50, 1, 1, 30, 20, 1, 25, 2]
    groups = deal_users(sizes, 3)
    assert sorted(i for group in groups for i in group) == list(range(len(sizes)))
    assert all(group == sorted(group) for group in groups)
    totals = sorted(sum(sizes[i] for i in group) for group in groups)
    assert totals == [35, 45, 50]  # 50 alone; 30 + 2 + 1 + 1 + 1; 25 + 20
    assert [len(group) for group in deal_users([1] * 9, 3)] == [3, 3, 3]
    assert deal_users([5, 5], 4) == [[0], [1]]
    assert group_count(10 * TASK_BYTES + 1, users=1000) == max(MIN_TASKS, 11)
    assert group_count(40 * TASK_BYTES, users=1000) == 40
    assert group_count(1, users=3) == 3


def test_a_file_an_executor_cannot_see_is_named_with_the_shared_filesystem_rule(
        tmp_path: Path) -> None:
    missing = tmp_path / "user_000001" / "part-00000.csv"
    batch = group_sessions([3], ["user_000001"], [[str(missing)]], gap_minutes=30.0)
    assert batch.num_rows == 1
    row = batch.to_pylist()[0]
    assert row["_error_index"] == 3
    assert row["_error"].startswith(f"{missing}: cannot be read by a Spark executor")
    assert "filesystem that every node shares" in row["_error"]
