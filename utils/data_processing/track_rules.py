"""The two rules that define a unique track, which both engines of the tracks stage apply.

A track is identified by the join keys of its artist and track names, and its duration evidence
is the gap to the same user's next play when that play starts soon enough. `tracks` applies
them with pandas and Arrow; `spark_stages` repeats them in Spark SQL.
"""

from __future__ import annotations

# A gap to the same user's next play counts as evidence of the track's duration when the next
# play starts within this many seconds (the play fits inside a session).
MAX_IN_SESSION_GAP_S = 30 * 60


def name_key(name: str) -> str:
    """The join key of a name: surrounding whitespace stripped, lower-cased."""
    return name.strip().lower()
