"""Stage 3, denormalize: every play joined with its listener's profile and its track's metadata.

Writes WORK/user_dir/{user_id}/part-00000.csv, one file per user, oldest play first. Equal
timestamps keep the reverse of file order: the raw file is newest first, so the later line is
the earlier play. The text of each field is built here once (profile and metadata lookups) and
shared with the Spark engine, so both engines write the same bytes.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from utils import columns as C
from utils.arrow_memory import prefer_jemalloc
from utils.config import WorkLayout
from utils.crawl import read_metadata_file
from utils.csv_text import (
    concat,
    format_fixed,
    format_int,
    header_line,
    iso_utc_text,
    line_block,
    quote_minimal,
)
from utils.parallel import in_order, worker_count
from utils.spark import check_engine_target
from utils.stage_io import Timer, atomic_dir, require_file, require_stage, write_manifest
from utils.tracks import (
    check_engine,
    distinct_keys,
    encode,
    play_order,
    read_counts,
    timestamp_seconds,
)
from utils.work_lock import locked_stage

if TYPE_CHECKING:
    from matplotlib.figure import Figure

USER_FILE = "part-00000.csv"
# The raw columns the lines are made of.
PLAY_COLUMNS = (C.USER_ID, C.TIMESTAMP, C.ARTIST_NAME, C.TRACK_NAME)
DURATION_DECIMALS = 3
# Rows turned into text at once by the local engine: bounds memory at full scale.
CHUNK_ROWS = 1_000_000
SECONDS_PER_DAY = 86_400

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
    days = np.floor_divide(seconds, SECONDS_PER_DAY)
    dates = days.astype("datetime64[D]")
    months = dates.astype("datetime64[M]")
    year = months.astype("datetime64[Y]").astype(np.int64) + 1970
    month = months.astype(np.int64) % 12 + 1
    day = (dates - months.astype("datetime64[D]")).astype(np.int64) + 1
    return year, (month * 32 + day) * SECONDS_PER_DAY + (seconds - days * SECONDS_PER_DAY)


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


def play_ages(ts_s: np.ndarray, age: pa.Array, reg_year: pa.Array, reg_key: pa.Array
              ) -> pa.Array:
    """Age at each play: age at registration + whole years since; the profile age if no date."""
    known_age = pc.is_valid(age).to_numpy(zero_copy_only=False)
    known_reg = pc.is_valid(reg_year).to_numpy(zero_copy_only=False)
    years = np.zeros(len(ts_s), dtype=np.int64)
    if known_reg.any():
        play_year, play_key = calendar_parts(ts_s)
        elapsed = whole_years(pc.fill_null(reg_year, 0).to_numpy(),
                              pc.fill_null(reg_key, 0).to_numpy(), play_year, play_key)
        years = np.where(known_reg, elapsed, 0)
    return format_int(pc.fill_null(age, 0).to_numpy() + years, ~known_age)


def _lookup_rows(keys: pa.Array, table_keys: pa.Array) -> np.ndarray:
    """Row of each key in `table_keys`, -1 when absent."""
    return pc.fill_null(pc.index_in(keys, value_set=table_keys), -1).to_numpy().astype(np.int64)


def _take_rows(table: pa.Table, rows: np.ndarray) -> pa.Table:
    """table.take(rows) with all-null rows where the row is -1."""
    return table.take(pa.array(rows, mask=rows < 0)).combine_chunks()


def metadata_rows(metadata: pa.Table, artist_keys: pa.Array, track_keys: pa.Array
                  ) -> np.ndarray:
    """Row of the metadata lookup for each (artist key, track key) pair, -1 when absent."""
    meta = metadata.select([C.ARTIST_KEY, C.TRACK_KEY]).append_column(
        "row", pa.array(np.arange(metadata.num_rows)))
    wanted = pa.table({C.ARTIST_KEY: artist_keys, C.TRACK_KEY: track_keys,
                       "pos": pa.array(np.arange(len(artist_keys)))})
    joined = wanted.join(meta, [C.ARTIST_KEY, C.TRACK_KEY], join_type="left outer")
    rows = np.full(len(artist_keys), -1, dtype=np.int64)
    rows[joined["pos"].to_numpy()] = pc.fill_null(joined["row"], -1).to_numpy()
    return rows


@dataclass
class PlayFields:
    """What the play lines are made of, prepared once for all plays (local engine).

    Per play: the start second and codes into text made once per distinct value: the user's
    id and profile fields, the artist and track spellings (quoted as CSV needs), and the
    track's "duration,genre" line end. `order` sorts the plays by user, then time, equal
    times latest file line first.
    """

    user_codes: np.ndarray
    ts_s: np.ndarray
    order: np.ndarray
    artist_codes: np.ndarray
    title_codes: np.ndarray
    track_ids: np.ndarray
    users: pa.Array
    artist_text: pa.Array
    title_text: pa.Array
    per_user: pa.Table
    user_place: pa.Array
    track_end: pa.Array
    track_known: np.ndarray


def _text_or_empty(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Text values as one large_string array, nulls as empty fields."""
    filled = pc.fill_null(values.cast(pa.large_string()), "")
    return filled.combine_chunks() if isinstance(filled, pa.ChunkedArray) else filled


