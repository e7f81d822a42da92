"""What the tracks stage counts of each play, shared by its local engine and the tasks of its
Spark engine: text columns as integer codes, the plays in (user, time) order, the in-session gap
after each play, and start times in seconds.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from utils.core import columns as C
from utils.data_processing.track_rules import MAX_IN_SESSION_GAP_S


def encode(values: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    """Integer code per row and the distinct values (missing values get code -1)."""
    encoded = pc.dictionary_encode(values)
    if isinstance(encoded, pa.ChunkedArray):
        # Chunks share one growing dictionary; combining keeps it and concatenates indices.
        encoded = encoded.combine_chunks() if encoded.num_chunks else pa.array(
            [], pa.dictionary(pa.int32(), values.type))
    codes = pc.fill_null(encoded.indices, -1).to_numpy().astype(np.int64)
    return codes, encoded.dictionary.cast(pa.large_string())


def play_order(user_codes: np.ndarray, ts_s: np.ndarray) -> np.ndarray:
    """Permutation putting plays in (user, time) order, equal times latest file line first.

    Rows must be in file order, as the raw reader returns them. The raw file is newest first,
    so of two plays at the same second the later line is the earlier play; sorting the
    reversed rows stably gives exactly that order.
    """
    n = len(ts_s)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    reverse = np.arange(n - 1, -1, -1)
    span = int(ts_s.max() - ts_s.min()) + 1
    sort_key = user_codes[reverse] * span + (ts_s[reverse] - ts_s.min())
    return reverse[np.argsort(sort_key, kind="stable")]


def in_session_gaps(order: np.ndarray, user_codes: np.ndarray, ts_s: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(row, gap seconds) of every play whose same-user next play starts 1 s..30 min later."""
    users = user_codes[order]
    ts = ts_s[order]
    gaps = ts[1:] - ts[:-1]
    valid = (users[1:] == users[:-1]) & (gaps > 0) & (gaps <= MAX_IN_SESSION_GAP_S)
    return order[:-1][valid], gaps[valid]


def timestamp_seconds(plays: pa.Table) -> np.ndarray:
    """Play start times in whole seconds since the epoch."""
    seconds = plays[C.TIMESTAMP].cast(pa.int64()).to_numpy()
    if not seconds.flags.writeable:
        # One chunk is viewed, not copied; several are joined into a new array.
        seconds = seconds.copy()
    # In place: every fresh page of a large array costs a page fault.
    return np.floor_divide(seconds, 1000, out=seconds)
