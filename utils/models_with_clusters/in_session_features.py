"""What the plays of a session show once it has lasted e seconds: per-play rows and summaries.

A session enters the rows of checkpoint e when its length exceeds e. Only plays that started
strictly before start + e are read, and a play's successor counts only if it also started before
then: a skip (the next play started before the track could have ended) is known at e only once
the next play is there. Everything about a play that the final_dir file computes over the whole
session (times_played) is cumulative in time order, so it too is known when the play starts.

A listener's familiarity with an artist is counted over the user's EARLIER sessions of every
split, as the running baselines count history; the vocabulary ids themselves were fit on train.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from utils.core import columns as C
from utils.core.errors import SessionlenError
from utils.models_with_clusters.session_data import read_final_split

SESSION = "session"  # row of the session in the (user, start)-sorted session table
OFFSET_S = "offset_s"
# A play counts as skipped when the next one starts this much before the track could end: the
# natural gap between full listens is a few seconds, and durations can be estimates.
SKIP_TOLERANCE_S = 10.0
# An artist is one of the listener's top artists when it drew at least this share of the
# listener's plays in earlier sessions.
TOP_ARTIST_SHARE = 0.02
# Per-play features of the sequence the networks read; `present` is 1 for every real play, so
# padded steps (all zeros) are never mistaken for one.
PLAY_FEATURES = [
    "present", "log_offset", "log_gap_before", "log_duration", "next_known", "heard_ratio",
    "skipped", "repeat", "new_artist", "top_artist", "log_artist_familiarity",
    "unknown_track",
]
SUMMARY_FEATURES = [
    "log_plays", "plays_per_minute", "skip_share", "repeat_share", "distinct_artists",
    "distinct_artist_share", "top_artist_share", "mean_log_familiarity", "unknown_track_share",
    "since_last_start_s", "last_remaining_s", "log_last_remaining", "idle", "idle_s",
    "last_duration_s", "played_share_of_last", "mean_heard_ratio", "log_median_gap",
]
_FINAL_COLUMNS = [C.USER_ID, C.START_TIMESTAMP, C.SESSION_ID, C.CURRENT_TIMESTAMP,
                  C.TRACK_DURATION, C.TIMES_PLAYED, C.ARTIST_NAME, C.TRACK_NAME,
                  C.SESSION_LENGTH]


def read_plays(work: str | Path) -> pd.DataFrame:
    """Every final_dir play of every split, in (user, session start, play time) order."""
    frames = [read_final_split(work, split, columns=_FINAL_COLUMNS) for split in C.SPLITS]
    plays = pd.concat(frames, ignore_index=True)
    if plays.empty:
        raise SessionlenError(f"{work}: final_dir holds no plays; run `sessionlen session-data`")
    return plays.sort_values([C.USER_ID, C.START_TIMESTAMP, C.CURRENT_TIMESTAMP],
                             kind="stable", ignore_index=True)


def attach_sessions(plays: pd.DataFrame, sessions: pd.DataFrame) -> pd.DataFrame:
    """Each play with the row of its session in `sessions` (user_id, timestamp, session_id).

    Fails when a play's session is not in the table: final_dir and summary_dir disagree.
    """
    keys = pd.DataFrame({C.USER_ID: sessions[C.USER_ID].to_numpy(np.int64),
                         C.START_TIMESTAMP: sessions[C.TIMESTAMP].to_numpy(np.int64),
                         C.SESSION_ID: sessions[C.SESSION_ID].to_numpy(np.int64),
                         SESSION: np.arange(len(sessions))})
    joined = plays.merge(keys, on=[C.USER_ID, C.START_TIMESTAMP, C.SESSION_ID], how="left",
                         validate="many_to_one")
    if joined[SESSION].isna().any():
        raise SessionlenError("final_dir has plays of sessions summary_dir does not have; rerun "
                              "`sessionlen session-data`")
    joined[SESSION] = joined[SESSION].astype(np.int64)
    return joined


def artist_history(plays: pd.DataFrame) -> np.ndarray:
    """Per play: the user's plays of the same artist in EARLIER sessions (0 for unknown names).

    Plays are in (user, session, time) order. Per (user, artist) the plays of each session are
    counted, and the counts of the sessions before are summed: nothing of the play's own session,
    so no play after start + e enters.
    """
    user = plays[C.USER_ID].to_numpy(np.int64)
    artist = plays[C.ARTIST_NAME].to_numpy(np.int64)
    session = plays[SESSION].to_numpy(np.int64)
    per_session = pd.DataFrame({"u": user, "a": artist, "s": session}).groupby(
        ["u", "a", "s"], sort=True).size().rename("n").reset_index()
    per_session["before"] = per_session.groupby(["u", "a"], sort=False)["n"].cumsum() \
        - per_session["n"]
    looked_up = pd.DataFrame({"u": user, "a": artist, "s": session}).merge(
        per_session[["u", "a", "s", "before"]], on=["u", "a", "s"], how="left")
    return np.where(artist == 0, 0, looked_up["before"].to_numpy(np.int64))


def user_history_plays(plays: pd.DataFrame) -> np.ndarray:
    """Per play: the user's plays in EARLIER sessions (all artists)."""
    sizes = plays.groupby(SESSION, sort=True).size()
    users = plays.groupby(SESSION, sort=True)[C.USER_ID].first()
    before = sizes.groupby(users.to_numpy(), sort=False).cumsum() - sizes
    return before.reindex(plays[SESSION].to_numpy()).to_numpy(np.int64)


