"""Atomic stage directories and manifests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from utils.core import stage_io
from utils.core.errors import StageIncompleteError


def _manifest(stage_dir, stage="tracks", rows=(3, 3, 0)):
    return stage_io.write_manifest(
        stage_dir, stage, inputs=[], parameters={"a": 1}, rows_in=rows[0], rows_out=rows[1],
        rows_rejected=rows[2], outputs=["out.csv"], timings={"total": 0.1},
    )


def test_atomic_dir_replaces_only_on_success(tmp_path) -> None:
    final = tmp_path / "stage"
    with stage_io.atomic_dir(final) as tmp:
        (tmp / "out.csv").write_text("v1")
    with pytest.raises(RuntimeError), stage_io.atomic_dir(final) as tmp:
        (tmp / "out.csv").write_text("half")
        raise RuntimeError("killed")
    assert (final / "out.csv").read_text() == "v1"
    assert [p.name for p in tmp_path.iterdir()] == ["stage"]


def test_require_stage_names_the_command(tmp_path) -> None:
    with pytest.raises(StageIncompleteError, match="run `sessionlen tracks` first"):
        stage_io.require_stage(tmp_path, "tracks")
    (tmp_path / "out.csv").write_text("x")
    _manifest(tmp_path)
    assert stage_io.require_stage(tmp_path, "tracks")["rows_out"] == 3
    with pytest.raises(StageIncompleteError, match="sessionlen metadata"):
        stage_io.require_stage(tmp_path, "metadata")
    (tmp_path / "out.csv").unlink()
    with pytest.raises(StageIncompleteError, match="missing"):
        stage_io.require_stage(tmp_path, "tracks")


def test_manifest_refuses_unreconciled_counts(tmp_path) -> None:
    (tmp_path / "out.csv").write_text("x")
    with pytest.raises(AssertionError, match="rows_in"):
        _manifest(tmp_path, rows=(5, 3, 1))
    assert not (tmp_path / stage_io.MANIFEST).exists()


def test_manifest_keeps_one_entry_per_stage(tmp_path) -> None:
    (tmp_path / "out.csv").write_text("x")
    _manifest(tmp_path, "tracks")
    _manifest(tmp_path, "metadata")
    data = json.loads((tmp_path / stage_io.MANIFEST).read_text())
    assert set(data) == {"tracks", "metadata"}
    assert data["tracks"]["code_version"]


def test_a_stage_is_stale_once_a_stage_it_read_is_rebuilt(tmp_path: Path) -> None:
    upstream, downstream = tmp_path / "up", tmp_path / "down"
    for folder in (upstream, downstream):
        folder.mkdir()
    (upstream / "a.csv").write_text("x\n")
    (downstream / "b.csv").write_text("y\n")

    def complete(stage_dir: Path, stage: str, inputs: list[Path], output: str) -> None:
        stage_io.write_manifest(stage_dir, stage, inputs=inputs, parameters={}, rows_in=1,
                                rows_out=1, rows_rejected=0, outputs=[output], timings={})

    complete(upstream, "tracks", [], "a.csv")
    complete(upstream, "metadata", [upstream / "a.csv"], "a.csv")
    complete(downstream, "summarize", [upstream], "b.csv")
    entry = stage_io.require_stage(downstream, "summarize")
    assert {(u["dir"], u["stage"]) for u in entry["upstream"]} == {("../up", "tracks"),
                                                                    ("../up", "metadata")}
    complete(upstream, "tracks", [], "a.csv")
    # metadata read the old tracks: it is stale, and so is what was built on it
    with pytest.raises(StageIncompleteError, match="'metadata' is stale.*'tracks'.*metadata"):
        stage_io.require_stage(upstream, "metadata")
    with pytest.raises(StageIncompleteError, match="'summarize' is stale.*sessionlen summarize"):
        stage_io.require_stage(downstream, "summarize")
    complete(upstream, "metadata", [upstream / "a.csv"], "a.csv")
    complete(downstream, "summarize", [upstream], "b.csv")
    assert stage_io.require_stage(downstream, "summarize")["stage"] == "summarize"


def test_a_work_folder_moved_whole_stays_current(tmp_path: Path) -> None:
    work = tmp_path / "work"
    (work / "up").mkdir(parents=True)
    (work / "down").mkdir()
    (work / "up" / "a.csv").write_text("x\n")
    (work / "down" / "b.csv").write_text("y\n")
    stage_io.write_manifest(work / "up", "tracks", inputs=[], parameters={}, rows_in=0,
                            rows_out=0, rows_rejected=0, outputs=["a.csv"], timings={})
    stage_io.write_manifest(work / "down", "summarize", inputs=[work / "up" / "a.csv"],
                            parameters={}, rows_in=0, rows_out=0, rows_rejected=0,
                            outputs=["b.csv"], timings={})
    moved = work.rename(tmp_path / "elsewhere")
    assert stage_io.require_stage(moved / "down", "summarize")["upstream"][0]["stage"] == "tracks"
