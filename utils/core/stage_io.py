"""Atomic stage outputs and their manifests: a stage is complete only when its manifest says so."""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from utils.core.config import PROJECT_ROOT
from utils.core.errors import (
    FIXABLE_ERRNOS,
    OutputWriteError,
    SessionlenError,
    StageIncompleteError,
    describe_os_error,
)

MANIFEST = "_manifest.json"

# Which CLI command produces each stage: named in the error when a stage is missing.
STAGE_COMMANDS = {
    "tracks": "sessionlen tracks",
    "metadata": "sessionlen metadata",
    "denormalize": "sessionlen denormalize",
    "summarize": "sessionlen summarize",
    "vocab": "sessionlen vocab",
    "session_data": "sessionlen session-data",
    "profiles": "sessionlen profiles",
}


def code_version() -> str:
    """The git commit of the code (with '+dirty' when modified), or 'unknown' outside git."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True,
            check=True, timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_ROOT,
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def describe_input(path: Path, hash_limit_bytes: int = 64 << 20) -> dict[str, Any]:
    """Path, size and mtime of an input; its SHA-256 when small enough to hash cheaply."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        size = sum(p.stat().st_size for p in files)
        return {"path": str(path), "files": len(files), "bytes": size}
    stat = path.stat()
    info: dict[str, Any] = {"path": str(path), "bytes": stat.st_size, "mtime": stat.st_mtime}
    if stat.st_size <= hash_limit_bytes:
        info["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    return info


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_path(path: Path, kind: str) -> Path:
    """The hidden sibling `.name.<kind>-PID` this process writes `path` through."""
    return path.with_name(f".{path.name}.{kind}-{os.getpid()}")


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists (a signal-0 probe; it sends nothing)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, run by another user
    return True


def remove_stale_temps(path: Path) -> None:
    """Remove the temp siblings of `path` (`.name.tmp-PID`, `.name.old-PID`) of dead processes.

    A killed run leaves them behind; they are never read, only removed here. Those of a live
    process are kept: another run may be writing the same output right now.
    """
    path = Path(path)
    for kind in ("tmp", "old"):
        for stale in path.parent.glob(f".{glob.escape(path.name)}.{kind}-*"):
            pid = stale.name.rsplit("-", 1)[1]
            if pid.isdigit() and int(pid) != os.getpid() and process_alive(int(pid)):
                continue
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)


def _concerns(exc: OSError, paths: Sequence[Path]) -> bool:
    """Whether an OSError is about one of `paths` (or a folder above them) or names no path."""
    if exc.filename is None:
        return True
    failed = Path(os.path.abspath(os.fsdecode(exc.filename)))
    mine = [Path(os.path.abspath(p)) for p in paths]
    return any(failed == p or failed in p.parents or p in failed.parents for p in mine)


@contextlib.contextmanager
def writing(target: Path, *temps: Path) -> Iterator[None]:
    """Report a full disk, a size limit or a read-only/forbidden `target` as one line naming it.

    Write errors often carry no path (a full disk fails a write(), not an open()), so the
    output being written is named here. Permission errors about other paths (an input read
    inside the block) pass through unchanged.
    """
    try:
        yield
    except OSError as exc:
        space = exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)
        if exc.errno not in FIXABLE_ERRNOS or not (space or _concerns(exc, [target, *temps])):
            raise
        raise OutputWriteError(f"{target}: cannot write: {describe_os_error(exc)}") from exc


