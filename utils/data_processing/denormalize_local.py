"""The local engine of the denormalize stage: every user's play file from the raw plays.

The plays are read once; every text that depends only on a user, a spelling or a track is made
once per distinct value, and the lines, ordered by user and time, only gather it. Batches of
whole users are formatted on a few threads while their files are written, each in one write.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from utils.core import columns as C
from utils.core.civil_dates import ISO_WIDTH, Days
from utils.core.csv_text import (
    concat,
    equal_width_rows,
    fixed_width_text,
    header_line,
    line_block,
    quote_minimal,
)
from utils.core.parallel import in_order, worker_count
from utils.data_processing.denormalize_fields import (
    COUNTRY_TEXT,
    DURATION_TEXT,
    GENDER_TEXT,
    GENRE_TEXT,
    REGISTERED_TEXT,
    USER_FILE,
    AgeInputs,
    lookup_rows,
    play_ages,
    profile_text,
    take_rows,
)
from utils.data_processing.play_evidence import play_order, timestamp_seconds
from utils.data_processing.plays_reader import read_plays_arrow, used_dictionary
from utils.data_processing.tracks import distinct_keys, read_counts

# Rows turned into text at once. Small batches keep the text in flight small: memory the
# process already has is reused, while every new page costs a page fault.
CHUNK_ROWS = 250_000
# The raw columns the lines are made of; all but the start time are read dictionary-encoded.
PLAY_COLUMNS = (C.USER_ID, C.TIMESTAMP, C.ARTIST_NAME, C.TRACK_NAME)
ENCODED_COLUMNS = (C.USER_ID, C.ARTIST_NAME, C.TRACK_NAME)


@dataclass
class PlayFields:
    """What the play lines are made of, prepared once for all plays (local engine).

    Per play: the start second and codes into text made once per distinct value: the user's
    id (also as a byte matrix when every id has one length) and profile fields, and for each
    spelling pair the "artist,track" names (quoted as CSV needs) and its track's
    "duration,genre" line end. `order` sorts the plays by user, then time, equal times
    latest file line first.
    """

    user_codes: np.ndarray
    ts_s: np.ndarray
    order: np.ndarray
    pair_ids: np.ndarray
    users: pa.Array
    user_rows: np.ndarray | None
    profile_known: np.ndarray
    user_gender: pa.Array
    user_place: pa.Array
    ages: AgeInputs
    pair_names: pa.Array
    pair_end: pa.Array
    pair_known: np.ndarray


def _text_or_empty(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Text values as one large_string array, nulls as empty fields."""
    filled = pc.fill_null(values.cast(pa.large_string()), "")
    return filled.combine_chunks() if isinstance(filled, pa.ChunkedArray) else filled


@dataclass
class Names:
    """One name column: code per play, the distinct spellings as CSV text, and their keys."""

    codes: np.ndarray
    text: pa.Array
    key_of: np.ndarray
    keys: pa.Array


def encode_names(names: pa.ChunkedArray) -> Names:
    """Code each play's spelling (read encoded); quote and key each distinct spelling once."""
    codes, spellings = used_dictionary(names)
    key_of, keys = distinct_keys(spellings)
    return Names(codes, quote_minimal(spellings), key_of, keys)


@dataclass
class MetadataKeys:
    """The metadata's tracks as pair codes artist * len(track_keys) + track of codes into the
    plays' distinct keys, and the metadata row of each; tracks whose artist or title no play
    has are left out."""

    rows: np.ndarray
    pairs: pd.Index


def metadata_keys(metadata: pa.Table, artist_keys: pa.Array, track_keys: pa.Array
                  ) -> MetadataKeys:
    """Code the metadata's keys as the plays' tracks are coded (see `metadata_rows`)."""
    meta_artist = lookup_rows(metadata[C.ARTIST_KEY].combine_chunks(), artist_keys)
    meta_track = lookup_rows(metadata[C.TRACK_KEY].combine_chunks(), track_keys)
    known = np.flatnonzero((meta_artist >= 0) & (meta_track >= 0))
    return MetadataKeys(known, pd.Index(meta_artist[known] * len(track_keys) + meta_track[known]))


