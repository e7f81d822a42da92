"""Stage 3, denormalize: every play joined with its listener's profile and its track's metadata.

Writes WORK/user_dir/{user_id}/part-00000.csv, one file per user, oldest play first. Equal
timestamps keep the reverse of file order: the raw file is newest first, so the later line is
the earlier play. The text of each field is built here once (profile and metadata lookups) and
shared with the Spark engine, so both engines write the same bytes; the local engine's lines
are made in `utils.data_processing.denormalize_local`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from utils.core import columns as C
from utils.core.civil_dates import SECONDS_PER_DAY, civil_from_days
from utils.core.config import WorkLayout
from utils.core.csv_text import format_fixed, format_small_ints, quote_minimal
from utils.core.spark import check_engine_target
from utils.core.stage_io import Timer, atomic_dir, require_file, require_stage, write_manifest
from utils.core.work_lock import locked_stage
from utils.data_processing.track_metadata import read_metadata_file
from utils.data_processing.tracks import check_engine

if TYPE_CHECKING:
    from matplotlib.figure import Figure

USER_FILE = "part-00000.csv"
DURATION_DECIMALS = 3

# Lookup columns: the CSV text of each output field, plus what the age rule needs.
DURATION_TEXT = "duration_text"
GENRE_TEXT = "genre_text"
GENDER_TEXT = "gender_text"
COUNTRY_TEXT = "country_text"
REGISTERED_TEXT = "registered_text"
REGISTERED_YEAR = "registered_year"
REGISTERED_DAY_KEY = "registered_day_key"


def metadata_lookup(metadata: pd.DataFrame) -> pa.Table:
    """Per track key: the duration and genre fields as CSV text."""
    return pa.table({
        C.ARTIST_KEY: pa.array(metadata[C.ARTIST_KEY], pa.large_string()),
        C.TRACK_KEY: pa.array(metadata[C.TRACK_KEY], pa.large_string()),
        DURATION_TEXT: format_fixed(metadata[C.DURATION].to_numpy(), DURATION_DECIMALS),
        GENRE_TEXT: quote_minimal(pa.array(metadata[C.GENRE], pa.large_string())),
    })


def calendar_parts(seconds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(year, position within the year) of UTC instants; positions compare like dates + times.

    The position is (month * 32 + day) * 86400 + second of day, so comparing positions tells
    whether an anniversary has been reached, a 29 February one included (it falls on 1 March).
    """
    days, second_of_day = np.divmod(np.asarray(seconds, dtype=np.int64), SECONDS_PER_DAY)
    year, month, day = civil_from_days(days)
    return year, (month * 32 + day) * SECONDS_PER_DAY + second_of_day


def whole_years(from_year: np.ndarray, from_key: np.ndarray, to_year: np.ndarray,
                to_key: np.ndarray) -> np.ndarray:
    """Whole years elapsed between two instants given as calendar parts (negative if before)."""
    forward = (to_year - from_year) - (to_key < from_key)
    backward = -((from_year - to_year) - (from_key < to_key))
    return np.where((to_year > from_year) | ((to_year == from_year) & (to_key >= from_key)),
                    forward, backward)


def profile_lookup(profiles: pd.DataFrame) -> pa.Table:
    """Per user: gender, country and registered as CSV text, and the age rule's inputs."""
    registered = profiles[C.REGISTERED]
    known = registered.notna().to_numpy()
    seconds = np.where(known, registered.to_numpy("datetime64[s]", na_value=np.datetime64(0, "s"))
                       .astype(np.int64), 0)
    year, day_key = calendar_parts(seconds)
    age = profiles[C.AGE]
    return pa.table({
        C.USER_ID: pa.array(profiles[C.USER_ID], pa.large_string()),
        GENDER_TEXT: pa.array(profiles[C.GENDER].fillna(""), pa.large_string()),
        C.AGE: pa.array(age.fillna(0).to_numpy(np.int64), mask=age.isna().to_numpy()),
        COUNTRY_TEXT: quote_minimal(pa.array(profiles[C.COUNTRY], pa.large_string())),
        REGISTERED_TEXT: pc.fill_null(pc.strftime(
            pa.array(seconds, pa.timestamp("s", tz="UTC"), mask=~known), format="%Y-%m-%d"), ""),
        REGISTERED_YEAR: pa.array(year, mask=~known),
        REGISTERED_DAY_KEY: pa.array(day_key, mask=~known),
    })


@dataclass(frozen=True)
class AgeInputs:
    """Per user, what the age rule needs: the profile age and the registration date's
    calendar parts, each with whether it is known (a user without a profile knows neither)."""

    age: np.ndarray
    age_known: np.ndarray
    registered_year: np.ndarray
    registered_key: np.ndarray
    registered_known: np.ndarray

    @classmethod
    def of(cls, per_user: pa.Table) -> AgeInputs:
        """The inputs of the profile lookup rows `per_user` (nulls where unknown)."""
        def values(name: str) -> np.ndarray:
            return pc.fill_null(per_user[name], 0).to_numpy().astype(np.int64)

        def known(name: str) -> np.ndarray:
            return pc.is_valid(per_user[name]).to_numpy(zero_copy_only=False)

        return cls(values(C.AGE), known(C.AGE), values(REGISTERED_YEAR),
                   values(REGISTERED_DAY_KEY), known(REGISTERED_YEAR))


