"""WORK/summary_dir read back: its file names and columns, the splits and the lookup tables.

The summarize stage writes one CSV per user and split, plus user_ids.csv (the user id as written
in the raw data, and the integer the summaries use) and country_vocab.csv (the country codes fit
on train sessions; code 0 is reserved for unknown or unseen countries).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pcsv

from utils.baseline.session_table import SOURCE_ID
from utils.core.columns import (
    AVERAGE_SESSION_LENGTH,
    COUNTRY,
    CURRENT_SESSION_LENGTH,
    PREVIOUS_SESSION_LENGTH,
    SPLITS,
    SUMMARY_COLUMNS,
    TIMESTAMP,
    USER_ID,
)
from utils.core.config import WorkLayout
from utils.core.errors import SessionlenError
from utils.core.stage_io import require_stage
from utils.core.work_lock import reading_stage

USER_IDS_FILE = "user_ids.csv"
COUNTRY_VOCAB_FILE = "country_vocab.csv"
SUMMARY_OUTPUTS = [*SPLITS, USER_IDS_FILE, COUNTRY_VOCAB_FILE]
USER_IDS_COLUMNS = [SOURCE_ID, USER_ID]
COUNTRY_CODE = "code"
_SUMMARY_TYPES: dict[str, pa.DataType] = {
    name: pa.float64() if name in (PREVIOUS_SESSION_LENGTH, AVERAGE_SESSION_LENGTH,
                                   CURRENT_SESSION_LENGTH) else pa.int64()
    for name in SUMMARY_COLUMNS
}


def _read_summary_file(path: Path) -> pa.Table:
    """One summary CSV with its column names and types checked."""
    try:
        table = pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(
            column_types=_SUMMARY_TYPES))
    except pa.ArrowInvalid as exc:
        raise SessionlenError(f"{path}: {str(exc).splitlines()[0]}") from exc
    if table.column_names != SUMMARY_COLUMNS:
        raise SessionlenError(f"{path}: columns {table.column_names} are not {SUMMARY_COLUMNS}")
    return table


def load_summaries(work: Path) -> dict[str, pd.DataFrame]:
    """Every split of WORK/summary_dir: all users in one frame, sorted by user_id, timestamp."""
    summary_dir = WorkLayout(Path(work)).summary_dir
    schema = pa.schema(list(_SUMMARY_TYPES.items()))
    frames = {}
    # Many files: a rerun of the stage must not swap the folder between two of them.
    with reading_stage(summary_dir), ThreadPoolExecutor(
            max_workers=(os.cpu_count() or 1) * 2) as pool:
        require_stage(summary_dir, "summarize")
        for name in SPLITS:
            tables = list(pool.map(_read_summary_file, sorted((summary_dir / name).glob("*.csv"))))
            table = pa.concat_tables(tables) if tables else schema.empty_table()
            frames[name] = table.to_pandas().sort_values(
                [USER_ID, TIMESTAMP], kind="stable", ignore_index=True)
    return frames


def load_user_ids(work: Path) -> pd.DataFrame:
    """The source id -> integer user_id mapping written by the stage."""
    summary_dir = WorkLayout(Path(work)).summary_dir
    require_stage(summary_dir, "summarize")
    return pd.read_csv(summary_dir / USER_IDS_FILE, dtype={SOURCE_ID: str, USER_ID: np.int64},
                       keep_default_na=False)


def load_country_vocab(work: Path) -> pd.DataFrame:
    """The country -> code vocabulary fit on train sessions (code 0 = unknown)."""
    summary_dir = WorkLayout(Path(work)).summary_dir
    require_stage(summary_dir, "summarize")
    return pd.read_csv(summary_dir / COUNTRY_VOCAB_FILE,
                       dtype={COUNTRY: str, COUNTRY_CODE: np.int64}, keep_default_na=False)

