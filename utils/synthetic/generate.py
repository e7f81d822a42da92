"""The calibrated synthetic Last.fm 1K generator: the two raw files in the exact real format, plus
the ground truth a real dataset never has.

Steps of `generate_dataset` (each in its own module):
1. a catalog of artists and tracks with names, MBIDs, durations and Zipf popularity
   (synthetic_catalog, synthetic_names), scaled to the plays the scale asks for;
2. listeners: profile fields, time zone, archetype, activity window, habits (synthetic_sessions);
3. sessions: planned start times, then the length model run forward in time (synthetic_sessions),
   with exact conditional quantiles of each length given what is known at its start
   (synthetic_truth);
4. plays laid out inside the sessions so the session rule measures the planted lengths exactly,
   written user batch by user batch, newest first (synthetic_plays);
5. ground truth (planted sessions, the catalog, the archetypes) and the calibration table
   (synthetic_calibration), then the manifest; all built in a temp dir renamed over `out`.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from utils.core.columns import (
    GROUND_TRUTH,
    GT_CALIBRATION_FILE,
    GT_LAW_COLUMNS,
    GT_MEDIAN,
    GT_SESSIONS_COLUMNS,
    GT_SESSIONS_FILE,
    GT_TRACKS_COLUMNS,
    GT_TRACKS_FILE,
    GT_USERS_COLUMNS,
    GT_USERS_FILE,
    PLAYS_FILE,
    PROFILE_FILE,
    PROFILE_HEADER,
)
from utils.core.config import get_scale
from utils.core.errors import SessionlenError
from utils.core.stage_io import atomic_dir, write_manifest
from utils.synthetic.calibration import (
    REAL_EMPTY_PROFILE,
    REAL_PLAYS,
    REAL_USERS,
    SynthReport,
    cluster_figure,
    count_figures,
    difficulty_figures,
    format_calibration,
)
from utils.synthetic.catalog import Catalog, DurationCdf, Libraries, build_catalog, build_libraries
from utils.synthetic.names import COUNTRIES, STR, to_arrow
from utils.synthetic.plays import civil_dates, expected_rows, mean_gap_s, session_plays, tsv_bytes
from utils.synthetic.sessions import STANDARD, Mechanics, Sessions, Users, scale_history, thin_plan
from utils.synthetic.truth import law_columns
from utils.synthetic.variant import VARIANT

__all__ = ["MECHANICS", "SynthReport", "format_calibration", "generate_dataset", "plant"]

MECHANICS: dict[str, Mechanics] = {m.name: m for m in (STANDARD, VARIANT)}

PLAYS_STREAM = 5  # index of the plays' generator in _generators
HEADROOM = 1.1  # plan 10% more sessions than needed, then thin the plan to the exact size
BATCH_ROWS = 2_000_000  # plays generated and written per batch of users
REGISTERED_YEARS = {2002: 1, 2003: 13, 2004: 77, 2005: 302, 2006: 438, 2007: 147, 2008: 2,
                    2009: 4}  # the real profile file's signup years
LATEST_SIGNUP_S = 1_241_136_000  # 2009-05-01
US_OFFSETS = ((-5, 0.45), (-6, 0.3), (-7, 0.05), (-8, 0.2))
MONTHS = np.array(["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov",
                   "Dec"], dtype=STR)
ODD_AGES = np.array([1, 3, 4, 7, 75, 88, 103])  # self-reported ages are not always plausible


@dataclass(frozen=True)
class Profiles:
    """The profile file's fields (empty strings where the real file has gaps) and hidden truth."""

    gender: np.ndarray
    age: np.ndarray
    country: np.ndarray
    registered: np.ndarray
    tz_hours: np.ndarray
    registered_s: np.ndarray  # known even when the file leaves `registered` empty


