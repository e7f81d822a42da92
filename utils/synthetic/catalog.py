"""The synthetic music catalog and listeners' tastes: what the generated plays draw tracks from.

Artists have Zipf popularity and a Zipf-shaped set of tracks; tracks of an artist are contiguous
in catalog order, so one cumulative-weight array serves both a draw from the whole catalog and a
draw restricted to one artist (a slice of it). Each listener has a library: tracks drawn from the
catalog's popularity, weighted Zipf-like by the listener (favourites are played again and again).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from utils.synthetic.names import (
    STR,
    artist_names,
    make_unique,
    tag_lists,
    to_arrow,
    track_names,
    uuids,
)


class InverseCdf:
    """Fast inverse of a sorted cumulative array: a guide table jumps close to each answer.

    Equivalent to `np.searchsorted(cum, u, side="right")`, but a binary search over a million
    entries misses the cache at every step; the guide table leaves about one step per draw.
    """

    def __init__(self, cum: np.ndarray) -> None:
        self.cum = np.concatenate([[-np.inf], cum, [np.inf]])  # sentinels stop every walk
        self.low, self.span = float(cum[0]), float(cum[-1] - cum[0])
        self.buckets = len(cum)
        edges = self.low + self.span * np.arange(self.buckets) / self.buckets
        self.guide = np.searchsorted(cum, edges, side="right")

    def find(self, u: np.ndarray) -> np.ndarray:
        """Index of the first entry greater than each u."""
        scaled = (u - self.low) * (self.buckets / self.span) if self.span > 0 else 0 * u
        idx = np.where(u < self.low, 0,
                       self.guide[np.clip(scaled, 0, self.buckets - 1).astype(np.int64)])
        # Walk to the exact answer (cum is shifted by one for the leading sentinel).
        todo = np.flatnonzero(self.cum[idx + 1] <= u)
        while len(todo):
            idx[todo] += 1
            todo = todo[self.cum[idx[todo] + 1] <= u[todo]]
        todo = np.flatnonzero(self.cum[idx] > u)
        while len(todo):
            idx[todo] -= 1
            todo = todo[self.cum[idx[todo]] > u[todo]]
        return idx


# Sizes at full scale (the real file's 19.15M plays): chosen so that the artists and distinct
# tracks that end up played match the real counts (~177K artists, ~1M+ tracks).
FULL_ARTISTS = 202_000
ARTIST_ZIPF = 1.1
ARTIST_ZIPF_OFFSET = 30.0
TRACK_ZIPF = 1.0
SCRIPTS = np.array(["ascii", "accented", "cyrillic", "japanese", "korean", "greek", "chinese"])
SCRIPT_SHARES = np.array([0.835, 0.058, 0.038, 0.034, 0.012, 0.008, 0.015])
GOLDEN = (np.sqrt(5.0) - 1) / 2
FOREIGN_TITLE_SHARE = 0.75  # non-ASCII artists title most of their tracks in their own script


@dataclass(frozen=True)
class Catalog:
    """Artists and tracks with names, MBIDs ('' when absent), true durations and popularity."""

    artist_name: pa.Array
    artist_mbid: pa.Array
    artist_tags: np.ndarray
    artist_first: np.ndarray  # index of each artist's first track
    artist_count: np.ndarray  # number of tracks of each artist
    track_artist: np.ndarray
    track_name: pa.Array
    track_mbid: pa.Array
    track_tagged: np.ndarray  # whether the track carries its artist's tags
    duration_s: np.ndarray
    cum_weight: np.ndarray  # cumulative popularity in catalog order, last value 1.0
    sampler: InverseCdf
    non_ascii: np.ndarray  # artist or track name has a non-ASCII character
    no_track_mbid: np.ndarray

    @property
    def n_tracks(self) -> int:
        """Number of tracks in the catalog."""
        return len(self.track_artist)

    @property
    def mean_duration_s(self) -> float:
        """Mean duration of a popularity-weighted draw."""
        return float(np.dot(np.diff(self.cum_weight, prepend=0.0), self.duration_s))

    @property
    def artist_has_mbid(self) -> np.ndarray:
        """Per artist: whether it has a MusicBrainz id."""
        return pc.not_equal(self.artist_mbid, "").to_numpy(zero_copy_only=False)


def build_catalog(rng: np.random.Generator, size_ratio: float) -> Catalog:
    """A catalog sized for `size_ratio` times the real dataset's plays."""
    n_artists = max(300, round(FULL_ARTISTS * size_ratio))
    rank = np.arange(n_artists, dtype=np.float64)
    artist_weight = (rank + ARTIST_ZIPF_OFFSET) ** -ARTIST_ZIPF
    artist_weight /= artist_weight.sum()
    # Popular artists have long discographies; the tail mostly one or two known tracks.
    head = np.exp(-rank / (0.05 * n_artists))
    counts = 1 + np.floor(np.exp(rng.normal(np.log(4.2) + 2.5 * head, 0.9)))
    counts = np.minimum(counts, 400).astype(np.int64)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    track_artist = np.repeat(np.arange(n_artists), counts)
    within = np.arange(len(track_artist)) - first[track_artist]
    track_weight = (within + 1.0) ** -TRACK_ZIPF
    per_artist = np.bincount(track_artist, weights=track_weight)
    track_weight *= artist_weight[track_artist] / per_artist[track_artist]
    cum = np.cumsum(track_weight)
    cum /= cum[-1]

    # Scripts follow a golden-ratio sequence along popularity rank, so every popularity band
    # (the few artists that take most plays included) has the intended share of each script.
    spread = (rank * GOLDEN + rng.random()) % 1.0
    scripts = SCRIPTS[np.searchsorted(np.cumsum(SCRIPT_SHARES) / SCRIPT_SHARES.sum(), spread,
                                      side="right")]
    a_names = make_unique(artist_names(rng, scripts))
    title_script = np.where(rng.random(len(track_artist)) < FOREIGN_TITLE_SHARE,
                            scripts[track_artist], "ascii")
    t_names = make_unique(track_names(rng, title_script), group=track_artist)
    artist_mbid, track_mbid = _mbids(rng, rank / n_artists, within, track_artist)
    artist_arr, track_arr = to_arrow(a_names), to_arrow(t_names)
    non_ascii = ~(pc.string_is_ascii(artist_arr).to_numpy(zero_copy_only=False)[track_artist]
                  & pc.string_is_ascii(track_arr).to_numpy(zero_copy_only=False))
    return Catalog(
        artist_name=artist_arr,
        artist_mbid=to_arrow(artist_mbid),
        artist_tags=tag_lists(rng, rank),
        artist_first=first,
        artist_count=counts,
        track_artist=track_artist,
        track_name=track_arr,
        track_mbid=to_arrow(track_mbid),
        track_tagged=rng.random(len(track_artist)) < 0.9,
        duration_s=_durations(rng, len(track_artist)),
        cum_weight=cum,
        sampler=InverseCdf(cum),
        non_ascii=non_ascii,
        no_track_mbid=track_mbid == "",
    )


