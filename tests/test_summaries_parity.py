"""The Spark engine writes byte-identical summaries to the local engine."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from test_summaries import random_plays, write_user_dir

from utils.baseline.summaries import summarize
from utils.core.config import SessionParams
from utils.core.errors import SessionlenError
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
    (-2, "abc", r"part-00000\.csv: a row has an invalid duration \(1 invalid row\(s\) in all"),
    (-1, "rock,extra", r"part-00000\.csv: malformed row \(wrong number of fields\): user_000015,"),
])
def test_both_engines_refuse_bad_rows_naming_the_file(spark: object, work: Path, tmp_path: Path,
                                                       field: int, text: str,
                                                       message: str) -> None:
    shutil.copytree(work / "user_dir", tmp_path / "user_dir")
    path = sorted((tmp_path / "user_dir" / "user_000015").glob("*.csv"))[0]
    lines = path.read_text().splitlines(keepends=True)
    fields = lines[5].rstrip("\n").split(",")
    fields[field] = text
    lines[5] = ",".join(fields) + "\n"
    path.write_text("".join(lines))
    with pytest.raises(SessionlenError, match=message):
        summarize(tmp_path, SessionParams(), engine="spark", spark_master="local[2]")
    with pytest.raises(SessionlenError, match=str(path)):
        summarize(tmp_path, SessionParams(), engine="local")
    assert not (tmp_path / "summary_dir").exists()
