"""Advisory locks on WORK stages: one writer per stage directory; readers never see it half-done.

A stage takes an exclusive `flock` on the directory it writes and a shared one on each directory it
reads, through `WORK/.locks/<dir>.lock`. A second writer waits, saying who holds the lock, or fails
at once when told not to wait (`--no-wait`). The kernel drops a flock when its process ends, however
it ends, so a killed holder never blocks anyone; the holder file it leaves (`<dir>.holder`: pid,
command, since when) is recognised as stale by the next writer, reported and replaced.

Readers record no holder file: they hold their lock for one read, and must work on a read-only WORK.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import inspect
import json
import os
import shlex
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from utils.core.errors import WorkBusyError
from utils.core.stage_io import process_alive, writing

LOCK_DIR = ".locks"
NO_WAIT_ENV = "SESSIONLEN_NO_WAIT"
COMMAND_ENV = "SESSIONLEN_COMMAND"
# Jupyter names the notebook a kernel runs in this variable; papermill kernels go without.
JUPYTER_SESSION_ENV = "JPY_SESSION_NAME"
# A writer flocks before it records itself: give it this long to appear in the holder file.
HOLDER_WAIT_S = 1.0
HOLDER_POLL_S = 0.05

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Holder:
    """Who holds a stage's exclusive lock, as its holder file records it."""

    pid: int
    command: str
    since: str

    def describe(self) -> str:
        """pid, command and start, for another process's message."""
        return f"pid {self.pid} ({self.command}) has been writing it since {self.since}"


# Per thread: two threads of one process exclude each other like two processes (own descriptors).
_LOCAL = threading.local()


def _held() -> dict[Path, bool]:
    """The locks this thread holds: lock file -> whether exclusive."""
    if not hasattr(_LOCAL, "held"):
        _LOCAL.held = {}
    return _LOCAL.held


def lock_path(stage_dir: Path) -> Path:
    """WORK/.locks/<dir>.lock: outside the directory, which a stage replaces by renaming."""
    stage_dir = Path(os.path.abspath(stage_dir))
    return stage_dir.parent / LOCK_DIR / f"{stage_dir.name}.lock"


def holder_path(stage_dir: Path) -> Path:
    """The file naming the current writer of a stage directory."""
    return lock_path(stage_dir).with_suffix(".holder")


def current_command() -> str:
    """What this process is, for other processes' messages: a notebook, or its command line."""
    named = os.environ.get(COMMAND_ENV) or ""
    if named:
        return named
    if os.environ.get(JUPYTER_SESSION_ENV):
        return f"notebook {os.environ[JUPYTER_SESSION_ENV]}"
    argv = sys.argv if sys.argv and sys.argv[0] else ["python"]
    if argv[0] == "-c":
        program = [Path(sys.executable).name, "-c"]
    elif Path(argv[0]).resolve() == Path(__file__).resolve().parents[1] / "cli.py":
        program = ["sessionlen"]  # python -m utils.cli
    else:
        program = [Path(argv[0]).name]
    return shlex.join([*program, *argv[1:]])


@contextlib.contextmanager
def acting_as(command: str) -> Iterator[None]:
    """Call this process and the kernels it starts `command` in other processes' lock messages."""
    before = os.environ.get(COMMAND_ENV)
    os.environ[COMMAND_ENV] = command
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(COMMAND_ENV, None)
        else:
            os.environ[COMMAND_ENV] = before


def never_wait() -> None:
    """Make busy stage locks fail at once in this process and the kernels it starts."""
    os.environ[NO_WAIT_ENV] = "1"


