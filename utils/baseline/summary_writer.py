"""The summaries written: the sessions table encoded as summary rows, split and saved per user.

`write_summaries` is where both engines meet: it assigns the splits, gives every user an
integer id, fits the country vocabulary on train sessions, and writes every file of
WORK/summary_dir (see summary_dir for what each holds).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from utils.baseline.session_table import (
    AVERAGE_MS,
    LENGTH_MS,
    PREVIOUS_MS,
    SOURCE_ID,
    UNKNOWN,
)
from utils.baseline.splits import split_codes
from utils.baseline.summary_dir import COUNTRY_CODE, COUNTRY_VOCAB_FILE, USER_IDS_FILE
from utils.core import csv_text
from utils.core.columns import (
    AGE,
    AVERAGE_SESSION_LENGTH,
    COUNTRY,
    CURRENT_SESSION_LENGTH,
    GENDER,
    PREVIOUS_SESSION_LENGTH,
    REGISTERED,
    SESSION_ID,
    SPLITS,
    SUMMARY_COLUMNS,
    TIMESTAMP,
    USER_ID,
)
from utils.core.config import SessionParams
from utils.core.parallel import worker_count

NUMBERED_USER = re.compile(r"^user_(\d+)$")


def user_id_mapping(source_ids: Sequence[str]) -> pd.Series:
    """Integer id of each source id: its digits if all are user_<digits> and unique, else rank."""
    ordered = sorted(source_ids)
    matches = [NUMBERED_USER.match(s) for s in ordered]
    if all(matches):
        numbers = [int(m.group(1)) for m in matches if m]
        if len(set(numbers)) == len(numbers):
            return pd.Series(numbers, index=ordered, dtype=np.int64, name=USER_ID)
    return pd.Series(np.arange(1, len(ordered) + 1), index=ordered, dtype=np.int64, name=USER_ID)


def fit_country_vocab(countries: pd.Series) -> pd.Series:
    """Codes 1.. for the distinct known countries (sorted by name); 0 stays for unknown."""
    known = pd.Series(countries.dropna().unique(), dtype=object)
    known = np.sort(known[known != ""].to_numpy().astype(str))
    return pd.Series(np.arange(1, len(known) + 1), index=known, dtype=np.int64, name=COUNTRY_CODE)


def lookup(values: pd.Series, table: pd.Series, missing: int) -> np.ndarray:
    """table[value] for each value (vectorized), `missing` where the value is not in the table."""
    position = table.index.get_indexer(values.astype(object))
    # get_indexer says -1 for an absent value, which picks the appended `missing`.
    return np.append(table.to_numpy(), missing).astype(np.int64)[position]


def summary_table(sessions: pd.DataFrame, user_ids: pd.Series, vocab: pd.Series) -> pd.DataFrame:
    """The SUMMARY_COLUMNS rows of `sessions` (lengths still in integer ms)."""
    return pd.DataFrame({
        TIMESTAMP: sessions[TIMESTAMP].to_numpy(np.int64),
        USER_ID: lookup(sessions[SOURCE_ID], user_ids, UNKNOWN),
        SESSION_ID: sessions[SESSION_ID].to_numpy(np.int64),
        GENDER: sessions[GENDER].to_numpy(np.int64),
        AGE: sessions[AGE].to_numpy(np.int64),
        COUNTRY: lookup(sessions[COUNTRY], vocab, 0),
        REGISTERED: sessions[REGISTERED].to_numpy(np.int64),
        PREVIOUS_SESSION_LENGTH: sessions[PREVIOUS_MS].to_numpy(np.int64),
        AVERAGE_SESSION_LENGTH: sessions[AVERAGE_MS].to_numpy(np.int64),
        CURRENT_SESSION_LENGTH: sessions[LENGTH_MS].to_numpy(np.int64),
    })


def csv_lines(table: pd.DataFrame) -> pa.Array:
    """One CSV line per summary row; lengths in seconds with exactly three decimals."""
    seconds = (PREVIOUS_SESSION_LENGTH, AVERAGE_SESSION_LENGTH, CURRENT_SESSION_LENGTH)
    return csv_text.join_lines([
        csv_text.format_fixed(table[name].to_numpy() / 1000.0, 3) if name in seconds
        else csv_text.format_int(table[name].to_numpy())
        for name in SUMMARY_COLUMNS
    ])


def write_split_files(folder: Path, sources: np.ndarray, lines: pa.Array) -> int:
    """Write each user's consecutive lines to folder/{source id}.csv; return the file count."""
    folder.mkdir(parents=True, exist_ok=True)
    if not len(sources):
        return 0
    bounds = np.flatnonzero(np.r_[True, sources[1:] != sources[:-1], True])
    header = csv_text.header_line(SUMMARY_COLUMNS)
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        with open(folder / f"{sources[start]}.csv", "wb") as fh:
            fh.write(header)
            fh.write(csv_text.line_block(lines, int(start), int(stop)))
    return len(bounds) - 1


def _write_small_csv(path: Path, frame: pd.DataFrame) -> None:
    """A small lookup table as CSV (minimal quoting, LF line ends)."""
    frame.to_csv(path, index=False, lineterminator="\n")


def write_summaries(sessions: pd.DataFrame, users: Sequence[str], params: SessionParams,
                    out: Path) -> dict[str, Any]:
    """Split, encode and write the sessions table into `out`; return per-split counts."""
    sessions = sessions.sort_values([SOURCE_ID, SESSION_ID], kind="stable", ignore_index=True)
    codes = split_codes(sessions, params, user=SOURCE_ID)
    user_ids = user_id_mapping(users)
    vocab = fit_country_vocab(sessions.loc[codes == 0, COUNTRY])
    table = summary_table(sessions, user_ids, vocab)
    sources = sessions[SOURCE_ID].to_numpy()

    def write_split(index: int) -> tuple[int, int]:
        rows = np.flatnonzero(codes == index)
        lines = csv_lines(table.take(rows))
        return len(rows), write_split_files(out / SPLITS[index], sources[rows], lines)

    # The splits are formatted and written on a few threads (Arrow and file writes release
    # the GIL); each writes a folder of its own.
    with ThreadPoolExecutor(max_workers=worker_count()) as pool:
        written = list(pool.map(write_split, range(len(SPLITS))))
    counts: dict[str, Any] = {
        "sessions_per_split": {name: n for name, (n, _) in zip(SPLITS, written, strict=True)},
        "users_per_split": {name: n for name, (_, n) in zip(SPLITS, written, strict=True)},
    }
    _write_small_csv(out / USER_IDS_FILE, pd.DataFrame(
        {SOURCE_ID: user_ids.index, USER_ID: user_ids.to_numpy()}))
    _write_small_csv(out / COUNTRY_VOCAB_FILE, pd.DataFrame(
        {COUNTRY: vocab.index, COUNTRY_CODE: vocab.to_numpy()}))
    counts["countries"] = len(vocab)
    return counts
