"""Stages killed with SIGKILL mid-write: the rerun writes byte-identical outputs, never a mix.

Each stage runs as `sessionlen <stage>` in a child process on a tiny synthetic dataset and is
killed at points found by watching its temp output (created, half written, renamed into place)
and at fractions of its uninterrupted wall time, on a first run and over a complete older output.
After a kill the stage is either complete (its old output intact, or the new one whole) or
incomplete, and then the next stage refuses it with a one-line error naming the command to
rerun. The rerun must leave WORK byte-identical to an uninterrupted run.

Manifests are compared without `timings_s` and `finished_at` (wall-clock measurements of the
run), `code_version` (the checkout's commit, which a commit made while the tests run would
change) and the entries' run ids (new on every run, their own and those of the stages they
read). Every other byte of every file under WORK, hidden files included, is compared.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from utils.core import columns as C
from utils.core import stage_io, work_lock
from utils.core.errors import StageIncompleteError
from utils.synthetic.generate import generate_dataset

VOLATILE_FIELDS = ("timings_s", "finished_at", "code_version", "id")
# Appended to every file of an older output (and set in its manifest entry) so that a mix of
# old and new files shows, although both runs would write the same bytes.
OLD_MARK = b"#old output\n"
OLD_ENTRY_FIELD = "old_output"
RAW_COMMANDS = ("tracks", "denormalize")
KILL_TIMEOUT_S = 120.0
# How long a stopped stage runs between two looks at its temps.
SLICE_S = 0.0002
# Tries to catch a watched state before the stage gets past it.
ATTEMPTS = 5
TAKEOVER = ": taking over the lock left by pid "


@dataclass(frozen=True)
class Stage:
    """A stage as the CLI runs it: where its manifest entry lives and which paths it replaces."""

    command: str
    entry: str
    manifest_dir: str
    outputs: tuple[str, ...]
    next_command: str


STAGES = {stage.command: stage for stage in (
    Stage("tracks", "tracks", "tracks", ("tracks",), "metadata"),
    Stage("metadata", "metadata", "tracks", ("tracks/track_metadata.csv",), "denormalize"),
    Stage("denormalize", "denormalize", "user_dir", ("user_dir",), "summarize"),
    Stage("summarize", "summarize", "summary_dir", ("summary_dir",), "vocab"),
    Stage("vocab", "vocab", "final_dir", ("final_dir/vocab",), "session-data"),
    Stage("session-data", "session_data", "final_dir",
          ("final_dir/train", "final_dir/validate", "final_dir/test"), "profiles"),
)}


def cli_command(command: str, raw: Path) -> list[str]:
    """The installed `sessionlen` console script running `command` on WORK `work` (relative)."""
    script = Path(sys.executable).with_name("sessionlen")
    launcher = [str(script)] if script.exists() else [sys.executable, "-m", "utils.cli"]
    args = [*launcher, command, "--work", "work"]
    return [*args, "--raw", str(raw)] if command in RAW_COMMANDS else args


def offline_env() -> dict[str, str]:
    """The environment without an API key: the metadata stage runs offline and deterministic."""
    return {k: v for k, v in os.environ.items() if k != "LASTFM_API_KEY"}


def run_stage(cwd: Path, raw: Path, command: str, **kwargs) -> subprocess.CompletedProcess:
    """Run one stage to its end in `cwd` (WORK is `cwd/work`)."""
    return subprocess.run(cli_command(command, raw), cwd=cwd, env=offline_env(),
                          capture_output=True, text=True, timeout=600, **kwargs)


def stable_manifest(data: bytes) -> bytes:
    """A manifest without its volatile fields, re-serialized canonically."""
    manifest = json.loads(data)
    for entry in manifest.values():
        for name in VOLATILE_FIELDS:
            entry.pop(name, None)
        for upstream in entry.get("upstream", []):
            upstream.pop("id")
    return json.dumps(manifest, sort_keys=True).encode()


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file (hidden ones too) and folder under `root`; manifests without volatile fields.

    WORK/.locks is left out: it records which process writes a stage (pid, time), not data.
    """
    files: dict[str, bytes | None] = {}
    for folder, dirs, names in os.walk(root):
        rel = Path(folder).relative_to(root)
        if rel == Path("."):
            dirs[:] = [d for d in dirs if d != work_lock.LOCK_DIR]
        for name in dirs:
            files[f"{rel / name}/"] = None
        for name in names:
            data = (Path(folder) / name).read_bytes()
            files[str(rel / name)] = stable_manifest(data) if name == stage_io.MANIFEST else data
    return files