def play_table(plays: pd.DataFrame) -> pd.DataFrame:
    """Per play, what does not depend on the checkpoint: offsets, history, repeat, new artist.

    `next_offset_s` is where the session's next play starts (NaN for its last play); whether it
    may be read depends on the checkpoint (`known_plays`).
    """
    session = plays[SESSION].to_numpy(np.int64)
    offset = (plays[C.CURRENT_TIMESTAMP].to_numpy(np.int64)
              - plays[C.START_TIMESTAMP].to_numpy(np.int64)) / 1000.0
    same_next = np.r_[session[1:] == session[:-1], False]
    same_prev = np.r_[False, session[1:] == session[:-1]]
    duration = plays[C.TRACK_DURATION].to_numpy(np.float64)
    # A play without a duration (none known, none estimated) takes the median of the others.
    duration = np.where(np.isfinite(duration) & (duration > 0), duration,
                        float(np.nanmedian(duration)) if np.isfinite(duration).any() else 240.0)
    artist = plays[C.ARTIST_NAME].to_numpy(np.int64)
    first_of_artist = ~pd.DataFrame({"s": session, "a": artist}).duplicated().to_numpy()
    familiarity = artist_history(plays)
    user_before = user_history_plays(plays)
    return pd.DataFrame({
        SESSION: session, OFFSET_S: offset,
        "next_offset_s": np.where(same_next, np.r_[offset[1:], np.nan], np.nan),
        "gap_before_s": np.where(same_prev, offset - np.r_[np.nan, offset[:-1]], 0.0),
        "duration_s": duration,
        "repeat": (plays[C.TIMES_PLAYED].to_numpy(np.int64) > 1).astype(np.float64),
        "new_artist": first_of_artist.astype(np.float64),
        "familiarity": familiarity.astype(np.float64),
        "top_artist": ((familiarity > 0)
                       & (familiarity >= TOP_ARTIST_SHARE * np.maximum(user_before, 1))
                       ).astype(np.float64),
        "unknown_track": (plays[C.TRACK_NAME].to_numpy(np.int64) == 0).astype(np.float64),
        C.ARTIST_NAME: artist,
        C.TRACK_NAME: plays[C.TRACK_NAME].to_numpy(np.int64),
    })


def known_plays(table: pd.DataFrame, lasted: np.ndarray, checkpoint_s: float) -> pd.DataFrame:
    """The plays known at start + e of the sessions that lasted more than e, with the per-play
    features the checkpoint allows (a successor is read only if it started before e)."""
    keep = lasted[table[SESSION].to_numpy()] & (table[OFFSET_S].to_numpy() < checkpoint_s)
    known = table[keep].reset_index(drop=True)
    nxt = known["next_offset_s"].to_numpy()
    next_known = np.isfinite(nxt) & (nxt < checkpoint_s)
    gap_next = np.where(next_known, nxt - known[OFFSET_S].to_numpy(), np.nan)
    duration = known["duration_s"].to_numpy()
    heard = np.where(next_known, np.clip(gap_next / duration, 0.0, 2.0), 0.0)
    return known.assign(
        next_known=next_known.astype(np.float64), heard_ratio=heard,
        skipped=(next_known & (gap_next < duration - SKIP_TOLERANCE_S)).astype(np.float64),
        present=1.0, log_offset=np.log1p(known[OFFSET_S]),
        log_gap_before=np.log1p(known["gap_before_s"]), log_duration=np.log1p(duration),
        log_artist_familiarity=np.log1p(known["familiarity"]),
    )