def play_ages(ts_s: np.ndarray, users: np.ndarray, inputs: AgeInputs) -> pa.Array:
    """The age field of each play (user row `users`): age at registration + whole years since,
    the profile age if no date, empty if no age."""
    registered = inputs.registered_known[users]
    years = np.zeros(len(ts_s), dtype=np.int64)
    if registered.any():
        play_year, play_key = calendar_parts(ts_s)
        elapsed = whole_years(inputs.registered_year[users], inputs.registered_key[users],
                              play_year, play_key)
        years = np.where(registered, elapsed, 0)
    return format_small_ints(inputs.age[users] + years, ~inputs.age_known[users])


def lookup_rows(keys: pa.Array, table_keys: pa.Array) -> np.ndarray:
    """Row of each key in `table_keys`, -1 when absent."""
    return pc.fill_null(pc.index_in(keys, value_set=table_keys), -1).to_numpy().astype(np.int64)


def take_rows(table: pa.Table, rows: np.ndarray) -> pa.Table:
    """table.take(rows) with all-null rows where the row is -1."""
    return table.take(pa.array(rows, mask=rows < 0)).combine_chunks()


@locked_stage("user_dir", reads=("tracks",))
def denormalize(raw: Path, work: Path, engine: str = "local",
                spark_master: str | None = None) -> dict:
    """Stage denormalize: write WORK/user_dir/{user}/part-00000.csv and the manifest."""
    from utils.data_processing.profile_reader import read_profiles

    check_engine(engine)
    check_engine_target(engine, spark_master)
    raw, layout = Path(raw), WorkLayout(Path(work))
    require_stage(layout.tracks, "metadata")
    plays_path = require_file(raw / C.PLAYS_FILE, "plays file")
    profile_path = require_file(raw / C.PROFILE_FILE, "profile file")
    with Timer() as prepare:
        profiles = read_profiles(profile_path, layout.rejects)
        people = profile_lookup(profiles.frame)
        metadata = metadata_lookup(read_metadata_file(layout.track_metadata))
    with Timer() as build, atomic_dir(layout.user_dir) as tmp:
        if engine == "spark":
            from utils.data_processing.spark_stages import spark_denormalize

            counts = spark_denormalize(plays_path, layout.rejects, people, metadata, tmp,
                                       spark_master)
        else:
            from utils.data_processing.denormalize_local import local_denormalize

            counts = local_denormalize(plays_path, layout.rejects, people, metadata, tmp)
    join = {k: counts[k] for k in ("users", "users_without_profile", "plays_without_profile",
                                   "plays_without_metadata")}
    write_manifest(
        layout.user_dir, "denormalize", inputs=[plays_path, profile_path, layout.track_metadata],
        parameters={
            "engine": engine, "spark_master": spark_master, "join_counts": join,
            "rejects_file": str(counts["rejects_path"] or ""),
            "profile_rows_rejected": profiles.rows_rejected,
            "profile_rejects_file": str(profiles.rejects_path or ""),
            "profile_values_nullified": profiles.nullified,
        },
        rows_in=counts["rows_in"], rows_out=counts["rows_out"],
        rows_rejected=counts["rows_rejected"], outputs=sorted(
            p.name for p in layout.user_dir.iterdir() if p.is_dir()),
        timings={"prepare": prepare.seconds, "build_and_write": build.seconds},
    )
    return {"engine": engine, "plays_in": counts["rows_in"], "plays_out": counts["rows_out"],
            "plays_rejected": counts["rows_rejected"], **join,
            "output": str(layout.user_dir), "seconds": round(prepare.seconds + build.seconds, 3)}


def rows_per_user(work: Path) -> pd.Series:
    """Plays written per user, most first: lines of each file minus the header (no field
    holds a line break: names come from LF-split lines, genres are tag names)."""
    user_dir = WorkLayout(Path(work)).user_dir
    require_stage(user_dir, "denormalize")
    counts = {f.parent.name: f.read_bytes().count(b"\n") - 1
              for f in user_dir.glob(f"*/{USER_FILE}")}
    return pd.Series(counts, name="plays").rename_axis(C.USER_ID).sort_values(ascending=False)


def plot_rows_per_user(counts: pd.Series, out: Path | None = None) -> Figure:
    """Histogram of plays per user on log-spaced bins (saved to `out` if given)."""
    import matplotlib.pyplot as plt

    from utils.core.plots import finish_figure

    fig, ax = plt.subplots(figsize=(7, 4))
    bins = np.geomspace(max(int(counts.min()), 1), int(counts.max()) + 1, 30)
    ax.hist(counts.to_numpy(), bins=bins, color="tab:blue", alpha=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("plays of a user")
    ax.set_ylabel("users")
    ax.set_title(f"Plays per user: {len(counts):,} users, median {int(counts.median()):,}")
    return finish_figure(fig, out)


def user_sample(work: Path, user: str | None = None, rows: int = 10) -> pd.DataFrame:
    """The first `rows` lines of a user's file (default: the user with the most plays)."""
    user = user or str(rows_per_user(work).index[0])
    path = WorkLayout(Path(work)).user_dir / user / USER_FILE
    require_file(path, f"user file of {user}")
    return pd.read_csv(path, nrows=rows, dtype=str, keep_default_na=False)
