"""Resource faults during a stage: a full disk, a file-size limit, a read-only WORK.

Every stage CLI must then fail with one line naming the path, what happened and what to do,
exit 2, and leave no partial output looking complete: no temp file or folder left behind, no
manifest entry for a partial output (so the next stage refuses it), an older complete output
intact. A full disk is a small tmpfs mounted over WORK when mount is permitted (tests run as
root in CI); a file-size limit (RLIMIT_FSIZE, enforced by the kernel without privileges) is the
other way to make writes fail mid-output, and runs everywhere. A read-only WORK is a tmpfs
remounted read-only, or, for a non-root user, folders without write permission.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import resource
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from test_stage_kills import (
    RAW_COMMANDS,
    STAGES,
    Pipeline,
    Stage,
    build_pipeline,
    cli_command,
    is_complete,
    mark_outputs_old,
    offline_env,
    remove_outputs,
    snapshot,
    stage_files,
    stage_state,
)

from utils.core import stage_io
from utils.core.errors import OutputWriteError, describe_os_error, os_error_line

TEMP_NAME = re.compile(r"^\..+\.(tmp|old)-\d+$")
PAGE = 4096


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    """The dataset and complete WORK shared by this module's tests."""
    return build_pipeline(tmp_path_factory.mktemp("pipeline"))


def _mount(*args: str) -> bool:
    """Run mount/umount; False when the command is missing or not permitted."""
    try:
        return subprocess.run(args, capture_output=True, timeout=60).returncode == 0
    except FileNotFoundError:
        return False