def prepare_fields(plays: pa.Table, people: pa.Table, metadata: pa.Table) -> PlayFields:
    """Encode users and names, order the plays, and look up profiles and metadata.

    Every text that depends only on a user, a spelling or a track is made here once per
    distinct value; the lines then only gather it.
    """
    user_codes, users = encode(plays[C.USER_ID])
    ts_s = timestamp_seconds(plays)
    artist_codes, artists = encode(pc.fill_null(plays[C.ARTIST_NAME], ""))
    title_codes, titles = encode(pc.fill_null(plays[C.TRACK_NAME], ""))
    artist_key_of, artist_values = distinct_keys(artists)
    track_key_of, track_values = distinct_keys(titles)
    track_ids, pairs = pd.factorize(artist_key_of[artist_codes] * len(track_values)
                                    + track_key_of[title_codes])
    pairs = np.asarray(pairs, dtype=np.int64)
    meta_rows = metadata_rows(metadata, artist_values.take(pa.array(pairs // len(track_values))),
                              track_values.take(pa.array(pairs % len(track_values))))
    per_track = _take_rows(metadata.select([DURATION_TEXT, GENRE_TEXT]), meta_rows)
    per_user = _take_rows(people, _lookup_rows(users, people[C.USER_ID].combine_chunks()))
    return PlayFields(
        user_codes=user_codes, ts_s=ts_s, order=play_order(user_codes, ts_s),
        artist_codes=artist_codes, title_codes=title_codes, track_ids=track_ids.astype(np.int64),
        users=users, artist_text=quote_minimal(artists), title_text=quote_minimal(titles),
        per_user=per_user,
        user_place=concat(_text_or_empty(per_user[COUNTRY_TEXT]),
                          _text_or_empty(per_user[REGISTERED_TEXT]), sep=","),
        # The line break rides on the last field: no full-width pass to append it.
        track_end=concat(_text_or_empty(per_track[DURATION_TEXT]),
                         concat(_text_or_empty(per_track[GENRE_TEXT]), "\n"), sep=","),
        track_known=pc.is_valid(per_track[DURATION_TEXT]).to_numpy(zero_copy_only=False),
    )


def play_lines(fields: PlayFields, rows: np.ndarray) -> pa.Array:
    """The CSV lines of the plays at `rows` (indices into the plays), in that order."""
    users = pa.array(fields.user_codes[rows])
    person = fields.per_user.take(users)
    lines = concat(
        fields.users.take(users),
        iso_utc_text(fields.ts_s[rows]),
        fields.artist_text.take(pa.array(fields.artist_codes[rows])),
        fields.title_text.take(pa.array(fields.title_codes[rows])),
        _text_or_empty(person[GENDER_TEXT]),
        _text_or_empty(play_ages(fields.ts_s[rows], person[C.AGE], person[REGISTERED_YEAR],
                                 person[REGISTERED_DAY_KEY])),
        fields.user_place.take(users),
        fields.track_end.take(pa.array(fields.track_ids[rows])),
        sep=",",
    )
    return lines.combine_chunks() if isinstance(lines, pa.ChunkedArray) else lines


def user_batches(bounds: np.ndarray, chunk_rows: int) -> list[tuple[int, int]]:
    """(first, last) user ranges of about `chunk_rows` plays each, whole users, at least one.

    `bounds[u]` is the position of user u's first play in the sorted plays.
    """
    batches, first, n_users = [], 0, len(bounds) - 1
    while first < n_users:
        last = max(first + 1, int(np.searchsorted(bounds, bounds[first] + chunk_rows, "right")) - 1)
        batches.append((first, last))
        first = last
    return batches


def write_user_files(out_dir: Path, fields: PlayFields, chunk_rows: int = CHUNK_ROWS) -> int:
    """Write out_dir/{user}/part-00000.csv for every user; rows out.

    Batches of whole users are turned into text on a few threads (Arrow releases the GIL)
    while this thread writes the finished batches' files, each in one write.
    """
    sorted_users = fields.user_codes[fields.order]
    bounds = np.searchsorted(sorted_users, np.arange(len(fields.users) + 1))
    names = fields.users.to_pylist()
    header = header_line(C.USER_DIR_COLUMNS)
    batches = user_batches(bounds, chunk_rows)

    def batch_lines(batch: tuple[int, int]) -> pa.Array:
        return play_lines(fields, fields.order[bounds[batch[0]]:bounds[batch[1]]])

    workers = worker_count()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for (first, last), lines in zip(batches, in_order(pool, batch_lines, batches, workers),
                                        strict=True):
            for user in range(first, last):
                folder = out_dir / names[user]
                folder.mkdir()
                with open(folder / USER_FILE, "wb") as fh:
                    fh.write(header)
                    fh.write(line_block(lines, bounds[user] - bounds[first],
                                        bounds[user + 1] - bounds[first]))
    return int(bounds[-1])


def join_counts(fields: PlayFields) -> dict[str, int]:
    """How many users and plays found no profile, and how many plays no track metadata."""
    no_profile = pc.is_null(fields.per_user[C.USER_ID]).to_numpy(zero_copy_only=False)
    plays_per_user = np.bincount(fields.user_codes, minlength=len(fields.users))
    return {
        "users": len(fields.users),
        "users_without_profile": int(no_profile.sum()),
        "plays_without_profile": int(plays_per_user[no_profile].sum()),
        "plays_without_metadata": int(np.count_nonzero(~fields.track_known[fields.track_ids])),
    }


def _local_denormalize(plays_path: Path, rejects_dir: Path, people: pa.Table,
                       metadata: pa.Table, out_dir: Path) -> dict[str, Any]:
    """Local engine: read, join and write every user's file; the counts for the manifest."""
    from utils.raw_reader import read_plays_arrow

    prefer_jemalloc()
    # MBIDs and line numbers are not written: the reader checks every line but builds neither.
    plays = read_plays_arrow(plays_path, rejects_dir, columns=PLAY_COLUMNS)
    counts = read_counts(plays)
    fields = prepare_fields(plays, people, metadata)
    del plays  # the fields hold every code and text the lines need
    rows_out = write_user_files(out_dir, fields)
    return {**counts, **join_counts(fields), "rows_out": rows_out}


@locked_stage("user_dir", reads=("tracks",))
def denormalize(raw: Path, work: Path, engine: str = "local",
                spark_master: str | None = None) -> dict:
    """Stage denormalize: write WORK/user_dir/{user}/part-00000.csv and the manifest."""
    from utils.raw_reader import read_profiles

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
            from utils.spark_stages import spark_denormalize

            counts = spark_denormalize(plays_path, layout.rejects, people, metadata, tmp,
                                       spark_master)
        else:
            counts = _local_denormalize(plays_path, layout.rejects, people, metadata, tmp)
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

    from utils.plots import finish_figure

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