def _mbids(
    rng: np.random.Generator, rank_share: np.ndarray, within: np.ndarray,
    track_artist: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Artist and track MBIDs: well-known artists and their hits are the ones MusicBrainz knows.

    Nearly every artist in the popular half has one, a minority of the obscure rest: about 61%
    of artists but 93% of plays, as in the real data.
    """
    artist_p = 0.25 + 0.72 / (1 + np.exp((rank_share - 0.47) / 0.05))
    artist_has = rng.random(len(rank_share)) < artist_p
    track_p = 0.66 + 0.22 * np.exp(-within / 8.0)
    track_has = artist_has[track_artist] & (rng.random(len(track_artist)) < track_p)
    artist_mbid = np.full(len(rank_share), "", dtype=STR)
    artist_mbid[artist_has] = uuids(rng, int(artist_has.sum()))
    track_mbid = np.full(len(track_artist), "", dtype=STR)
    track_mbid[track_has] = uuids(rng, int(track_has.sum()))
    return artist_mbid, track_mbid


def _durations(rng: np.random.Generator, n: int) -> np.ndarray:
    """Whole-second track durations: mostly songs around 4 minutes, some interludes, some epics."""
    kind = rng.choice(3, size=n, p=[0.9, 0.06, 0.04])
    centre = np.array([235.0, 100.0, 480.0])[kind]
    spread = np.array([0.28, 0.5, 0.45])[kind]
    seconds = np.exp(rng.normal(np.log(centre), spread))
    return np.clip(np.round(seconds), 20, 2400).astype(np.int64)


def draw_global(rng: np.random.Generator, catalog: Catalog, n: int) -> np.ndarray:
    """n tracks drawn by catalog-wide popularity."""
    return np.minimum(catalog.sampler.find(rng.random(n)), catalog.n_tracks - 1)


def draw_from_artist(rng: np.random.Generator, catalog: Catalog, artists: np.ndarray) -> np.ndarray:
    """One track per given artist, drawn by popularity among that artist's tracks."""
    first = catalog.artist_first[artists]
    last = first + catalog.artist_count[artists] - 1
    cum = catalog.cum_weight
    lo = np.where(first > 0, cum[np.maximum(first - 1, 0)], 0.0)
    idx = catalog.sampler.find(lo + rng.random(len(artists)) * (cum[last] - lo))
    return np.clip(idx, first, last)


@dataclass(frozen=True)
class Libraries:
    """Each listener's favourite tracks with play weights, concatenated user after user."""

    offset: np.ndarray  # library of user u is [offset[u], offset[u+1])
    track: np.ndarray
    weight: np.ndarray  # play weight of each entry; a user's weights sum to 1
    sampler: InverseCdf  # over owner + cumulative weight within the owner (one sorted array)

    def draw(self, rng: np.random.Generator, users: np.ndarray) -> np.ndarray:
        """One library track per given user (by the user's weights)."""
        pos = self.sampler.find(users + rng.random(len(users)))
        return self.track[np.clip(pos, self.offset[users], self.offset[users + 1] - 1)]


def build_libraries(
    rng: np.random.Generator, catalog: Catalog, sizes: np.ndarray, zipf: float = 0.9
) -> Libraries:
    """Libraries of the given sizes, drawn by popularity, favourites first."""
    offset = np.concatenate([[0], np.cumsum(sizes)])
    owner = np.repeat(np.arange(len(sizes)), sizes)
    position = np.arange(offset[-1]) - offset[owner]
    weight = (position + 1.0) ** -zipf
    weight /= np.bincount(owner, weights=weight, minlength=len(sizes))[owner]
    cum = np.cumsum(weight)
    within = cum - np.concatenate([[0.0], cum])[offset[:-1]][owner]
    return Libraries(offset=offset, track=draw_global(rng, catalog, int(offset[-1])),
                     weight=weight, sampler=InverseCdf(owner + within))


class DurationCdf:
    """Per user, P(a library draw lasts <= x seconds): the law of a session's first track."""

    def __init__(self, libraries: Libraries, catalog: Catalog) -> None:
        sizes = np.diff(libraries.offset)
        owner = np.repeat(np.arange(len(sizes)), sizes)
        duration = catalog.duration_s[libraries.track]
        order = np.lexsort((duration, owner))
        # (user, whole-second duration) packed in one sortable integer.
        self._key = (owner[order] << 22) | duration[order]
        self._cum = np.concatenate([[0.0], np.cumsum(libraries.weight[order])])
        self._start = self._cum[libraries.offset[:-1]]

    def __call__(self, users: np.ndarray, x: np.ndarray) -> np.ndarray:
        """The CDF at x (seconds) for paired arrays of users and x."""
        seconds = np.clip(np.floor(x), 0, (1 << 22) - 1).astype(np.int64)
        pos = np.searchsorted(self._key, (users.astype(np.int64) << 22) | seconds, side="right")
        return self._cum[pos] - self._start[users]
