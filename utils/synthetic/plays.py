"""Plays of planted sessions, laid out so the session rule measures each planted length exactly.

A session of length L with first track duration D is one play when L == D. Otherwise its last
track (duration d, with d <= L - 1) starts at s = L - d, so last start + duration = L; the plays
before it start at 0 and follow each other by natural gaps (a full listen, a skip, sometimes a
pause; every gap between 1 s and MAX_GAP_S), stopping at the first play that would start at or
after s. Every start-to-start gap inside a session is at most MAX_GAP_S < 30 min, so whatever the
durations the rule never splits a session, and sessions are separated by more than the rule's
threshold plus a minute (synthetic_sessions.MIN_BREAK_S). Duplicated (user, timestamp) rows copy
the time of a play that is never a session's last, so tie order cannot change any session.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from utils.synthetic.catalog import Catalog, Libraries, draw_from_artist, draw_global

MAX_GAP_S = 1790
SKIP_SPREAD = (0.3, 1.7)  # a skip hears the listener's typical share times this factor
PAUSE_PROB = 0.04
PAUSE_MEAN_S = 150.0
NEW_ARTIST_PROB = 0.3  # otherwise the next track is the artist's next one (albums, runs)
LIBRARY_PROB = 0.7  # a new artist comes from the listener's favourites, else a discovery
DUPLICATE_SHARE = 0.03  # share of rows repeating another row's (user, timestamp)
LAST_TRACK_TRIES = 4


@dataclass(frozen=True)
class PlayBatch:
    """Plays of a batch of sessions in file order (user ascending, newest first)."""

    user: np.ndarray
    timestamp_s: np.ndarray
    track: np.ndarray
    session: np.ndarray  # index into the batch's sessions


def mean_gap_s(skip_prob: np.ndarray, skip_heard: np.ndarray, mean_duration_s: float
               ) -> np.ndarray:
    """Expected start-to-start gap inside a session for listeners with these skip habits."""
    skipped = mean_duration_s * skip_heard * sum(SKIP_SPREAD) / 2 + 0.5
    full = mean_duration_s + 3.0
    return (1 - skip_prob) * full + skip_prob * skipped + PAUSE_PROB * PAUSE_MEAN_S


def expected_rows(length_s: np.ndarray, single: np.ndarray, gap_s: np.ndarray,
                  mean_duration_s: float) -> np.ndarray:
    """Expected file rows of sessions (renewal approximation, duplicates included)."""
    body = np.maximum(1.0, (length_s - mean_duration_s) / gap_s + 0.8)
    return np.where(single, 1.0, 1.0 + body) / (1 - DUPLICATE_SHARE)


def natural_gaps(rng: np.random.Generator, duration_s: np.ndarray, skip_prob: np.ndarray,
                 skip_heard: np.ndarray) -> np.ndarray:
    """Seconds from a play's start to the next play's start."""
    n = len(duration_s)
    heard = np.rint(duration_s * skip_heard * rng.uniform(*SKIP_SPREAD, n))
    gap = np.where(rng.random(n) < skip_prob, heard, duration_s + rng.integers(0, 7, n))
    gap += np.where(rng.random(n) < PAUSE_PROB, np.rint(rng.exponential(PAUSE_MEAN_S, n)), 0)
    return np.clip(gap, 1, MAX_GAP_S).astype(np.int64)


def _run_start_tracks(rng: np.random.Generator, catalog: Catalog, libraries: Libraries,
                      users: np.ndarray) -> np.ndarray:
    """Tracks opening a run of one artist: a favourite or a discovery."""
    favourite = rng.random(len(users)) < LIBRARY_PROB
    track = draw_global(rng, catalog, len(users))
    track[favourite] = libraries.draw(rng, users[favourite])
    return track


def _last_tracks(rng: np.random.Generator, catalog: Catalog, libraries: Libraries,
                 users: np.ndarray, length_s: np.ndarray, first_track: np.ndarray) -> np.ndarray:
    """A closing track of duration <= L - 1 per session; the opening track when none is drawn."""
    chosen = first_track.copy()
    todo = np.arange(len(users))
    for _ in range(LAST_TRACK_TRIES):
        candidate = _run_start_tracks(rng, catalog, libraries, users[todo])
        fits = catalog.duration_s[candidate] <= length_s[todo] - 1
        chosen[todo[fits]] = candidate[fits]
        todo = todo[~fits]
    return chosen


def _fill(rng: np.random.Generator, catalog: Catalog, libraries: Libraries,
          users: np.ndarray, skip: np.ndarray, heard: np.ndarray, gap_s: np.ndarray,
          span: np.ndarray, first_track: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(session, offset, track) of the plays starting in [0, span) of each session.

    Candidates are generated in rounds (enough for most sessions at once); a session whose
    candidates all start before its span continues in the next round from where it stopped.
    """
    n = len(span)
    sessions, offsets, tracks = [np.arange(n)], [np.zeros(n, dtype=np.int64)], [first_track]
    offset = natural_gaps(rng, catalog.duration_s[first_track], skip, heard)
    previous = first_track.copy()
    pending = np.flatnonzero(offset < span)
    while len(pending):
        count = np.ceil((span[pending] - offset[pending]) / gap_s[pending] * 1.3).astype(int) + 2
        seg = np.repeat(pending, count)
        seg_first = np.cumsum(count) - count
        pos = np.arange(len(seg)) - np.repeat(seg_first, count)
        new_run = rng.random(len(seg)) < NEW_ARTIST_PROB
        track = np.zeros(len(seg), dtype=np.int64)
        track[new_run] = _run_start_tracks(rng, catalog, libraries, users[seg[new_run]])
        # A run plays on through its artist's tracks in order (an album) from its opening track,
        # or from the last track of the previous round when the run started there.
        is_source = new_run | (pos == 0)
        base = np.where(new_run, track, previous[seg])
        latest = np.maximum.accumulate(np.where(is_source, np.arange(len(seg)), 0))
        step = np.arange(len(seg)) - latest + (~new_run[latest])
        continuing = ~new_run
        track[continuing] = _album_next(catalog, base[latest][continuing], step[continuing])
        gap = natural_gaps(rng, catalog.duration_s[track], skip[seg], heard[seg])
        before = np.cumsum(gap) - gap
        start = offset[seg] + before - np.repeat(before[seg_first], count)
        inside = start < span[seg]
        sessions.append(seg[inside])
        offsets.append(start[inside])
        tracks.append(track[inside])
        seg_last = seg_first + count - 1
        offset[pending] = start[seg_last] + gap[seg_last]
        previous[pending] = track[seg_last]
        pending = pending[offset[pending] < span[pending]]
    session = np.concatenate(sessions)
    order = np.argsort(session, kind="stable")  # rounds append in time order per session
    return session[order], np.concatenate(offsets)[order], np.concatenate(tracks)[order]