def stage_files(work: Path, stage: Stage) -> dict[str, bytes | None]:
    """The files of a stage's own outputs (its manifests excluded)."""
    whole = snapshot(work)
    return {path: data for path, data in whole.items()
            if any(path == out or path.startswith(f"{out}/") for out in stage.outputs)
            and not path.endswith(stage_io.MANIFEST)}


def stage_state(work: Path, stage: Stage) -> dict[str, object]:
    """A complete stage: its output files and its manifest entry without volatile fields."""
    entry = stage_io.require_stage(work / stage.manifest_dir, stage.entry)
    return {"files": stage_files(work, stage),
            "entry": {k: v for k, v in entry.items() if k not in VOLATILE_FIELDS}}


def is_complete(work: Path, stage: Stage) -> bool:
    """Whether the next stage would accept this stage's output."""
    try:
        stage_io.require_stage(work / stage.manifest_dir, stage.entry)
    except StageIncompleteError:
        return False
    return True


def remove_outputs(work: Path, stage: Stage) -> None:
    """Make WORK look as before the stage's first run: no outputs, no manifest entry."""
    for rel in stage.outputs:
        path = work / rel
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    if (work / stage.manifest_dir).is_dir():
        stage_io.forget_stage(work / stage.manifest_dir, stage.entry)


def mark_outputs_old(work: Path, stage: Stage) -> None:
    """Make the stage's complete output distinguishable from what the next run writes."""
    for rel in stage.outputs:
        path = work / rel
        for file in [path] if path.is_file() else sorted(path.rglob("*")):
            if file.is_file() and file.name != stage_io.MANIFEST:
                with open(file, "ab") as fh:
                    fh.write(OLD_MARK)
    stage_io.annotate_stage(work / stage.manifest_dir, stage.entry, **{OLD_ENTRY_FIELD: True})


def temp_paths(work: Path, stage: Stage, pid: int) -> list[Path]:
    """Where a run with this process id writes the stage's outputs before renaming them."""
    return [(work / rel).with_name(f".{Path(rel).name}.tmp-{pid}") for rel in stage.outputs]


def tree_bytes(paths: list[Path]) -> int:
    """Bytes in the files at or under `paths` (those that still exist)."""
    total = 0
    for path in paths:
        try:
            if path.is_file():
                total += path.stat().st_size
            else:
                for folder, _, names in os.walk(path):
                    total += sum(os.lstat(os.path.join(folder, n)).st_size for n in names)
        except FileNotFoundError:
            continue  # renamed or removed while walking
    return total


@dataclass
class Reference:
    """An uninterrupted run of a stage over the template WORK."""

    files: dict[str, bytes | None]
    state: dict[str, object]
    seconds: float
    output_bytes: int


@dataclass
class Pipeline:
    """A synthetic dataset, a complete WORK built from it, and uninterrupted runs per stage."""

    root: Path
    raw: Path
    template: Path
    references: dict[str, Reference] = field(default_factory=dict)

    def copy(self, dest: Path) -> Path:
        """A copy of the complete template WORK as `dest/work` (mtimes kept); returns `dest`."""
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copytree(self.template / "work", dest / "work")
        return dest

    def reference(self, stage: Stage) -> Reference:
        """The stage rerun uninterrupted over a copy of the template (computed once)."""
        if stage.command not in self.references:
            cwd = self.copy(self.root / f"reference-{stage.command}")
            start = time.monotonic()
            result = run_stage(cwd, self.raw, stage.command)
            seconds = time.monotonic() - start
            assert result.returncode == 0, result.stderr
            work = cwd / "work"
            self.references[stage.command] = Reference(
                snapshot(work), stage_state(work, stage), seconds,
                sum(len(d) for d in stage_files(work, stage).values() if d))
        return self.references[stage.command]