@dataclass(frozen=True)
class Listening:
    """The simulated listeners and sessions, before any file is written."""

    people: Users
    libraries: Libraries
    gap_s: np.ndarray  # expected in-session gap per user
    sessions: Sessions
    truth: dict[str, np.ndarray]  # GT_LAW_COLUMNS of the sessions, by name


@dataclass(frozen=True)
class Planted:
    """A dataset before any file is written: its law, size, catalog, profiles and listening."""

    law: Mechanics
    users: int
    plays_factor: float
    share: float  # of the real dataset's plays
    catalog: Catalog
    profiles: Profiles
    world: Listening


def generate_dataset(out: Path, scale: str = "tiny", users: int | None = None,
                     seed: int = 1, mechanics: str = "standard") -> SynthReport:
    """Generate a synthetic dataset into `out` (replaced atomically) and report its calibration.

    `mechanics` picks the session-level law (MECHANICS); the file formats are the same for all.
    """
    start = time.perf_counter()
    out = Path(out)
    _check_out(out)
    planted = plant(scale, users, seed, mechanics)
    law, n_users, plays_factor = planted.law, planted.users, planted.plays_factor
    catalog, world = planted.catalog, planted.world
    user_ids = np.strings.add("user_", np.strings.zfill(np.arange(1, n_users + 1).astype(str), 6))
    with atomic_dir(out) as tmp:
        counts, rows = _write_plays(tmp / PLAYS_FILE, _generators(seed)[PLAYS_STREAM], catalog,
                                    world, to_arrow(user_ids))
        counts.update(_write_profiles(tmp / PROFILE_FILE, user_ids, planted.profiles))
        _write_ground_truth(tmp / GROUND_TRUTH, user_ids, world, catalog, counts.pop("played"))
        sessions = world.sessions
        figures = (*count_figures(counts, n_users, planted.share),
                   *difficulty_figures(sessions.user, sessions.length_s, world.truth[GT_MEDIAN]),
                   cluster_figure(sessions.user, sessions.length_s, rows,
                                  world.people.archetype, law.types, plays_factor, seed,
                                  law.separated_types))
        report = SynthReport(out=out, scale=scale, users=n_users, seed=seed,
                             plays=int(counts["plays"]), sessions=len(sessions.user),
                             seconds=time.perf_counter() - start, figures=figures,
                             mechanics=law.name)
        _write_calibration(tmp / GROUND_TRUTH / GT_CALIBRATION_FILE, report)
        write_manifest(
            tmp, "synth", inputs=[],
            parameters=_parameters(law, scale, n_users, plays_factor, seed),
            rows_in=report.plays, rows_out=report.plays, rows_rejected=0,
            outputs=[PLAYS_FILE, PROFILE_FILE, *(f"{GROUND_TRUTH}/{name}" for name in (
                GT_SESSIONS_FILE, GT_TRACKS_FILE, GT_USERS_FILE, GT_CALIBRATION_FILE))],
            timings={"total": report.seconds},
        )
    return report


def plant(scale: str = "tiny", users: int | None = None, seed: int = 1,
          mechanics: str = "standard") -> Planted:
    """What `generate_dataset` writes for these arguments, simulated without writing a file.

    The planted law stays in memory, so tests can draw from each session's own law.
    """
    n_users, plays_factor = _resolve_size(scale, users, seed)
    law = _resolve_mechanics(mechanics)
    rng = _generators(seed)
    share = n_users / REAL_USERS * plays_factor
    catalog = build_catalog(rng[0], share)
    profiles = _draw_profiles(rng[1], n_users)
    world = _simulate(law, rng[2:PLAYS_STREAM], catalog, profiles, REAL_PLAYS * share)
    return Planted(law=law, users=n_users, plays_factor=plays_factor, share=share,
                   catalog=catalog, profiles=profiles, world=world)