def summarize_known(known: pd.DataFrame, n_sessions: int, checkpoint_s: float) -> pd.DataFrame:
    """One row per session (all `n_sessions` rows; those without known plays are NaN) of what
    its plays show at e: pace, skips, repeats, artists, and whether the listener is idle."""
    grouped = known.groupby(SESSION, sort=True)
    last = grouped.tail(1).set_index(SESSION)
    with_next = known[known["next_known"] > 0].groupby(SESSION)
    after_first = known[known[OFFSET_S] > 0]
    n = grouped.size()
    distinct = grouped[C.ARTIST_NAME].nunique()
    last_end = last[OFFSET_S] + last["duration_s"]
    remaining = last_end - checkpoint_s
    table = pd.DataFrame({
        "log_plays": np.log1p(n),
        "plays_per_minute": n / (checkpoint_s / 60.0),
        "skip_share": with_next["skipped"].mean(),
        "repeat_share": grouped["repeat"].mean(),
        "distinct_artists": distinct,
        "distinct_artist_share": distinct / n,
        "top_artist_share": grouped["top_artist"].mean(),
        "mean_log_familiarity": grouped["log_artist_familiarity"].mean(),
        "unknown_track_share": grouped["unknown_track"].mean(),
        "since_last_start_s": checkpoint_s - last[OFFSET_S],
        # Where the track playing at e ends, relative to e: positive while it still plays,
        # negative when it is over and no next play has started (the listener is idle).
        "last_remaining_s": remaining,
        "log_last_remaining": np.log1p(remaining.clip(lower=0.0)),
        "idle": (remaining < 0).astype(np.float64),
        "idle_s": (-remaining).clip(lower=0.0),
        "last_duration_s": last["duration_s"],
        "played_share_of_last": ((checkpoint_s - last[OFFSET_S]) / last["duration_s"]).clip(
            upper=5.0),
        "mean_heard_ratio": with_next["heard_ratio"].mean(),
        "log_median_gap": np.log1p(after_first.groupby(SESSION)["gap_before_s"].median()),
    })
    return table.reindex(np.arange(n_sessions))[SUMMARY_FEATURES]


@dataclass(frozen=True)
class PlaySequences:
    """The last `max_plays` known plays of each row, pre-padded (the newest play last).

    `numeric`: rows x max_plays x PLAY_FEATURES; `artist`, `track`: rows x max_plays ids where
    0 is padding, 1 a name unseen in train and 2 + v the vocabulary id v (rarer ids share one).
    """

    numeric: np.ndarray
    artist: np.ndarray
    track: np.ndarray

    def take(self, rows: np.ndarray) -> PlaySequences:
        """The sequences of some rows."""
        return PlaySequences(self.numeric[rows], self.artist[rows], self.track[rows])


def embedding_ids(vocab_ids: np.ndarray, max_ids: int) -> np.ndarray:
    """Vocabulary ids as embedding inputs: 1 unseen, 2..max_ids+1 the most frequent names (ids
    run by train frequency), max_ids + 2 every rarer one; 0 stays the padding."""
    ids = np.asarray(vocab_ids, dtype=np.int64)
    return np.where(ids == 0, 1, np.minimum(ids, max_ids + 1) + 1).astype(np.int32)


def play_sequences(known: pd.DataFrame, rows: np.ndarray, max_plays: int, max_artist_ids: int,
                   max_track_ids: int) -> PlaySequences:
    """Sequences of the plays known at e for the sessions `rows` (in that order)."""
    position = pd.Series(np.arange(len(rows)), index=rows)
    where = position.reindex(known[SESSION].to_numpy()).to_numpy()
    mine = known[~np.isnan(where)]
    row = where[~np.isnan(where)].astype(np.int64)
    # Position from the end of the session's known plays: the newest is at max_plays - 1.
    from_end = mine.groupby(SESSION, sort=False).cumcount(ascending=False).to_numpy()
    kept = from_end < max_plays
    row, step = row[kept], max_plays - 1 - from_end[kept]
    numeric = np.zeros((len(rows), max_plays, len(PLAY_FEATURES)), np.float32)
    artist = np.zeros((len(rows), max_plays), np.int32)
    track = np.zeros((len(rows), max_plays), np.int32)
    numeric[row, step] = mine[PLAY_FEATURES].to_numpy(np.float32)[kept]
    artist[row, step] = embedding_ids(mine[C.ARTIST_NAME].to_numpy()[kept], max_artist_ids)
    track[row, step] = embedding_ids(mine[C.TRACK_NAME].to_numpy()[kept], max_track_ids)
    return PlaySequences(numeric, artist, track)
