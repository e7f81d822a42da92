"""The Spark engine writes the same bytes as the local one: tracks, user_dir and rejects."""

from __future__ import annotations

import csv
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from test_denormalize import fake_metadata_stage
from test_tracks import copy_excerpt

from utils.core import columns as C
from utils.core.config import WorkLayout
from utils.core.stage_io import MANIFEST
from utils.data_processing.denormalize import denormalize
from utils.data_processing.raw_lines import DUPLICATE_USER, REASONS
from utils.data_processing.track_rules import name_key
from utils.data_processing.tracks import build_unique_tracks

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

pytestmark = pytest.mark.spark

MASTER = "local[2]"

# Lines the reader must reject, one per rule (and the rules' order), appended to a dataset.
DAMAGED_LINES = [
    b"",
    b"user_000001\t2009-01-01T00:00:00Z\t\tA\t\tB\r",
    b"user_000001\t2009-01-01T00:00:00Z\tA\tB",
    b"user_000001\t2009-01-01T00:00:00Z\t\t\xff\xfeA\t\tB",
    b"user_000001\t2009-01-01T00:00:00Z\t\t\xed\xa0\x80 surrogate\t\tB",
    b"user_000001\t2009-01-01T00:00:00Z\t\t\xc0\x80 overlong\t\tB",
    b"user_000001\t2009-01-01T00:00:00Z\t\t\xf4\x90\x80\x80 beyond U+10FFFF\t\tB",
    b"user_000001\t2009-01-01T00:00:00Z\t\xe9t\xe9",
    b"user 1\t2009-01-01T00:00:00Z\t\tA\t\tB",
    "user_1\u0085\t2009-01-01T00:00:00Z\t\tA\t\tB".encode(),
    b"..\t2009-01-01T00:00:00Z\t\tA\t\tB",
    b"user_000001\t2009-02-30T00:00:00Z\t\tA\t\tB",
    b"user_000001\t2009-01-01T24:00:00Z\t\tA\t\tB",
    b"user_000001\t2009-1-01T00:00:00Z\t\tA\t\tB",
    "user_000001\t２009-01-01T00:00:00Z\t\tA\t\tB".encode(),
    b"user_000001\t2009-01-01T00:00:00Z\t\t\t\tB",
    b"user_000001\t2009-01-01T00:00:00Z\t\tA\t\t",
    b"user_000001\t2009-01-01T00:00:00Z\t\tA\t\tB\textra",
]

# Names where case mapping, whitespace and ordering differ between naive implementations.
EXOTIC_NAMES = [
    ("İSTANBUL Σ", "ΟΔΟΣ"), ("i̇stanbul σ", "οδος"), ("\u3000Björk\xa0", "Jóga\x0b"),
    ("Björk", "jóga"), ("zeta", "z"), ("zeta", "é"), ("ZETA", "\U0001d11e"), ("zeta", "\uffef"),
    ("Guns N' Roses", 'Sweet Child "O" Mine, Live'), ("NA", "null"), (" ", "ǅemal ǈ"),
    ("ﬀ ß ẞ", "K Å Ω"), ("Ǆ", "\u0130\u0307"),
]


def exotic_lines() -> list[bytes]:
    """A listener without a profile playing every exotic name twice, newest first, in pairs
    sharing a second (ties), a minute apart."""
    return [f"user_exotic\t2009-03-01T12:{59 - i // 2:02d}:00Z\t\t{artist}\t\t{track}".encode()
            for i, (artist, track) in enumerate(EXOTIC_NAMES * 2)]


@pytest.fixture(scope="module")
def spark() -> Iterator[SparkSession]:
    from utils.core.spark import get_spark

    session = get_spark(MASTER)
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(scope="module")
def damaged_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny synthetic dataset plus exotic names and one damaged line per reject rule."""
    from utils.synthetic.generate import generate_dataset

    raw = tmp_path_factory.mktemp("parity") / "raw"
    generate_dataset(raw, scale="tiny", seed=1)
    plays = raw / C.PLAYS_FILE
    body = plays.read_bytes()
    head, tail = body[: len(body) // 2], body[len(body) // 2:]
    cut = head.rfind(b"\n") + 1
    extra = b"\n".join([*DAMAGED_LINES[:9], *exotic_lines(), *DAMAGED_LINES[9:]]) + b"\n"
    # Damaged lines in the middle of the file and an unterminated last line.
    plays.write_bytes(head[:cut] + extra + head[cut:] + tail.rstrip(b"\n"))
    return raw


def stage_files(work: Path) -> dict[str, bytes]:
    """Every output file of the two stages and the rejects, manifests aside."""
    return {str(p.relative_to(work)): p.read_bytes() for p in sorted(work.rglob("*"))
            if p.is_file() and p.name != MANIFEST and "tracks/track_metadata" not in str(p)}


def manifest_counts(folder: Path, stage: str) -> dict[str, object]:
    """A stage's row accounting and join counts from its manifest."""
    entry = json.loads((folder / MANIFEST).read_text())[stage]
    return {k: entry[k] for k in ("rows_in", "rows_out", "rows_rejected")} | {
        "join": entry["parameters"].get("join_counts")}