def metadata_rows(keys: MetadataKeys, pairs: np.ndarray) -> np.ndarray:
    """Row of the metadata lookup for each wanted track, -1 when absent.

    A wanted track is a pair code artist * len(track_keys) + track of codes into the distinct
    artist and track keys, coded as `keys` codes the metadata's, so tracks are matched as
    integers (the metadata's pairs are unique: its reader refuses duplicates).
    """
    position = keys.pairs.get_indexer(pairs)
    # get_indexer says -1 for a track the metadata lacks, which picks the appended -1.
    return np.append(keys.rows, -1)[position]


def file_order_runs(user_codes: np.ndarray, ts_s: np.ndarray) -> np.ndarray | None:
    """`play_order` of plays laid out as the Last.fm files are, None for any other layout.

    In those files each user's plays are one block, newest first, and the user codes count up
    in order of first appearance; the order is then every block read backwards (equal times
    too: the later line is the earlier play), found in two passes instead of a sort.
    """
    same_user = user_codes[1:] == user_codes[:-1]
    if not (np.all(user_codes[1:] >= user_codes[:-1])
            and np.all(~same_user | (ts_s[1:] <= ts_s[:-1]))):
        return None
    n_users = int(user_codes[-1]) + 1 if len(user_codes) else 0
    bounds = np.searchsorted(user_codes, np.arange(n_users + 1, dtype=user_codes.dtype))
    # Half the memory of int64 for every play whenever the positions fit.
    position = np.int32 if len(user_codes) < 2**31 else np.int64
    order = (bounds[1:] + bounds[:-1] - 1).astype(position)[user_codes]
    return np.subtract(order, np.arange(len(user_codes), dtype=position), out=order)


def users_in_order(plays: pa.Table) -> tuple[np.ndarray, pa.Array, np.ndarray, np.ndarray]:
    """(user code per play, distinct users, start second per play, the plays' output order)."""
    user_codes, users = used_dictionary(plays[C.USER_ID])
    ts_s = timestamp_seconds(plays)
    order = file_order_runs(user_codes, ts_s)
    if order is None:
        # play_order builds int64 sort keys from the codes.
        order = play_order(user_codes.astype(np.int64), ts_s)
    return user_codes, users, ts_s, order