def _generators(seed: int) -> list[np.random.Generator]:
    """The dataset's independent streams: catalog, profiles, users, libraries, sessions, plays."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(6)]


def _simulate(law: Mechanics, rngs: list[np.random.Generator], catalog: Catalog,
              profiles: Profiles, target_rows: float) -> Listening:
    """Listeners, their libraries and sessions, sized to make about `target_rows` plays.

    `rngs` are the users', libraries' and sessions' generators, in that order.
    """
    rng_users, rng_libraries, rng_sessions = rngs
    people = law.draw_users(rng_users, profiles.tz_hours, profiles.registered_s)
    gap = mean_gap_s(people.skip_prob, people.skip_heard, catalog.mean_duration_s)
    rows_per_session = _planned_rows_per_session(law, people, gap, catalog.mean_duration_s)
    need = HEADROOM * target_rows / np.dot(people.planned_sessions, rows_per_session)
    people = scale_history(people, need * people.planned_sessions.sum())
    libraries = build_libraries(rng_libraries, catalog, _library_sizes(
        people.planned_sessions * rows_per_session))
    owner, planned = law.plan_starts(rng_sessions, people)
    first = libraries.draw(rng_sessions, owner)
    # A pilot run measures how many rows the plan makes; a random share of it is then kept.
    pilot = law.simulate_sessions(rng_sessions, people, owner, planned, catalog.duration_s[first],
                              first)
    keep = thin_plan(rng_sessions, owner,
                     min(1.0, target_rows / _expected_rows(pilot, catalog, gap)))
    owner, planned, first = owner[keep], planned[keep], first[keep]
    sessions = law.simulate_sessions(rng_sessions, people, owner, planned,
                                     catalog.duration_s[first], first)
    return Listening(people=people, libraries=libraries, gap_s=gap, sessions=sessions,
                     truth=law_columns(law, sessions, DurationCdf(libraries, catalog)))


def _resolve_size(scale: str, users: int | None, seed: int) -> tuple[int, float]:
    """(users, plays_factor) of a request, or a one-line error naming the bad parameter."""
    chosen = get_scale(scale)
    if users is not None and (isinstance(users, bool) or not isinstance(users, int) or users < 1):
        raise SessionlenError(f"users={users!r}: must be a positive whole number")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise SessionlenError(f"seed={seed!r}: must be a non-negative whole number")
    return (users or chosen.users), chosen.plays_factor


def _resolve_mechanics(name: str) -> Mechanics:
    """The session-level law called `name`, or a one-line error listing the known ones."""
    if name not in MECHANICS:
        raise SessionlenError(f"mechanics={name!r}: must be one of {', '.join(MECHANICS)}")
    return MECHANICS[name]


def _check_out(out: Path) -> None:
    """Refuse to replace anything but an earlier synthetic dataset (or an empty directory)."""
    if out.exists() and not out.is_dir():
        raise SessionlenError(f"{out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / GROUND_TRUTH).is_dir():
        raise SessionlenError(f"{out}: not empty and not a synthetic dataset; refusing to "
                              f"replace it (choose a new or empty directory)")


def _parameters(law: Mechanics, scale: str, users: int, plays_factor: float, seed: int
                ) -> dict[str, Any]:
    """The manifest's record of what was generated."""
    return {"scale": scale, "users": users, "plays_factor": plays_factor, "seed": seed,
            "mechanics": law.name, **law.parameters}


def _expected_rows(sessions: Sessions, catalog: Catalog, gap_s: np.ndarray) -> float:
    """Expected plays-file rows of simulated sessions."""
    single = sessions.length_s == catalog.duration_s[sessions.first_track]
    return float(expected_rows(sessions.length_s, single, gap_s[sessions.user],
                               catalog.mean_duration_s).sum())


def _planned_rows_per_session(law: Mechanics, people: Users, gap_s: np.ndarray,
                              mean_duration_s: float) -> np.ndarray:
    """Rough expected rows per session of each user, to size histories before simulating."""
    return expected_rows(law.mean_length_s(people), np.zeros(people.n, dtype=bool), gap_s,
                         mean_duration_s)