@contextlib.contextmanager
def tmpfs(target: Path, size: int) -> Iterator[bool]:
    """Mount a tmpfs of `size` bytes on `target` for the block (yields False if not permitted)."""
    target.mkdir(parents=True, exist_ok=True)
    mounted = _mount("mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(target))
    try:
        yield mounted
    finally:
        if mounted:
            assert _mount("umount", str(target)), f"could not unmount {target}"


@pytest.fixture(scope="module")
def can_mount(tmp_path_factory: pytest.TempPathFactory) -> bool:
    """Whether this process may mount a tmpfs (root outside a locked-down container)."""
    with tmpfs(tmp_path_factory.mktemp("probe"), 1 << 20) as mounted:
        return mounted


def used_bytes(path: Path) -> int:
    """Bytes in use on the filesystem holding `path`."""
    stat = os.statvfs(path)
    return (stat.f_blocks - stat.f_bfree) * stat.f_frsize


def pages(path: Path) -> int:
    """Bytes the files at or under `path` take on a tmpfs (whole pages)."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(-(-p.stat().st_size // PAGE) * PAGE for p in files)


def run_in(cwd: Path, pipeline: Pipeline, command: str,
           preexec: Callable[[], None] | None = None) -> subprocess.CompletedProcess:
    """Run one stage CLI with WORK `cwd/work`."""
    return subprocess.run(cli_command(command, pipeline.raw), cwd=cwd, env=offline_env(),
                          capture_output=True, text=True, timeout=600, preexec_fn=preexec)


def assert_one_line(result: subprocess.CompletedProcess, stage: Stage, *needles: str) -> str:
    """Exit 2 and one line on stderr naming one of the stage's outputs and every needle."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    line = lines[0]
    assert line.startswith(f"sessionlen {stage.command}: error: "), line
    # Stages reading the raw plays write their rejects first.
    rejects = ("rejects",) if stage.command in RAW_COMMANDS else ()
    paths = [f"work/{rel}" for rel in (*stage.outputs, stage.manifest_dir, *rejects)]
    assert any(p in line for p in paths), line
    for needle in needles:
        assert needle in line, line
    return line


def temps_left(work: Path) -> list[str]:
    """Hidden temp files or folders of an interrupted write anywhere under WORK."""
    return sorted(str(p.relative_to(work)) for p in work.rglob(".*") if TEMP_NAME.match(p.name))


def assert_nothing_partial_looks_complete(work: Path, stage: Stage,
                                          old: dict[str, object] | None) -> None:
    """No temps; the stage incomplete, or complete with exactly its old output."""
    assert temps_left(work) == []
    if is_complete(work, stage):
        assert old is not None, f"{stage.command}: a failed first run reads as complete"
        assert stage_state(work, stage) == old, f"{stage.command}: old output not intact"


def prepare_work(pipeline: Pipeline, cwd: Path, stage: Stage, over_old: bool
                 ) -> dict[str, object] | None:
    """Copy the template WORK into `cwd/work`; without the stage's outputs, or with them marked
    old (returning that old state)."""
    shutil.copytree(pipeline.template / "work", cwd / "work")
    if not over_old:
        remove_outputs(cwd / "work", stage)
        return None
    mark_outputs_old(cwd / "work", stage)
    return stage_state(cwd / "work", stage)


def output_pages(pipeline: Pipeline, stage: Stage) -> int:
    """Bytes the stage's outputs take on a tmpfs, measured on the template."""
    return sum(pages(pipeline.template / "work" / rel) for rel in stage.outputs)


def fill_tmpfs_and_run(pipeline: Pipeline, mnt: Path, stage: Stage, over_old: bool
                       ) -> tuple[subprocess.CompletedProcess, dict[str, object] | None]:
    """Run the stage on a tmpfs WORK with room for half of its output."""
    old = prepare_work(pipeline, mnt, stage, over_old)
    room = used_bytes(mnt) + output_pages(pipeline, stage) // 2
    assert _mount("mount", "-o", f"remount,size={room}", str(mnt))
    return run_in(mnt, pipeline, stage.command), old


@pytest.mark.parametrize("command", list(STAGES))
def test_disk_full_fails_in_one_line_and_leaves_nothing_complete(
        pipeline: Pipeline, can_mount: bool, tmp_path: Path, command: str) -> None:
    if not can_mount:
        pytest.skip("mount not permitted here; the file-size-limit tests cover a failing write")
    stage = STAGES[command]
    with tmpfs(tmp_path / "mnt", 64 << 20):
        result, _ = fill_tmpfs_and_run(pipeline, tmp_path / "mnt", stage, over_old=False)
        assert_one_line(result, stage, "No space left on device (ENOSPC)", "free space")
        assert_nothing_partial_looks_complete(tmp_path / "mnt" / "work", stage, None)


@pytest.mark.slow
@pytest.mark.parametrize("command", list(STAGES))
def test_disk_full_over_an_old_output_then_rerun_with_room(
        pipeline: Pipeline, can_mount: bool, tmp_path: Path, command: str) -> None:
    if not can_mount:
        pytest.skip("mount not permitted here; the file-size-limit tests cover a failing write")
    stage = STAGES[command]
    mnt = tmp_path / "mnt"
    with tmpfs(mnt, 64 << 20):
        result, old = fill_tmpfs_and_run(pipeline, mnt, stage, over_old=True)
        assert_one_line(result, stage, "(ENOSPC)")
        assert_nothing_partial_looks_complete(mnt / "work", stage, old)
        assert _mount("mount", "-o", "remount,size=64m", str(mnt))
        rerun = run_in(mnt, pipeline, stage.command)
        assert rerun.returncode == 0, rerun.stderr
        # Same relative WORK path as the uninterrupted reference: the bytes must match.
        assert snapshot(mnt / "work") == pipeline.reference(stage).files


def file_size_limit(limit: int) -> Callable[[], None]:
    """A child-process hook: files may not grow past `limit` bytes (writes fail with EFBIG)."""
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def largest_output_file(pipeline: Pipeline, stage: Stage) -> int:
    """Size of the stage's largest output file, measured on the template."""
    return max(len(data) for data in stage_files(pipeline.template / "work", stage).values()
               if data)


@pytest.mark.parametrize("command", [
    "tracks", "denormalize",
    pytest.param("metadata", marks=pytest.mark.slow),
    pytest.param("summarize", marks=pytest.mark.slow),
    pytest.param("vocab", marks=pytest.mark.slow),
    pytest.param("session-data", marks=pytest.mark.slow),
])
def test_file_size_limit_fails_in_one_line_and_leaves_nothing_complete(
        pipeline: Pipeline, tmp_path: Path, command: str) -> None:
    stage = STAGES[command]
    for over_old in (False, True):
        cwd = tmp_path / ("over-old" if over_old else "first-run")
        old = prepare_work(pipeline, cwd, stage, over_old)
        limit = file_size_limit(largest_output_file(pipeline, stage) // 2)
        result = run_in(cwd, pipeline, stage.command, preexec=limit)
        assert_one_line(result, stage, "File too large (EFBIG)", "ulimit -f")
        assert_nothing_partial_looks_complete(cwd / "work", stage, old)


def test_read_only_work_fails_in_one_line_and_changes_nothing(
        pipeline: Pipeline, can_mount: bool, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    with tmpfs(mnt, 64 << 20):
        if can_mount:
            shutil.copytree(pipeline.template / "work", mnt / "work")
            assert _mount("mount", "-o", "remount,ro", str(mnt))
            needle = "Read-only file system (EROFS)"
        elif os.geteuid() != 0:
            shutil.copytree(pipeline.template / "work", mnt / "work")
            for folder in [mnt / "work", *(p for p in (mnt / "work").rglob("*") if p.is_dir())]:
                folder.chmod(0o555)
            needle = "Permission denied (EACCES)"
        else:
            pytest.skip("root ignores permissions and may not mount a read-only tmpfs here")
        before = snapshot(mnt / "work")
        for stage in STAGES.values():
            assert_one_line(run_in(mnt, pipeline, stage.command), stage, needle)
        assert snapshot(mnt / "work") == before


def test_missing_work_under_a_read_only_folder_is_named(
        pipeline: Pipeline, can_mount: bool, tmp_path: Path) -> None:
    if not can_mount:
        pytest.skip("mount not permitted here: no read-only folder to create WORK in")
    mnt = tmp_path / "mnt"
    with tmpfs(mnt, 1 << 20):
        assert _mount("mount", "-o", "remount,ro", str(mnt))
        result = run_in(mnt, pipeline, "tracks")
        assert_one_line(result, STAGES["tracks"], "(EROFS)")
        assert not (mnt / "work").exists()


def test_write_errors_name_the_output_and_pass_other_paths_through(tmp_path: Path) -> None:
    target = tmp_path / "user_dir"
    full = r"user_dir: cannot write: .*\(ENOSPC\); free"
    with pytest.raises(OutputWriteError, match=full), stage_io.writing(target):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    elsewhere = PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(tmp_path / "raw"))
    with pytest.raises(PermissionError) as raised, stage_io.writing(target):
        raise elsewhere
    assert raised.value is elsewhere
    inside = PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(target / "u1"))
    with pytest.raises(OutputWriteError, match="give this user access"), \
            stage_io.writing(target):
        raise inside


@pytest.mark.parametrize(("code", "needle"), [
    (errno.ENOSPC, "free space"), (errno.EDQUOT, "quota"), (errno.EFBIG, "ulimit -f"),
    (errno.EROFS, "read-only"), (errno.EACCES, "access"), (errno.EPERM, "access"),
])
def test_fixable_os_errors_say_what_to_do(code: int, needle: str) -> None:
    line = os_error_line(OSError(code, os.strerror(code), "work/tracks"))
    assert line.startswith(f"work/tracks: {os.strerror(code)} ({errno.errorcode[code]}); ")
    assert needle in line and "\n" not in line
    assert describe_os_error(OSError(errno.EIO, os.strerror(errno.EIO))).endswith("(EIO)")