def _album_next(catalog: Catalog, track: np.ndarray, step: np.ndarray) -> np.ndarray:
    """The track `step` places after `track` in its artist's list, wrapping around."""
    artist = catalog.track_artist[track]
    first = catalog.artist_first[artist]
    return first + (track - first + step) % catalog.artist_count[artist]


def _duplicates(rng: np.random.Generator, catalog: Catalog, track: np.ndarray,
                eligible: np.ndarray, total_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(row copied, new track) for duplicated rows: a different track at the same time."""
    count = min(len(eligible), round(total_rows * DUPLICATE_SHARE / (1 - DUPLICATE_SHARE)))
    copied = np.sort(rng.choice(eligible, size=count, replace=False))
    other = draw_from_artist(rng, catalog, catalog.track_artist[track[copied]])
    same = other == track[copied]
    other[same] = draw_global(rng, catalog, int(same.sum()))
    other[other == track[copied]] = (other[other == track[copied]] + 1) % catalog.n_tracks
    return copied, other


def session_plays(rng: np.random.Generator, catalog: Catalog, libraries: Libraries,
                  user: np.ndarray, start_s: np.ndarray, length_s: np.ndarray,
                  first_track: np.ndarray, skip: np.ndarray, heard: np.ndarray,
                  gap_s: np.ndarray) -> PlayBatch:
    """All plays of a batch of sessions (arrays indexed by session; user ids are global)."""
    single = length_s == catalog.duration_s[first_track]
    multi = np.flatnonzero(~single)
    last = _last_tracks(rng, catalog, libraries, user[multi], length_s[multi], first_track[multi])
    span = length_s[multi] - catalog.duration_s[last]
    body_sess, body_off, body_track = _fill(rng, catalog, libraries, user[multi], skip[multi],
                                            heard[multi], gap_s[multi], span, first_track[multi])
    body_sess = multi[body_sess]
    singles = np.flatnonzero(single)
    n_base = len(body_sess) + len(multi) + len(singles)
    copied, dup_track = _duplicates(rng, catalog, body_track, np.arange(len(body_sess)), n_base)
    session = np.concatenate([body_sess, multi, singles, body_sess[copied]])
    offset = np.concatenate([body_off, span, np.zeros(len(singles), np.int64), body_off[copied]])
    track = np.concatenate([body_track, last, first_track[singles], dup_track])
    timestamp = start_s[session] + offset
    order = np.lexsort((-timestamp, user[session]))
    return PlayBatch(user=user[session][order], timestamp_s=timestamp[order],
                     track=track[order], session=session[order])


_PAIRS = np.array([[48 + i // 10, 48 + i % 10] for i in range(100)], dtype=np.uint8)


def civil_dates(days: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(year, month, day) of days since 1970-01-01 (proleptic Gregorian, integer arithmetic)."""
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    month = np.where(mp < 10, mp + 3, mp - 9)
    return yoe + era * 400 + (month <= 2), month, doy - (153 * mp + 2) // 5 + 1


def iso_timestamps(seconds: np.ndarray) -> pa.Array:
    """`2009-05-04T23:08:57Z` strings from UTC epoch seconds, via per-day and per-second tables."""
    days, second_of_day = np.divmod(seconds, 86_400)
    first = int(days.min()) if len(days) else 0
    year, month, day = civil_dates(np.arange(first, int(days.max(initial=first)) + 1))
    date = np.empty((len(year), 11), dtype=np.uint8)
    date[:, [4, 7, 10]] = np.frombuffer(b"--T", dtype=np.uint8)
    date[:, 0:2], date[:, 2:4] = _PAIRS[year // 100], _PAIRS[year % 100]
    date[:, 5:7], date[:, 8:10] = _PAIRS[month], _PAIRS[day]
    sod = np.arange(86_400)
    clock = np.empty((86_400, 9), dtype=np.uint8)
    clock[:, [2, 5, 8]] = np.frombuffer(b"::Z", dtype=np.uint8)
    clock[:, 0:2], clock[:, 3:5], clock[:, 6:8] = (_PAIRS[sod // 3600], _PAIRS[sod // 60 % 60],
                                                   _PAIRS[sod % 60])
    text = np.concatenate([date[days - first], clock[second_of_day]], axis=1)
    offsets = np.arange(0, 20 * (len(seconds) + 1), 20, dtype=np.int32)
    return pa.Array.from_buffers(pa.string(), len(seconds),
                                 [None, pa.py_buffer(offsets), pa.py_buffer(text)])


def tsv_bytes(plays: PlayBatch, catalog: Catalog, user_ids: pa.Array) -> pa.Buffer:
    """The batch's lines of the plays file: 6 tab-separated fields, no quoting, LF endings."""
    track = pa.array(plays.track)
    artist = pa.array(catalog.track_artist[plays.track])
    line = pc.binary_join_element_wise(
        user_ids.take(pa.array(plays.user)).cast(pa.large_string()),
        iso_timestamps(plays.timestamp_s).cast(pa.large_string()),
        catalog.artist_mbid.take(artist), catalog.artist_name.take(artist),
        catalog.track_mbid.take(track), catalog.track_name.take(track),
        pa.scalar("\t", pa.large_string()),
    )
    line = pc.binary_join_element_wise(line, pa.scalar("", pa.large_string()),
                                       pa.scalar("\n", pa.large_string()))
    offsets = np.frombuffer(line.buffers()[1], dtype=np.int64)
    first, end = int(offsets[line.offset]), int(offsets[line.offset + len(line)])
    return line.buffers()[2][first:end]
