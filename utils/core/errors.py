"""Errors a user can cause: the CLI prints them as one line and exits non-zero."""

from __future__ import annotations

import errno
import os

# OS errors the user can fix (a full disk, a file-size limit, a read-only or forbidden
# directory), with what to do about each.
_REMEDIES = {
    errno.ENOSPC: "free space on that filesystem or use a directory on another one, then rerun",
    errno.EDQUOT: "free space or raise the disk quota, then rerun",
    errno.EFBIG: "raise the file-size limit (ulimit -f) or use another filesystem, then rerun",
    errno.EROFS: "the filesystem is mounted read-only: use a writable directory",
    errno.EACCES: "give this user access to it or use another directory",
    errno.EPERM: "give this user access to it or use another directory",
}
FIXABLE_ERRNOS = frozenset(_REMEDIES)


class SessionlenError(Exception):
    """A user-facing error: bad input, a bad parameter, a missing stage; never a bug."""

    exit_code = 2


class StageIncompleteError(SessionlenError):
    """A stage's input directory has no complete manifest."""


class ApiKeyError(SessionlenError):
    """The Last.fm API refused the key (error 10 or 26): crawling must stop at once."""

    exit_code = 3


class OutputWriteError(SessionlenError):
    """A stage output could not be written for a reason the user can fix (disk full, read-only)."""


class DatasetTooSmallError(SessionlenError):
    """The data is valid but too small for a stage: the pipeline runner skips that notebook."""


class WorkBusyError(SessionlenError):
    """Another process holds the lock of a WORK stage and this one was told not to wait."""

    # sysexits' EX_TEMPFAIL: nothing is wrong, try again later.
    exit_code = 75


def describe_os_error(exc: OSError) -> str:
    """What happened, with the errno name, and what to do when the user can fix it."""
    if exc.errno is None:
        # Arrow's I/O errors carry no errno and may span lines; the first one says what failed.
        return next(iter(str(exc).splitlines()), type(exc).__name__)
    what = f"{exc.strerror or os.strerror(exc.errno)} ({errno.errorcode.get(exc.errno, exc.errno)})"
    remedy = _REMEDIES.get(exc.errno)
    return f"{what}; {remedy}" if remedy else what


def os_error_line(exc: OSError) -> str:
    """One line naming the path(s) an OS error is about, what happened and what to do."""
    paths = " -> ".join(str(p) for p in (exc.filename, exc.filename2) if p is not None)
    return f"{paths}: {describe_os_error(exc)}" if paths else describe_os_error(exc)