def run_both(raw: Path, root: Path) -> tuple[Path, Path, list[dict], list[dict]]:
    """Tracks, a shared stand-in metadata stage, then denormalize, on each engine."""
    works = {engine: root / engine for engine in ("local", "spark")}
    tracks = {e: build_unique_tracks(raw, w, engine=e, spark_master=MASTER)
              for e, w in works.items()}
    fake_metadata_stage(works["local"])
    shutil.copy(WorkLayout(works["local"]).track_metadata, WorkLayout(works["spark"]).tracks)
    shutil.copy(WorkLayout(works["local"]).tracks / MANIFEST, WorkLayout(works["spark"]).tracks)
    users = {e: denormalize(raw, w, engine=e, spark_master=MASTER) for e, w in works.items()}
    return works["local"], works["spark"], [tracks["local"], users["local"]], [
        tracks["spark"], users["spark"]]


def assert_same_outputs(local: Path, spark: Path) -> None:
    """Identical bytes in every output file, and identical manifest accounting."""
    want, got = stage_files(local), stage_files(spark)
    assert got.keys() == want.keys()
    assert [name for name in want if got[name] != want[name]] == []
    for folder, stage in (("tracks", "tracks"), ("user_dir", "denormalize")):
        assert manifest_counts(spark / folder, stage) == manifest_counts(local / folder, stage)


def without_timing(summary: dict) -> dict:
    """A stage summary without what depends on the engine and the run."""
    return {k: v for k, v in summary.items() if k not in ("engine", "seconds", "output")}


def test_real_excerpt_same_files_on_both_engines(spark: SparkSession, sample_dir: Path,
                                                 tmp_path: Path) -> None:
    raw = copy_excerpt(sample_dir, tmp_path / "raw")
    local, remote, want, got = run_both(raw, tmp_path)
    assert_same_outputs(local, remote)
    assert [without_timing(s) for s in got] == [without_timing(s) for s in want]
    assert got[1]["plays_in"] == got[1]["plays_out"] == 5000 and got[1]["plays_rejected"] == 0
    assert sorted(p.name for p in (remote / "user_dir").iterdir() if p.is_dir()) == [
        "user_000001", "user_000002"]


def test_damaged_synthetic_same_files_rejects_and_counts(spark: SparkSession, damaged_raw: Path,
                                                         tmp_path: Path) -> None:
    local, remote, want, got = run_both(damaged_raw, tmp_path)
    assert_same_outputs(local, remote)
    assert [without_timing(s) for s in got] == [without_timing(s) for s in want]
    assert got[0]["plays_rejected"] == len(DAMAGED_LINES)
    rejects = remote / "rejects" / f"{C.PLAYS_FILE}.rejects.csv"
    with open(rejects, encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh))
    assert len(rows) == 1 + len(DAMAGED_LINES)
    kinds = {re.sub(r"got \d+", "got N", reason) for _, reason, _ in rows[1:]}
    assert kinds == {text.format(expected=6, got="N") for code, text in REASONS.items()
                     if code != DUPLICATE_USER}
    assert got[1]["users"] == 25 and got[1]["users_without_profile"] == 1
    exotic = (remote / "user_dir" / "user_exotic" / "part-00000.csv").read_text(encoding="utf-8")
    assert exotic.count("\n") == 1 + 2 * len(EXOTIC_NAMES)


def test_spark_keys_match_python_keys(spark: SparkSession) -> None:
    from utils.data_processing.spark_stages import name_key as spark_key

    names = [n for pair in EXOTIC_NAMES for n in pair] + ["\u1680x\u2029", "ΣΑΣ.", "ΑΣ Σ"]
    frame = spark.createDataFrame([(n,) for n in names], "name string")
    got = [row[0] for row in frame.select(spark_key(frame["name"])).collect()]
    assert got == [name_key(n) for n in names]


@pytest.mark.parametrize("blocks", [True, False])
def test_users_in_blocks_or_not_same_files(spark: SparkSession, sample_dir: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch, blocks: bool) -> None:
    """Users in blocks are written by the tasks of byte ranges; a user in two blocks sends the
    file to the SQL plan. Both write the local engine's bytes."""
    from utils.data_processing import spark_stages

    raw = copy_excerpt(sample_dir, tmp_path / "raw")
    plays = raw / C.PLAYS_FILE
    lines = plays.read_bytes().splitlines(keepends=True)
    if not blocks:
        # The first user's newest 100 plays moved after the second user's block.
        plays.write_bytes(b"".join(lines[100:] + lines[:100]))
    sql_plan = spark_stages.spark_denormalize
    calls = []

    def counted(*args: object, **kwargs: object) -> dict:
        calls.append(args)
        return sql_plan(*args, **kwargs)

    monkeypatch.setattr(spark_stages, "spark_denormalize", counted)
    local, remote, want, got = run_both(raw, tmp_path)
    assert len(calls) == (0 if blocks else 1)
    assert_same_outputs(local, remote)
    assert [without_timing(s) for s in got] == [without_timing(s) for s in want]