def read_holder(stage_dir: Path) -> Holder | None:
    """The recorded writer of a stage directory, or None (no record, or an unreadable one)."""
    try:
        data = json.loads(holder_path(stage_dir).read_text(encoding="utf-8"))
        return Holder(int(data["pid"]), str(data["command"]), str(data["since"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _record_holder(stage_dir: Path) -> None:
    """Write this process as the writer of `stage_dir` (temp file, then rename)."""
    path = holder_path(stage_dir)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    payload = {"pid": os.getpid(), "command": current_command(),
               "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        tmp.write_text(json.dumps(payload, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _take_over(stage_dir: Path) -> None:
    """Report a holder file left by a writer that no longer holds the lock we now hold."""
    stale = read_holder(stage_dir)
    if stale is None:
        return
    state = "is no longer running" if not process_alive(stale.pid) else "no longer holds it"
    print(f"{stage_dir}: taking over the lock left by pid {stale.pid} ({stale.command}, "
          f"writing since {stale.since}), which {state}", file=sys.stderr, flush=True)


def _who(stage_dir: Path, fd: int, mode: int) -> str | None:
    """Who holds the lock, or None once this process got it while looking."""
    deadline = time.monotonic() + HOLDER_WAIT_S
    while True:
        with contextlib.suppress(BlockingIOError):
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return None
        holder = read_holder(stage_dir)
        if holder is not None and process_alive(holder.pid):
            return holder.describe()
        if time.monotonic() >= deadline:
            return "another process is reading it"
        time.sleep(HOLDER_POLL_S)


def _acquire(stage_dir: Path, fd: int, exclusive: bool) -> None:
    """Take the flock: at once if free, else wait saying who holds it, or fail if told not to."""
    mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
    who = _who(stage_dir, fd, mode)
    if who is None:
        return
    line = f"{stage_dir} is in use: {who}"
    if os.environ.get(NO_WAIT_ENV) == "1":
        raise WorkBusyError(f"{line}; rerun when it has finished")
    print(f"{line}; waiting for it to finish (--no-wait exits instead)", file=sys.stderr,
          flush=True)
    fcntl.flock(fd, mode)


def _open_lock(stage_dir: Path, exclusive: bool) -> int | None:
    """The lock file's descriptor; None for a reader when no writer ever created it."""
    path = lock_path(stage_dir)
    if not exclusive:
        try:
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            return None
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)


@contextlib.contextmanager
def stage_lock(stage_dir: Path, exclusive: bool) -> Iterator[None]:
    """Hold a stage directory's lock for the block: exclusive to write it, shared to read it."""
    stage_dir = Path(stage_dir)
    key, held = lock_path(stage_dir), _held()
    if key in held:
        # Already held by this thread (a stage reading what it writes): nothing more to take.
        if exclusive and not held[key]:
            raise RuntimeError(f"{stage_dir}: a shared lock cannot become exclusive in place")
        yield
        return
    with writing(stage_dir, key.parent) if exclusive else contextlib.nullcontext():
        fd = _open_lock(stage_dir, exclusive)
    if fd is None:
        yield
        return
    try:
        _acquire(stage_dir, fd, exclusive)
        if exclusive:
            _take_over(stage_dir)
            with writing(stage_dir, key.parent):
                _record_holder(stage_dir)
        held[key] = exclusive
        try:
            yield
        finally:
            del held[key]
            if exclusive:
                # Removed before the flock is released, so a record never outlives its lock.
                holder_path(stage_dir).unlink(missing_ok=True)
    finally:
        os.close(fd)


@contextlib.contextmanager
def stage_locks(work: Path, writes: str, reads: Sequence[str] = ()) -> Iterator[None]:
    """WORK/<writes> exclusively, then each WORK/<reads> shared, for the block."""
    work = Path(work)
    with contextlib.ExitStack() as stack:
        stack.enter_context(stage_lock(work / writes, exclusive=True))
        for name in reads:
            stack.enter_context(stage_lock(work / name, exclusive=False))
        yield


def locked_stage(writes: str, reads: Sequence[str] = ()) -> Callable[[F], F]:
    """Run a stage function (it takes `work`) holding the locks of what it writes and reads."""
    def decorate(func: F) -> F:
        signature = inspect.signature(func)

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            work = signature.bind(*args, **kwargs).arguments["work"]
            with stage_locks(Path(work), writes, reads):
                return func(*args, **kwargs)
        return wrapper  # type: ignore[return-value]
    return decorate


def reading_stage(stage_dir: Path) -> contextlib.AbstractContextManager[None]:
    """A shared lock on a stage directory: its writer cannot replace it while the block reads."""
    return stage_lock(stage_dir, exclusive=False)
