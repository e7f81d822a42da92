"""What both engines of the vocab, session-data and profiles stages share: stage names, the plays
and sessions they read, the per-play file format and the check that sessions still match.

The local modules (`vocab`, `session_data`, `profiles`) and their Spark twins import from here,
never from each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from utils.baseline import summary_dir
from utils.baseline.session_table import SOURCE_ID
from utils.baseline.user_plays import user_files
from utils.core import columns as C
from utils.core.config import WorkLayout
from utils.core.errors import SessionlenError
from utils.core.stage_io import require_stage

VOCAB_STAGE = "vocab"
SESSION_DATA_STAGE = "session_data"
PROFILES_STAGE = "profiles"
# Vocabulary files: id, key columns, train plays; id 0 is a name never seen in training.
ID = "id"
COUNT = "count"
UNKNOWN_ID = 0
SPLIT_INDEX = "split_index"  # index into columns.SPLITS: 0 train, 1 validate, 2 test
# Summary lengths are rounded to the millisecond; recomputed ones may differ by half of one.
LENGTH_TOLERANCE_S = 1e-3
_INT_COLUMNS = {
    C.USER_ID, C.CURRENT_TIMESTAMP, C.START_TIMESTAMP, C.SESSION_ID, C.GENDER, C.AGE, C.COUNTRY,
    C.REGISTERED, C.TIMES_PLAYED, C.ARTIST_NAME, C.TRACK_NAME,
}
FINAL_TYPES: dict[str, pa.DataType] = {
    name: pa.int64() if name in _INT_COLUMNS else pa.float64() for name in C.FINAL_COLUMNS
}
SPLIT_COUNTS = ["plays", "sessions", "users", "unknown_artist_plays", "unknown_track_plays"]
# Columns copied from each play's session row (final name <- summary name).
FROM_SESSION = {
    C.USER_ID: C.USER_ID, C.START_TIMESTAMP: C.TIMESTAMP, C.SESSION_ID: C.SESSION_ID,
    C.PREVIOUS_SESSION_LENGTH: C.PREVIOUS_SESSION_LENGTH,
    C.AVERAGE_SESSION_LENGTH: C.AVERAGE_SESSION_LENGTH, C.GENDER: C.GENDER, C.AGE: C.AGE,
    C.COUNTRY: C.COUNTRY, C.REGISTERED: C.REGISTERED, C.SESSION_LENGTH: C.CURRENT_SESSION_LENGTH,
    SPLIT_INDEX: SPLIT_INDEX,
}


@dataclass(frozen=True)
class ProfileParts:
    """What a user's train profile is made of, every table indexed by user id (sorted).

    `latest`: gender, age, country and registered of the user's latest train play;
    `top_artist`, `top_track`: most played ids; `rows`: train plays; `lengths`: user id and
    session_length of each train session, in session order.
    """

    latest: pd.DataFrame
    top_artist: pd.Series
    top_track: pd.Series
    rows: pd.Series
    lengths: pd.DataFrame


@dataclass(frozen=True)
class PlaySource:
    """The denormalized plays of every user and the summarized sessions they must match."""

    user_dir: Path
    summary_dir: Path
    users: dict[str, list[Path]]
    user_codes: dict[str, int]
    sessions: pd.DataFrame
    gap_minutes: float
    expected_plays: int

    def user_sessions(self, code: int) -> pd.DataFrame:
        """One user's sessions of every split, in time order (a slice of `sessions`)."""
        codes = self.sessions[C.USER_ID].to_numpy()
        lo, hi = np.searchsorted(codes, [code, code + 1])
        return self.sessions.iloc[lo:hi]


def open_play_source(layout: WorkLayout) -> PlaySource:
    """Check the denormalize and summarize stages and load what matching plays needs."""
    require_stage(layout.user_dir, "denormalize")
    entry = require_stage(layout.summary_dir, "summarize")
    users = user_files(layout.user_dir)
    ids = summary_dir.load_user_ids(layout.root)
    codes = dict(zip(ids[SOURCE_ID], ids[C.USER_ID].astype(int), strict=True))
    unknown = sorted(set(users) - set(codes))
    if unknown:
        raise SessionlenError(
            f"{layout.summary_dir / summary_dir.USER_IDS_FILE}: no integer id for user "
            f"{unknown[0]} of user_dir ({len(unknown)} such users); rerun `sessionlen summarize`"
        )
    frames = [frame.assign(**{SPLIT_INDEX: np.int8(C.SPLITS.index(name))})
              for name, frame in summary_dir.load_summaries(layout.root).items()]
    sessions = pd.concat(frames, ignore_index=True).sort_values(
        [C.USER_ID, C.TIMESTAMP], kind="stable", ignore_index=True)
    return PlaySource(
        user_dir=layout.user_dir, summary_dir=layout.summary_dir, users=users, user_codes=codes,
        sessions=sessions, gap_minutes=float(entry["parameters"]["gap_minutes"]),
        expected_plays=int(entry["rows_in"]),
    )


def check_sessions_match(starts_ms: np.ndarray, lengths_s: np.ndarray, sessions: pd.DataFrame,
                         where: str) -> None:
    """Fail unless the sessions recomputed from a user's plays (start times, lengths in seconds)
    are the user's summary sessions one to one."""
    expected = sessions[C.TIMESTAMP].to_numpy(np.int64)
    if len(starts_ms) != len(expected) or not np.array_equal(starts_ms, expected):
        raise SessionlenError(
            f"{where}: the plays form {len(starts_ms)} sessions, summary_dir has {len(expected)} "
            f"with other start times (user_dir changed after summarizing?); rerun "
            f"`sessionlen summarize`"
        )
    summary_lengths = sessions[C.CURRENT_SESSION_LENGTH].to_numpy(np.float64)
    off = np.abs(lengths_s - summary_lengths) > LENGTH_TOLERANCE_S
    if off.any():
        i = int(np.flatnonzero(off)[0])
        raise SessionlenError(
            f"{where}: session {i} lasts {lengths_s[i]:.3f} s by the plays but "
            f"{summary_lengths[i]:.3f} s in summary_dir; rerun `sessionlen summarize`"
        )


def check_play_count(source: PlaySource, plays: int) -> None:
    """Fail unless every play summarize read was assigned to a split here."""
    if plays != source.expected_plays:
        raise SessionlenError(
            f"{source.user_dir}: {plays} plays now, but summarize read {source.expected_plays}; "
            f"rerun `sessionlen summarize`"
        )


def write_final_csv(frame: pd.DataFrame, path: Path) -> None:
    """One final_dir file: FINAL_COLUMNS with the pyarrow CSV writer (unknown values empty)."""
    table = pa.table({name: pa.array(frame[name].to_numpy(), FINAL_TYPES[name], from_pandas=True)
                      for name in C.FINAL_COLUMNS})
    with open(path, "wb") as fh:
        fh.write((",".join(C.FINAL_COLUMNS) + "\n").encode())
        pacsv.write_csv(table, fh, write_options=pacsv.WriteOptions(include_header=False))


def split_counts(frame: pd.DataFrame) -> dict[str, int]:
    """Plays, sessions and unknown-name plays of one user's rows of one split."""
    return {
        "plays": len(frame),
        "sessions": int(frame[C.SESSION_ID].nunique()),
        "users": int(len(frame) > 0),
        "unknown_artist_plays": int((frame[C.ARTIST_NAME] == UNKNOWN_ID).sum()),
        "unknown_track_plays": int((frame[C.TRACK_NAME] == UNKNOWN_ID).sum()),
    }