def build_pipeline(root: Path) -> Pipeline:
    """Generate the tiny synthetic dataset and run every stage once on it."""
    raw = root / "raw"
    generate_dataset(raw, scale="tiny", seed=3)
    # Two malformed lines, so that tracks and denormalize also write WORK/rejects/.
    with open(raw / C.PLAYS_FILE, "ab") as fh:
        fh.write(b"not a play\nuser_000001\t2009-13-45T00:00:00Z\t\tartist\t\ttrack\n")
    template = root / "template"
    template.mkdir()
    for command in STAGES:
        result = run_stage(template, raw, command)
        assert result.returncode == 0, f"{command}: {result.stderr}"
    return Pipeline(root, raw, template)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    """The dataset and complete WORK shared by this module's tests."""
    return build_pipeline(tmp_path_factory.mktemp("pipeline"))


@dataclass(frozen=True)
class KillReport:
    """What one kill caught: whether the process was still running, and the temps it left."""

    point: str
    killed: bool
    temps_left: int
    temp_bytes: int


def kill_condition(point: str, temps: list[Path], reference: Reference
                   ) -> Callable[[float], bool]:
    """When to kill, given the seconds since the start: a state of the temps or a share of the
    uninterrupted run. Checked while the process is stopped, so the kill lands in that state.

    `half-written` also fires once the temps are renamed: an output written by one write()
    call (unique_tracks.csv) is never seen half-written.
    """
    appeared = [False]

    def renamed(every: bool) -> bool:
        exists = [p.exists() for p in temps]
        appeared[0] = appeared[0] or all(exists)
        return appeared[0] and not (any(exists) if every else all(exists))

    if point == "created":
        return lambda _: any(p.exists() for p in temps)
    if point == "half-written":
        return lambda _: (tree_bytes(temps) >= reference.output_bytes / 2) or renamed(True)
    if point == "first-renamed":
        return lambda _: renamed(False)
    if point == "renamed":
        return lambda _: renamed(True)
    share = float(point.removeprefix("t="))
    return lambda elapsed: elapsed >= share * reference.seconds


def pause(proc: subprocess.Popen) -> bool:
    """SIGSTOP the process and wait until it has stopped; False if it exited instead."""
    os.kill(proc.pid, signal.SIGSTOP)
    _, status = os.waitpid(proc.pid, os.WUNTRACED)
    if os.WIFSTOPPED(status):
        return True
    proc.returncode = os.waitstatus_to_exitcode(status)
    return False


