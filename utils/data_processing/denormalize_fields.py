"""The text of every field of a user file, made once and shared by both denormalize engines.

Profile and metadata fields become lookup tables of CSV text (one row per user, one per track)
on the driver; the local engine (`denormalize_local`, which the Spark engine's tasks also run)
gathers them into lines and the Spark SQL plan (`spark_stages`) joins them in, so they cannot
drift. The one field that depends on the play itself, the listener's age at that moment,
follows the age rule here, which the SQL plan repeats in Spark SQL.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from utils.core import columns as C
from utils.core.civil_dates import Days
from utils.core.csv_text import format_fixed, quote_minimal

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


def metadata_lookup(metadata: pa.Table) -> pa.Table:
    """Per track key: the duration and genre fields as CSV text (`read_metadata_table`)."""
    return pa.table({
        C.ARTIST_KEY: metadata[C.ARTIST_KEY].cast(pa.large_string()),
        C.TRACK_KEY: metadata[C.TRACK_KEY].cast(pa.large_string()),
        DURATION_TEXT: format_fixed(metadata[C.DURATION].to_numpy(), DURATION_DECIMALS),
        GENRE_TEXT: quote_minimal(metadata[C.GENRE]),
    })


def calendar_parts(seconds: np.ndarray | Days) -> tuple[np.ndarray, np.ndarray]:
    """(year, position within the year) of UTC instants; positions compare like dates + times.

    The position is (month * 32 + day) * 86400 + second of day, so comparing positions tells
    whether an anniversary has been reached, a 29 February one included (it falls on 1 March).
    """
    days = seconds if isinstance(seconds, Days) else Days.of(seconds)
    return days.year[days.row], days.calendar_key()


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


def play_ages(days: Days, users: np.ndarray, inputs: AgeInputs) -> tuple[np.ndarray, np.ndarray]:
    """(age, unknown) of each play at instants `days` by user row `users`: age at registration
    + whole years since, the profile age if no date; unknown where the profile has no age."""
    registered = inputs.registered_known[users]
    years = np.zeros(len(users), dtype=np.int64)
    if registered.any():
        play_year, play_key = calendar_parts(days)
        elapsed = whole_years(inputs.registered_year[users], inputs.registered_key[users],
                              play_year, play_key)
        years = np.where(registered, elapsed, 0)
    return inputs.age[users] + years, ~inputs.age_known[users]


def profile_text(gender: pa.Array, place: pa.Array, users: np.ndarray, ages: np.ndarray,
                 unknown_age: np.ndarray) -> pa.Array:
    """The `gender,age,country,registered` fields of each play, by user row `users`.

    `gender` and `place` (`country,registered`) are per user. Plays in user order come in long
    runs of one user and one age: the text is made once per run and gathered.
    """
    starts = np.ones(len(users), dtype=bool)
    starts[1:] = ((users[1:] != users[:-1]) | (ages[1:] != ages[:-1])
                  | (unknown_age[1:] != unknown_age[:-1]))
    first = np.flatnonzero(starts)
    run_users = pa.array(users[first])
    age_text = pc.if_else(pa.array(unknown_age[first]), pa.scalar("", pa.large_string()),
                          pa.array(ages[first]).cast(pa.large_string()))
    text = pc.binary_join_element_wise(gender.take(run_users), age_text, place.take(run_users),
                                       pa.scalar(",", pa.large_string()))
    return text.take(pa.array(np.cumsum(starts) - 1))


def lookup_rows(keys: pa.Array, table_keys: pa.Array) -> np.ndarray:
    """Row of each key in `table_keys`, -1 when absent."""
    return pc.fill_null(pc.index_in(keys, value_set=table_keys), -1).to_numpy().astype(np.int64)


def take_rows(table: pa.Table, rows: np.ndarray) -> pa.Table:
    """table.take(rows) with all-null rows where the row is -1."""
    return table.take(pa.array(rows, mask=rows < 0)).combine_chunks()