@contextlib.contextmanager
def atomic_file(path: Path, mode: str = "w", **open_kwargs: Any) -> Iterator[Any]:
    """Open a temp file beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    tmp = _temp_path(path, "tmp")
    with writing(path, tmp):
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(path)
        try:
            with open(tmp, mode, **open_kwargs) as fh:
                yield fh
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON through a temp file beside `path`, fsynced, then renamed over `path`."""
    with atomic_file(Path(path), encoding="utf-8") as fh:
        json.dump(payload, fh, indent=2, sort_keys=True, default=str)
        fh.write("\n")


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield an empty temp directory that replaces `final` only when the block succeeds.

    A crash or kill leaves at most hidden `.name.tmp-PID` / `.name.old-PID` directories, which
    the next run removes; `final` is either the old complete output, the new one, or absent
    (killed between the two renames), never a mix. Stages whose manifest is written after
    the rename read as incomplete until it is.
    """
    final = Path(final)
    tmp, old = _temp_path(final, "tmp"), _temp_path(final, "old")
    with writing(final, tmp, old):
        final.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(final)
        tmp.mkdir()
        try:
            yield tmp
            if final.exists():
                os.replace(final, old)
            os.replace(tmp, final)
            _fsync_dir(final.parent)
            shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def write_manifest(
    stage_dir: Path,
    stage: str,
    *,
    inputs: Sequence[Path],
    parameters: dict[str, Any],
    rows_in: int,
    rows_out: int,
    rows_rejected: int,
    outputs: Sequence[str],
    timings: dict[str, float],
) -> dict[str, Any]:
    """Record `stage` as complete in `stage_dir/_manifest.json`; call it after the outputs exist.

    Several stages may share a directory (tracks + metadata): each has its own entry. The
    counts must reconcile (rows_in = rows_out + rows_rejected) or the manifest is not written.
    """
    if rows_in != rows_out + rows_rejected:
        raise AssertionError(
            f"stage {stage}: rows_in {rows_in} != rows_out {rows_out} + rejected {rows_rejected}"
        )
    missing = [name for name in outputs if not (Path(stage_dir) / name).exists()]
    if missing:
        raise AssertionError(f"stage {stage}: outputs missing before manifest: {missing}")
    path = Path(stage_dir) / MANIFEST
    manifest = _read_manifest(path) if path.exists() else {}
    entry = {
        "stage": stage,
        "id": uuid.uuid4().hex,
        "inputs": [describe_input(Path(p)) for p in inputs],
        "upstream": upstream_entries(Path(stage_dir), stage, inputs),
        "parameters": parameters,
        "rows_in": rows_in,
        "rows_out": rows_out,
        "rows_rejected": rows_rejected,
        "outputs": list(outputs),
        "code_version": code_version(),
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    manifest[stage] = entry
    write_json_atomic(path, manifest)
    return entry


def upstream_entries(stage_dir: Path, stage: str, inputs: Sequence[Path]) -> list[dict[str, Any]]:
    """The manifest entries of the stages that wrote `inputs`: where each is and which run it was.

    An input is a stage directory (every entry of its manifest counts) or a file or folder inside
    one (the entries listing it among their outputs count). Only the stages of the same WORK
    folder (the parent of every stage directory) count: inputs from outside it, the raw files,
    are described by size and checksum in `inputs` instead. Directories are recorded relative to
    `stage_dir`, so a WORK folder moved or copied as a whole stays consistent.
    """
    work = Path(stage_dir).resolve().parent
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for path in map(Path, inputs):
        for manifest_dir in (path, path.parent):
            if (not (manifest_dir / MANIFEST).is_file()
                    or work not in manifest_dir.resolve().parents):
                continue
            inside = "" if manifest_dir == path else path.name
            for name, entry in _read_manifest(manifest_dir / MANIFEST).items():
                if (manifest_dir, name) == (stage_dir, stage) or (inside and not any(
                        out == inside or out.startswith(inside + "/") for out in entry["outputs"])):
                    continue
                where = os.path.relpath(manifest_dir, stage_dir)
                found[(where, name)] = {"dir": where, "stage": name, "id": entry.get("id")}
            break
    return list(found.values())


def stale_input(stage_dir: Path, entry: dict[str, Any]) -> str | None:
    """The first stage upstream of `entry`, however far, rebuilt or removed since it was read.

    None when every recorded input stage is still the run that was read (entries written before
    inputs were recorded have nothing to check).
    """
    pending = [(Path(stage_dir), entry)]
    checked: set[tuple[str, str]] = set()
    while pending:
        here, current = pending.pop()
        for up in current.get("upstream", []):
            where = Path(os.path.normpath(here / up["dir"]))
            if (str(where), up["stage"]) in checked:
                continue
            manifest = where / MANIFEST
            found = _read_manifest(manifest).get(up["stage"]) if manifest.is_file() else None
            if found is None or found.get("id") != up["id"]:
                return f"'{up['stage']}' in {where}"
            checked.add((str(where), up["stage"]))
            pending.append((where, found))
    return None


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise StageIncompleteError(f"{path}: unreadable manifest ({exc})") from exc


def forget_stage(stage_dir: Path, stage: str) -> None:
    """Drop a stage's manifest entry before rewriting its outputs.

    A stage writing several outputs cannot replace them in one rename; without its entry a
    half-replaced stage reads as incomplete instead of passing for the old, complete one.
    """
    path = Path(stage_dir) / MANIFEST
    if not path.exists():
        return
    manifest = _read_manifest(path)
    if manifest.pop(stage, None) is not None:
        write_json_atomic(path, manifest)


def annotate_stage(stage_dir: Path, stage: str, **fields: Any) -> None:
    """Add fields (counts a reader wants to see) to a completed stage's manifest entry."""
    path = Path(stage_dir) / MANIFEST
    manifest = _read_manifest(path)
    manifest[stage].update(fields)
    write_json_atomic(path, manifest)


def require_stage(stage_dir: Path, stage: str) -> dict[str, Any]:
    """Return the manifest entry of a complete, current stage, or fail naming the command to run.

    Current: no stage it read from (its declared inputs, and theirs) was rebuilt since.
    """
    path = Path(stage_dir) / MANIFEST
    command = STAGE_COMMANDS.get(stage, stage)
    if not path.exists():
        raise StageIncompleteError(
            f"{stage_dir}: stage '{stage}' has not completed (no {MANIFEST}); run `{command}` first"
        )
    entry = _read_manifest(path).get(stage)
    if entry is None:
        raise StageIncompleteError(
            f"{path}: no complete '{stage}' entry; run `{command}` first"
        )
    missing = [name for name in entry["outputs"] if not (Path(stage_dir) / name).exists()]
    if missing:
        raise StageIncompleteError(
            f"{stage_dir}: outputs {missing} of stage '{stage}' are missing; run `{command}` again"
        )
    rebuilt = stale_input(Path(stage_dir), entry)
    if rebuilt is not None:
        raise StageIncompleteError(
            f"{stage_dir}: stage '{stage}' is stale: its input stage {rebuilt} was rebuilt or "
            f"removed since; run `{command}` again"
        )
    return entry


def require_file(path: Path, what: str) -> Path:
    """Fail with a one-line error if an input file does not exist."""
    path = Path(path)
    if not path.is_file():
        raise SessionlenError(f"{path}: {what} not found")
    return path


class Timer:
    """Context manager measuring wall time of a block into `.seconds`."""

    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start