def kill_stage(cwd: Path, pipeline: Pipeline, stage: Stage, point: str) -> KillReport:
    """Run the stage in short slices between stops; SIGKILL it once `point` is reached.

    Stepping (SIGCONT, a fraction of a millisecond, SIGSTOP) instead of polling a running
    process means a busy machine cannot let the stage run past the state being watched for.
    """
    reference = pipeline.reference(stage)
    proc = subprocess.Popen(cli_command(stage.command, pipeline.raw), cwd=cwd, env=offline_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    temps = temp_paths(cwd / "work", stage, proc.pid)
    condition = kill_condition(point, temps, reference)
    start = time.monotonic()
    try:
        running = pause(proc)
        while running and not condition(time.monotonic() - start):
            assert time.monotonic() - start < KILL_TIMEOUT_S, f"{stage.command}: no {point}"
            os.kill(proc.pid, signal.SIGCONT)
            time.sleep(SLICE_S)
            running = pause(proc)
        if running:
            os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.returncode is None:
            proc.kill()
            proc.wait()
    left = [p for p in temps if p.exists()]
    return KillReport(point, proc.returncode == -signal.SIGKILL, len(left), tree_bytes(left))


def assert_next_stage_refuses(cwd: Path, pipeline: Pipeline, stage: Stage) -> None:
    """The next stage exits 2 with one line naming the command to rerun, and writes nothing."""
    before = snapshot(cwd / "work")
    result = run_stage(cwd, pipeline.raw, stage.next_command)
    # A next stage writing the same folder first takes over the lock the killed one left.
    lines = [line for line in result.stderr.strip().splitlines() if TAKEOVER not in line]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith(f"sessionlen {stage.next_command}: error:")
    assert f"`sessionlen {stage.command}`" in lines[0], lines[0]
    assert snapshot(cwd / "work") == before


def prepare(pipeline: Pipeline, dest: Path, stage: Stage, over_old: bool
            ) -> dict[str, object] | None:
    """A fresh WORK in `dest`: the stage never run, or its complete output marked old (whose
    state is returned)."""
    if dest.exists():
        shutil.rmtree(dest)
    work = pipeline.copy(dest) / "work"
    if not over_old:
        remove_outputs(work, stage)
        return None
    mark_outputs_old(work, stage)
    return stage_state(work, stage)


def kill_and_rerun(pipeline: Pipeline, dest: Path, stage: Stage, point: str, over_old: bool
                   ) -> KillReport:
    """One kill of a stage (first run, or over its old output), checked, then the rerun.

    A stage that finished before reaching a watched state (a busy machine let it run a long
    slice) is tried again on a fresh WORK; a kill at a share of the run time is taken as is.
    """
    for _ in range(ATTEMPTS):
        old = prepare(pipeline, dest, stage, over_old)
        report = kill_stage(dest, pipeline, stage, point)
        if report.killed or point.startswith("t="):
            break
    work = dest / "work"
    reference = pipeline.reference(stage)
    if is_complete(work, stage):
        allowed = [reference.state] if old is None else [reference.state, old]
        assert stage_state(work, stage) in allowed, f"{stage.command} {point}: old/new mix"
    else:
        assert_next_stage_refuses(dest, pipeline, stage)
    result = run_stage(dest, pipeline.raw, stage.command)
    assert result.returncode == 0, result.stderr
    now = snapshot(work)
    differing = sorted(k for k in now.keys() | reference.files.keys()
                       if now.get(k, b"<absent>") != reference.files.get(k, b"<absent>"))
    assert not differing, f"{stage.command} killed at {point}: rerun differs in {differing[:5]}"
    return report


@pytest.mark.parametrize("command", [
    "tracks", "denormalize", "summarize", "session-data",
    pytest.param("metadata", marks=pytest.mark.slow),
    pytest.param("vocab", marks=pytest.mark.slow),
])
def test_stage_killed_mid_write_reruns_identically(
        pipeline: Pipeline, tmp_path: Path, command: str) -> None:
    report = kill_and_rerun(pipeline, tmp_path / "run", STAGES[command], "created",
                            over_old=False)
    assert report.killed and report.temps_left, report


KILL_POINTS = ("created", "half-written", "first-renamed", "renamed", "t=0.3", "t=0.6", "t=0.9")


@pytest.mark.slow
@pytest.mark.parametrize("over_old", [False, True], ids=["first-run", "over-old-output"])
@pytest.mark.parametrize("command", list(STAGES))
def test_stage_killed_at_every_point_reruns_identically(
        pipeline: Pipeline, tmp_path: Path, command: str, over_old: bool) -> None:
    stage = STAGES[command]
    reports = {point: kill_and_rerun(pipeline, tmp_path / point, stage, point, over_old)
               for point in KILL_POINTS}
    for report in reports.values():
        print(f"{command} {'over old' if over_old else 'first run'}: {report}")
    assert reports["created"].killed and reports["created"].temps_left, reports["created"]
    for point in ("half-written", "first-renamed", "renamed"):
        assert reports[point].killed, reports[point]
    assert not reports["renamed"].temps_left, reports["renamed"]


def test_stale_temps_of_dead_processes_are_removed(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    target = tmp_path / "user_dir"
    (tmp_path / f".user_dir.tmp-{dead_pid}" / "u1").mkdir(parents=True)
    (tmp_path / f".user_dir.old-{dead_pid}").mkdir()
    live = tmp_path / f".user_dir.tmp-{os.getppid()}"
    live.mkdir()
    other = tmp_path / f".user_dir2.tmp-{dead_pid}"
    other.mkdir()
    stage_io.remove_stale_temps(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name])

    manifest = tmp_path / stage_io.MANIFEST
    (tmp_path / f".{stage_io.MANIFEST}.tmp-{dead_pid}").write_text("{\"half")
    stage_io.write_json_atomic(manifest, {"a": 1})
    assert not list(tmp_path.glob(f".{stage_io.MANIFEST}.tmp-*"))
    assert json.loads(manifest.read_text()) == {"a": 1}
