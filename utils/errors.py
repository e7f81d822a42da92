"""Errors a user can cause: the CLI prints them as one line and exits non-zero."""

from __future__ import annotations


class SessionlenError(Exception):
    """A user-facing error: bad input, a bad parameter, a missing stage; never a bug."""

    exit_code = 2


class StageIncompleteError(SessionlenError):
    """A stage's input directory has no complete manifest."""


class ApiKeyError(SessionlenError):
    """The Last.fm API refused the key (error 10 or 26): crawling must stop at once."""

    exit_code = 3