def _library_sizes(expected_rows_per_user: np.ndarray) -> np.ndarray:
    """Favourite tracks per listener: grows with how much they listen."""
    return np.clip(np.round(20 + 0.1 * expected_rows_per_user), 20, 30_000).astype(np.int64)


def _draw_profiles(rng: np.random.Generator, n: int) -> Profiles:
    """Gender, age, country and signup date, empty at the real file's rates (exact counts)."""
    names = np.array([c[0] for c in COUNTRIES], dtype=STR)
    weights = np.array([c[1] for c in COUNTRIES], dtype=np.float64)
    country = rng.choice(len(names), size=n, p=weights / weights.sum())
    tz = np.array([c[2] for c in COUNTRIES])[country]
    us = country == 0
    offsets, shares = zip(*US_OFFSETS, strict=True)
    tz[us] = rng.choice(offsets, size=int(us.sum()), p=shares)
    years = np.array(list(REGISTERED_YEARS))
    p_years = np.array(list(REGISTERED_YEARS.values()), dtype=np.float64)
    year = rng.choice(years, size=n, p=p_years / p_years.sum())
    year_start = np.asarray(year - 1970, dtype="datetime64[Y]").astype("datetime64[s]").astype(
        np.int64)
    registered_s = np.minimum(year_start + rng.integers(0, 365, n) * 86_400, LATEST_SIGNUP_S)
    y, m, d = civil_dates(registered_s // 86_400)
    registered = np.strings.add(np.strings.add(MONTHS[m - 1], " "),
                                np.strings.add(np.strings.add(d.astype(str), ", "), y.astype(str)))
    age = np.clip(np.round(16 + rng.gamma(2.2, 4.0, n)), 15, 60).astype(np.int64)
    odd = rng.random(n) < 0.015
    age[odd] = rng.choice(ODD_AGES, size=int(odd.sum()))
    gender = np.where(rng.random(n) < 0.57, "m", "f").astype(STR)
    fields = {"gender": gender, "age": age.astype(str).astype(STR), "country": names[country],
              "registered": registered.astype(STR)}
    for field, blanks in REAL_EMPTY_PROFILE.items():
        empty = rng.choice(n, size=round(blanks * n / REAL_USERS), replace=False)
        fields[field][empty] = ""
    return Profiles(**fields, tz_hours=tz.astype(np.int64), registered_s=registered_s)


def _user_batches(sessions: Sessions, gap_s: np.ndarray) -> list[slice]:
    """Contiguous session slices of whole users, each about BATCH_ROWS plays."""
    weight = np.bincount(sessions.user, weights=sessions.length_s / gap_s[sessions.user])
    batch_of_user = (np.cumsum(weight) - weight) // BATCH_ROWS
    bounds = np.searchsorted(batch_of_user[sessions.user], np.unique(batch_of_user))
    return [slice(a, b) for a, b in zip(bounds, [*bounds[1:], len(sessions.user)], strict=True)]


def _write_plays(path: Path, rng: np.random.Generator, catalog: Catalog, world: Listening,
                 user_ids: pa.Array) -> tuple[dict[str, Any], np.ndarray]:
    """Write the plays file batch by batch; return dataset counts and rows per session."""
    sessions, people, gap_s = world.sessions, world.people, world.gap_s
    counts = {"plays": 0, "duplicates": 0, "non_ascii": 0, "no_track_mbid": 0}
    played = np.zeros(catalog.n_tracks, dtype=bool)
    rows = np.zeros(len(sessions.user), dtype=np.int64)
    users_seen = 0
    with open(path, "wb") as fh:
        for part in _user_batches(sessions, gap_s):
            who = sessions.user[part]
            plays = session_plays(rng, catalog, world.libraries, who, sessions.start_s[part],
                                  sessions.length_s[part], sessions.first_track[part],
                                  people.skip_prob[who], people.skip_heard[who], gap_s[who])
            fh.write(tsv_bytes(plays, catalog, user_ids))
            counts["plays"] += len(plays.track)
            counts["duplicates"] += int(np.sum((plays.user[1:] == plays.user[:-1])
                                               & (plays.timestamp_s[1:] == plays.timestamp_s[:-1])))
            counts["non_ascii"] += int(catalog.non_ascii[plays.track].sum())
            counts["no_track_mbid"] += int(catalog.no_track_mbid[plays.track].sum())
            played[plays.track] = True
            rows[part] = np.bincount(plays.session, minlength=part.stop - part.start)
            users_seen += len(np.unique(who))
    played_artists = np.zeros(len(catalog.artist_first), dtype=bool)
    played_artists[catalog.track_artist[played]] = True
    counts.update(users=users_seen, tracks=int(played.sum()), artists=int(played_artists.sum()),
                  artists_mbid=int((played_artists & catalog.artist_has_mbid).sum()),
                  played=played)
    return counts, rows


def _write_profiles(path: Path, user_ids: np.ndarray, profiles: Profiles) -> dict[str, int]:
    """Write the profile file (header, one tab-separated line per user); count empty fields."""
    columns = [user_ids, profiles.gender, profiles.age, profiles.country, profiles.registered]
    lines = columns[0]
    for column in columns[1:]:
        lines = np.strings.add(np.strings.add(lines, "\t"), column)
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        fh.write("\t".join(PROFILE_HEADER) + "\n")
        fh.write("\n".join(lines.tolist()) + "\n")
    return {f"empty_{name}": int(np.sum(getattr(profiles, name) == ""))
            for name in REAL_EMPTY_PROFILE}


def _write_ground_truth(folder: Path, user_ids: np.ndarray, world: Listening, catalog: Catalog,
                        played: np.ndarray) -> None:
    """sessions.csv (every planted session), tracks.csv (played catalog), users.csv."""
    sessions = world.sessions
    folder.mkdir()
    _csv(folder / GT_SESSIONS_FILE, GT_SESSIONS_COLUMNS, [
        user_ids[sessions.user], sessions.start_s * 1000, sessions.length_s,
        *(world.truth[name] for name in GT_LAW_COLUMNS)])
    track = np.flatnonzero(played)
    artist = catalog.track_artist[track]
    tags = np.where(catalog.track_tagged[track], catalog.artist_tags[artist], "")
    _csv(folder / GT_TRACKS_FILE, GT_TRACKS_COLUMNS, [
        catalog.artist_name.take(pa.array(artist)), catalog.track_name.take(pa.array(track)),
        catalog.artist_mbid.take(pa.array(artist)), catalog.track_mbid.take(pa.array(track)),
        catalog.duration_s[track] * 1000, tags])
    _csv(folder / GT_USERS_FILE, GT_USERS_COLUMNS, [user_ids, world.people.archetype])


def _csv(path: Path, names: list[str], columns: list[Any]) -> None:
    """A CSV with a header, quoting only where needed (names contain commas and quotes)."""
    frame = pd.DataFrame({name: _series(column) for name, column in zip(names, columns,
                                                                         strict=True)})
    frame.to_csv(path, index=False, lineterminator="\n", quoting=csv.QUOTE_MINIMAL)


def _series(column: Any) -> pd.Series:
    """A column for pandas: text goes through Arrow (fast), numbers as they are."""
    if isinstance(column, pa.Array):
        return column.to_pandas()
    if column.dtype == STR:
        return to_arrow(column).to_pandas()
    return pd.Series(column)


def _write_calibration(path: Path, report: SynthReport) -> None:
    """The calibration table as CSV beside the ground truth."""
    pd.DataFrame([{"figure": f.name, "target": f.target_text(), "generated": f.value,
                   "ok": f.ok} for f in report.figures]).to_csv(path, index=False,
                                                                lineterminator="\n")
