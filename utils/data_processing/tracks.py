"""Stage 1, tracks: every distinct (artist, track) of the plays, with the offline duration evidence.

A track is identified by its keys: the artist and track names stripped of whitespace and
lower-cased (Python's `str.strip().lower()`: full Unicode case mapping), the join key of every
later stage. For each track the stage keeps the most frequent original spellings and MBIDs, the
play count, and the median in-session start-to-start gap after its plays (and after its artist's
plays): what the metadata stage falls back on when the Last.fm API has no duration.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from utils.core import columns as C
from utils.core.config import DisplayParams, WorkLayout
from utils.core.csv_text import format_fixed, format_int, join_lines, quote_minimal, write_lines
from utils.core.errors import SessionlenError
from utils.core.spark import check_engine_target
from utils.core.stage_io import Timer, atomic_dir, require_file, write_manifest
from utils.core.work_lock import locked_stage
from utils.data_processing.play_evidence import (
    encode,
    in_session_gaps,
    play_order,
    timestamp_seconds,
)
from utils.data_processing.track_rules import MAX_IN_SESSION_GAP_S, name_key

if TYPE_CHECKING:
    from matplotlib.figure import Figure



def distinct_keys(names: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """Key code of each of `names` (distinct names) and the distinct keys: the key rule runs
    once per name."""
    return encode(pa.array([name_key(s) for s in names.to_pylist()], pa.large_string()))


def encode_keys(names: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    """Key code per row and the distinct keys; the key rule runs once per distinct name."""
    codes, uniques = encode(pc.fill_null(names, ""))
    key_codes, key_uniques = distinct_keys(uniques)
    return key_codes[codes], key_uniques


def code_ranks(uniques: pa.Array) -> np.ndarray:
    """Rank of each distinct string in code point order (= UTF-8 byte order, as Spark sorts)."""
    order = pc.sort_indices(uniques).to_numpy()
    ranks = np.empty(len(order), dtype=np.int64)
    ranks[order] = np.arange(len(order))
    return ranks


def group_medians(groups: np.ndarray, values: np.ndarray, n_groups: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Per group: the median of its non-negative integer values (NaN when none), and the count."""
    counts = np.bincount(groups, minlength=n_groups)
    medians = np.full(n_groups, np.nan)
    if len(values) == 0:
        return medians, counts
    # One sort of a combined (group, value) key is several times faster than a lexsort.
    span = int(values.max()) + 1
    ordered = (np.sort(groups * span + values) % span).astype(np.float64)
    starts = np.cumsum(counts) - counts
    has = counts > 0
    low = (starts + (counts - 1) // 2)[has]
    high = (starts + counts // 2)[has]
    medians[has] = (ordered[low] + ordered[high]) / 2.0
    return medians, counts


def most_frequent(groups: np.ndarray, codes: np.ndarray, ranks: np.ndarray, n_groups: int
                  ) -> np.ndarray:
    """Per group: the code seen most often (ties: the smallest string), -1 when none is known."""
    best = np.full(n_groups, -1, dtype=np.int64)
    known = codes >= 0
    if not known.any():
        return best
    pairs = groups[known] * len(ranks) + codes[known]
    counts = pd.Series(pairs).value_counts(sort=False)
    pair_group = counts.index.to_numpy() // len(ranks)
    pair_code = counts.index.to_numpy() % len(ranks)
    order = np.lexsort((ranks[pair_code], -counts.to_numpy(), pair_group))
    first = order[np.r_[True, pair_group[order][1:] != pair_group[order][:-1]]]
    best[pair_group[first]] = pair_code[first]
    return best


def _take_or_null(uniques: pa.Array, codes: np.ndarray) -> pa.Array:
    """uniques[codes], with null where the code is -1."""
    return uniques.take(pa.array(codes, mask=codes < 0))


def _nullable(values: np.ndarray) -> pa.Array:
    """Floats as an Arrow array with NaN as null."""
    return pa.array(values, mask=np.isnan(values))


def unique_tracks_table(plays: pa.Table) -> pa.Table:
    """The unique-tracks table (unsorted, unformatted) of plays as the raw reader returns them."""
    artist_keys, artist_key_values = encode_keys(plays[C.ARTIST_NAME])
    track_keys, track_key_values = encode_keys(plays[C.TRACK_NAME])
    track_ids, track_pairs = pd.factorize(artist_keys * len(track_key_values) + track_keys)
    track_pairs = np.asarray(track_pairs, dtype=np.int64)
    n_tracks = len(track_pairs)
    track_artist = track_pairs // len(track_key_values)

    user_codes, _ = encode(plays[C.USER_ID])
    ts_s = timestamp_seconds(plays)
    rows, gaps = in_session_gaps(play_order(user_codes, ts_s), user_codes, ts_s)
    gap_median, gap_count = group_medians(track_ids[rows], gaps, n_tracks)
    artist_median, _ = group_medians(artist_keys[rows], gaps, len(artist_key_values))

    table: dict[str, Any] = {
        C.ARTIST_KEY: artist_key_values.take(pa.array(track_artist)),
        C.TRACK_KEY: track_key_values.take(pa.array(track_pairs % len(track_key_values))),
    }
    for column in (C.ARTIST_NAME, C.TRACK_NAME, C.ARTIST_MBID, C.TRACK_MBID):
        codes, values = encode(plays[column])
        table[column] = _take_or_null(
            values, most_frequent(track_ids, codes, code_ranks(values), n_tracks))
    table[C.PLAY_COUNT] = pa.array(np.bincount(track_ids, minlength=n_tracks))
    table[C.GAP_MEDIAN_S] = _nullable(gap_median)
    table[C.GAP_COUNT] = pa.array(gap_count)
    table[C.ARTIST_GAP_MEDIAN_S] = _nullable(artist_median[track_artist])
    return pa.table(table)


def sort_tracks(table: pa.Table) -> pa.Table:
    """Most played first, then by keys in code point order."""
    return table.sort_by([(C.PLAY_COUNT, "descending"), (C.ARTIST_KEY, "ascending"),
                          (C.TRACK_KEY, "ascending")])


def _float_values(column: pa.ChunkedArray) -> np.ndarray:
    """A nullable float column as numpy with NaN for null."""
    return column.to_numpy(zero_copy_only=False).astype(np.float64)


def tracks_lines(table: pa.Table) -> pa.Array:
    """The CSV lines of a unique-tracks table, in UNIQUE_TRACKS_COLUMNS order."""
    fields = [quote_minimal(table[c]) for c in C.UNIQUE_TRACKS_COLUMNS[:6]]
    fields += [
        format_int(table[C.PLAY_COUNT].to_numpy()),
        format_fixed(_float_values(table[C.GAP_MEDIAN_S]), 1),
        format_int(table[C.GAP_COUNT].to_numpy()),
        format_fixed(_float_values(table[C.ARTIST_GAP_MEDIAN_S]), 1),
    ]
    return join_lines(fields)


def read_unique_tracks(path: Path) -> pd.DataFrame:
    """Read unique_tracks.csv back, checking its columns and numbers (names stay strings: a
    track may be called 'NA')."""
    require_file(path, "unique tracks file")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise SessionlenError(f"{path}: not a readable unique-tracks CSV ({exc})") from None
    missing = [c for c in C.UNIQUE_TRACKS_COLUMNS if c not in frame.columns]
    if missing:
        raise SessionlenError(f"{path}: missing column(s) {', '.join(missing)}")
    for column, required in ((C.PLAY_COUNT, True), (C.GAP_COUNT, True),
                             (C.GAP_MEDIAN_S, False), (C.ARTIST_GAP_MEDIAN_S, False)):
        text = frame[column]
        values = pd.to_numeric(text.replace("", np.nan), errors="coerce")
        bad = values.isna() if required else values.isna() & (text != "")
        if bad.any():
            line = int(bad.to_numpy().argmax()) + 2
            raise SessionlenError(
                f"{path}: line {line}: {column} {text.iloc[line - 2]!r} is not a number")
        frame[column] = values.astype(np.int64) if required else values.astype(np.float64)
    return frame


def read_counts(table: pa.Table) -> dict[str, Any]:
    """The raw reader's line accounting, carried in the schema metadata of its table."""
    meta = table.schema.metadata
    return {"rows_in": int(meta[b"rows_in"]), "rows_rejected": int(meta[b"rows_rejected"]),
            "rejects_path": meta[b"rejects_path"].decode() or None}


def _local_unique_tracks(plays_path: Path, rejects_dir: Path) -> tuple[pa.Table, dict[str, Any]]:
    """Local engine: the unique-tracks table and the reader's line accounting."""
    from utils.data_processing.plays_reader import read_plays_arrow

    plays = read_plays_arrow(plays_path, rejects_dir)
    return unique_tracks_table(plays), read_counts(plays)


@locked_stage("tracks")
def build_unique_tracks(raw: Path, work: Path, engine: str = "local",
                        spark_master: str | None = None) -> dict:
    """Stage tracks: write WORK/tracks/unique_tracks.csv and its manifest; return a summary."""
    check_engine_target(engine, spark_master)
    raw, layout = Path(raw), WorkLayout(Path(work))
    plays_path = require_file(raw / C.PLAYS_FILE, "plays file")
    with Timer() as build:
        if engine == "spark":
            from utils.data_processing.tracks_spark import spark_unique_tracks

            table, counts = spark_unique_tracks(plays_path, layout.rejects, spark_master)
        else:
            table, counts = _local_unique_tracks(plays_path, layout.rejects)
    with Timer() as write, atomic_dir(layout.tracks) as tmp:
        write_lines(tmp / layout.unique_tracks.name, C.UNIQUE_TRACKS_COLUMNS,
                    tracks_lines(sort_tracks(table)))
    rows_kept = counts["rows_in"] - counts["rows_rejected"]
    write_manifest(
        layout.tracks, "tracks", inputs=[plays_path],
        parameters={"engine": engine, "spark_master": spark_master,
                    "max_in_session_gap_s": MAX_IN_SESSION_GAP_S,
                    "rejects_file": str(counts["rejects_path"] or "")},
        rows_in=counts["rows_in"], rows_out=rows_kept, rows_rejected=counts["rows_rejected"],
        outputs=[layout.unique_tracks.name],
        timings={"build": build.seconds, "write": write.seconds},
    )
    return {"engine": engine, "plays_in": counts["rows_in"], "plays_kept": rows_kept,
            "plays_rejected": counts["rows_rejected"], "tracks": table.num_rows,
            "artists": len(pc.unique(table[C.ARTIST_KEY])),
            "output": str(layout.unique_tracks),
            "seconds": round(build.seconds + write.seconds, 3)}


def top_tracks(work: Path, n: int = DisplayParams.top_n) -> pd.DataFrame:
    """The `n` most played tracks: names, MBIDs, play count and the duration evidence."""
    tracks = read_unique_tracks(WorkLayout(Path(work)).unique_tracks)
    return tracks.head(n).drop(columns=[C.ARTIST_KEY, C.TRACK_KEY])


def plot_play_counts(tracks: pd.DataFrame, out: Path | None = None) -> Figure:
    """Log-log distribution of plays per track (saved to `out` if given), released from pyplot."""
    import matplotlib.pyplot as plt

    from utils.core.plots import finish_figure

    plays, n_tracks = np.unique(tracks[C.PLAY_COUNT].to_numpy(), return_counts=True)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.loglog(plays, n_tracks, marker=".", linestyle="none", color="tab:blue")
    ax.set_xlabel("plays of a track")
    ax.set_ylabel("tracks with that many plays")
    ax.set_title(f"Plays per track: {len(tracks):,} tracks, {int(tracks[C.PLAY_COUNT].sum()):,} "
                 f"plays")
    return finish_figure(fig, out)