def spelling_pairs(artist_codes: np.ndarray, title_codes: np.ndarray, n_titles: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pair id per play, artist code per pair, title code per pair) of the distinct
    (artist, title) spelling pairs; every title code below `n_titles` must occur.

    Nearly every track spelling is played under one artist spelling. Each title's pair with
    one artist it is played under takes the title's code as its id, found by gathers alone;
    only the plays of the other pairs are hashed.
    """
    # Repeated indices leave one of their values: any artist a title is played under will do.
    main_artist = np.empty(n_titles, dtype=artist_codes.dtype)
    main_artist[title_codes] = artist_codes
    other = np.flatnonzero(artist_codes != main_artist[title_codes])
    other_ids, other_pairs = pd.factorize(artist_codes[other].astype(np.int64) * n_titles
                                          + title_codes[other])
    other_artist, other_title = np.divmod(np.asarray(other_pairs, dtype=np.int64), n_titles)
    pair_ids = title_codes.copy()
    pair_ids[other] = n_titles + other_ids
    return (pair_ids, np.concatenate([main_artist, other_artist]),
            np.concatenate([np.arange(n_titles), other_title]))


def prepare_fields(plays: pa.Table, people: pa.Table, metadata: pa.Table) -> PlayFields:
    """Encode users and names, order the plays, and look up profiles and metadata.

    Every text that depends only on a user, a spelling or a track is made here once per
    distinct value; the lines then only gather it. The users' order and the two name columns
    are worked out on separate threads (Arrow and numpy's sort release the GIL).
    """
    with ThreadPoolExecutor(max_workers=worker_count()) as pool:
        ordered = pool.submit(users_in_order, plays)
        artists = pool.submit(encode_names, plays[C.ARTIST_NAME])
        titles = encode_names(plays[C.TRACK_NAME])
        artists = artists.result()
        # The metadata's keys are coded while the plays' spelling pairs are found.
        coded_metadata = pool.submit(metadata_keys, metadata, artists.keys, titles.keys)
        # Tracks are matched per distinct spelling pair: far fewer than plays.
        pair_ids, pair_artist, pair_title = spelling_pairs(artists.codes, titles.codes,
                                                           len(titles.text))
        track_of_pair, tracks = pd.factorize(artists.key_of[pair_artist] * len(titles.keys)
                                             + titles.key_of[pair_title])
        meta_rows = metadata_rows(coded_metadata.result(), np.asarray(tracks, dtype=np.int64))
        user_codes, users, ts_s, order = ordered.result()
    per_track = take_rows(metadata.select([DURATION_TEXT, GENRE_TEXT]), meta_rows)
    per_user = take_rows(people, lookup_rows(users, people[C.USER_ID].combine_chunks()))
    # The line break rides on the last field: no full-width pass to append it.
    track_end = concat(_text_or_empty(per_track[DURATION_TEXT]),
                       concat(_text_or_empty(per_track[GENRE_TEXT]), "\n"), sep=",")
    track_known = pc.is_valid(per_track[DURATION_TEXT]).to_numpy(zero_copy_only=False)
    return PlayFields(
        user_codes=user_codes, ts_s=ts_s, order=order, pair_ids=pair_ids,
        users=users, user_rows=equal_width_rows(users),
        profile_known=pc.is_valid(per_user[C.USER_ID]).to_numpy(zero_copy_only=False),
        user_gender=_text_or_empty(per_user[GENDER_TEXT]),
        user_place=concat(_text_or_empty(per_user[COUNTRY_TEXT]),
                          _text_or_empty(per_user[REGISTERED_TEXT]), sep=","),
        ages=AgeInputs.of(per_user),
        pair_names=concat(artists.text.take(pa.array(pair_artist)),
                          titles.text.take(pa.array(pair_title)), sep=","),
        pair_end=track_end.take(pa.array(track_of_pair)),
        pair_known=track_known[track_of_pair],
    )


def user_and_start(fields: PlayFields, user_codes: np.ndarray, days: Days) -> pa.Array:
    """The `user_id,timestamp` fields of each play.

    When every user id has one length (as Last.fm's do) both are written into one
    fixed-width byte matrix; otherwise the ids are gathered and joined to the times.
    """
    if fields.user_rows is None:
        return concat(fields.users.take(pa.array(user_codes)), days.iso_text(), sep=",")
    width = fields.user_rows.shape[1]
    text = np.empty((len(user_codes), width + 1 + ISO_WIDTH), dtype=np.uint8)
    text[:, :width] = fields.user_rows[user_codes]
    text[:, width] = ord(",")
    days.write_iso(text, width + 1)
    return fixed_width_text(text)


def play_lines(fields: PlayFields, rows: np.ndarray) -> pa.Array:
    """The CSV lines of the plays at `rows` (indices into the plays), in that order."""
    user_codes = fields.user_codes[rows]
    days = Days.of(fields.ts_s[rows])
    pairs = pa.array(fields.pair_ids[rows])
    lines = concat(
        user_and_start(fields, user_codes, days),
        fields.pair_names.take(pairs),
        profile_text(fields.user_gender, fields.user_place, user_codes,
                     *play_ages(days, user_codes, fields.ages)),
        fields.pair_end.take(pairs),
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
    bounds = np.searchsorted(sorted_users,
                             np.arange(len(fields.users) + 1, dtype=sorted_users.dtype))
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
    no_profile = ~fields.profile_known
    plays_per_user = np.bincount(fields.user_codes, minlength=len(fields.users))
    return {
        "users": len(fields.users),
        "users_without_profile": int(no_profile.sum()),
        "plays_without_profile": int(plays_per_user[no_profile].sum()),
        "plays_without_metadata": int(np.count_nonzero(~fields.pair_known[fields.pair_ids])),
    }


def local_denormalize(plays_path: Path, rejects_dir: Path,
                      lookups: Callable[[], tuple[pa.Table, pa.Table]], out_dir: Path
                      ) -> dict[str, Any]:
    """Local engine: read, join and write every user's file; the counts for the manifest.

    `lookups` gives the (profile, metadata) lookups; it is called once the plays are read,
    so that they can be read meanwhile.
    """
    # MBIDs and line numbers are not written: the reader checks every line but builds neither.
    plays = read_plays_arrow(plays_path, rejects_dir, columns=PLAY_COLUMNS,
                             encoded=ENCODED_COLUMNS)
    counts = read_counts(plays)
    fields = prepare_fields(plays, *lookups())
    del plays  # the fields hold every code and text the lines need
    rows_out = write_user_files(out_dir, fields)
    return {**counts, **join_counts(fields), "rows_out": rows_out}
