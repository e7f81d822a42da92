"""Integer vocabularies of artists, tracks and countries, fit on the training plays only.

Ids run 1..n by descending training frequency, ties broken by name, so the most common names get
the smallest ids and a rerun gives the same ids. Id 0 is reserved for names never seen in
training: validate and test plays of such names map to 0 instead of leaking into the vocabulary.
A track is the (artist, track) pair: "Intro" by two artists is two tracks.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from utils.baseline import summary_dir
from utils.core import columns as C
from utils.core.config import DisplayParams, WorkLayout
from utils.core.errors import SessionlenError
from utils.core.spark import check_engine_target
from utils.core.stage_io import Timer, atomic_dir, forget_stage, require_stage, write_manifest
from utils.core.work_lock import locked_stage
from utils.models_with_clusters.final_dir import (
    COUNT,
    ID,
    UNKNOWN_ID,
    VOCAB_STAGE,
    PlaySource,
    check_play_count,
    open_play_source,
)
from utils.models_with_clusters.split_plays import iter_split_plays

STAGE = VOCAB_STAGE
# Vocabulary name -> the columns that identify one entry.
VOCAB_KEYS: dict[str, list[str]] = {
    "artists": [C.ARTIST_NAME],
    "tracks": [C.ARTIST_NAME, C.TRACK_NAME],
    "countries": [C.COUNTRY],
}


def named(table: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """The rows whose key names are all non-empty (an empty name is an unknown one)."""
    return table[(table[list(keys)] != "").all(axis=1)] if len(table) else table


def fit_vocab(counts: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """Ids 1..n by descending summed count then name (0 stays free for unknown names)."""
    keys = list(keys)
    table = counts.groupby(keys, sort=False, observed=True, as_index=False)[COUNT].sum()
    table = table.sort_values([COUNT, *keys], ascending=[False] + [True] * len(keys),
                              kind="stable", ignore_index=True)
    table.insert(0, ID, np.arange(1, len(table) + 1, dtype=np.int64))
    return table[[ID, *keys, COUNT]]


def country_vocab(codes: pd.DataFrame, train_play_counts: pd.Series) -> pd.DataFrame:
    """The summarize stage's country codes (fit on train sessions) with their train play counts.

    final_dir carries the summary's country codes, so the vocabulary keeps those very ids
    instead of renumbering by frequency: every file then agrees on what a code means.
    """
    table = pd.DataFrame({
        ID: codes[summary_dir.COUNTRY_CODE].to_numpy(np.int64),
        C.COUNTRY: codes[C.COUNTRY].astype(str).to_numpy(),
    })
    table[COUNT] = train_play_counts.reindex(table[ID]).fillna(0).to_numpy(np.int64)
    return table.sort_values(ID, ignore_index=True)


def _key_index(frame: pd.DataFrame, keys: Sequence[str]) -> pd.Index:
    """The key columns of `frame` as an index (a MultiIndex for composite keys)."""
    if len(keys) == 1:
        return pd.Index(frame[keys[0]])
    return pd.MultiIndex.from_arrays([frame[k] for k in keys])


class Vocabulary:
    """A fitted vocabulary: maps names to ids, unseen names to UNKNOWN_ID."""

    def __init__(self, table: pd.DataFrame, keys: Sequence[str]) -> None:
        self.table = table
        self.keys = list(keys)
        self._ids = table[ID].to_numpy(np.int64)
        # Built once: encoding every user's plays reuses the same hash table.
        self._index = _key_index(table, self.keys)
        if not self._index.is_unique:
            raise SessionlenError(f"vocabulary on {', '.join(self.keys)} has duplicate entries")

    def __len__(self) -> int:
        """Number of ids including the unknown id (the size an embedding table needs)."""
        return len(self.table) + 1

    def encode(self, frame: pd.DataFrame) -> np.ndarray:
        """Ids of the key columns of `frame`; UNKNOWN_ID where the name was not in training."""
        if len(frame) == 0:
            return np.zeros(0, dtype=np.int64)
        pos = self._index.get_indexer(_key_index(frame, self.keys))
        return np.where(pos >= 0, self._ids[np.maximum(pos, 0)], UNKNOWN_ID)


def write_vocab(table: pd.DataFrame, path: Path) -> None:
    """Write a vocabulary table as CSV (names quoted only where needed)."""
    arrow = pa.Table.from_pandas(table, preserve_index=False)
    with open(path, "wb") as fh:
        fh.write((",".join(arrow.column_names) + "\n").encode())
        pacsv.write_csv(arrow, fh, write_options=pacsv.WriteOptions(
            include_header=False, quoting_style="needed"))


def read_vocab(path: Path, keys: Sequence[str]) -> Vocabulary:
    """Read a vocabulary CSV; names stay strings exactly ("NA", "null" and "" are names)."""
    path = Path(path)
    if not path.is_file():
        raise SessionlenError(f"{path}: vocabulary not found; run `sessionlen vocab` first")
    types = {ID: pa.int64(), COUNT: pa.int64(), **{k: pa.string() for k in keys}}
    try:
        table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(
            column_types=types, include_columns=[ID, *keys, COUNT])).to_pandas()
    except (pa.ArrowInvalid, KeyError) as exc:
        raise SessionlenError(f"{path}: not a vocabulary file ({exc})") from exc
    return Vocabulary(table, keys)


def read_vocabularies(work: str | Path) -> dict[str, Vocabulary]:
    """The three vocabularies of a WORK directory, after checking the vocab stage completed."""
    layout = WorkLayout(Path(work))
    require_stage(layout.final_dir, STAGE)
    return {name: read_vocab(layout.vocab / f"{name}.csv", keys)
            for name, keys in VOCAB_KEYS.items()}


def _concat_counts(parts: list[pd.DataFrame], keys: Sequence[str]) -> pd.DataFrame:
    """Per-user count tables stacked into one (an empty table with the right columns if none)."""
    if not parts:
        return pd.DataFrame({**{k: pd.Series(dtype=str) for k in keys},
                             COUNT: pd.Series(dtype=np.int64)})
    return pd.concat(parts, ignore_index=True)


def local_train_counts(source: PlaySource) -> tuple[dict[str, pd.DataFrame], pd.Series, int]:
    """Local engine: (train plays per artist and per track, per country code; plays read)."""
    parts: dict[str, list[pd.DataFrame]] = {"artists": [], "tracks": []}
    country_counts: list[pd.Series] = []
    plays_in = 0
    for plays in iter_split_plays(source):
        plays_in += len(plays.rows)
        train = plays.in_split("train")
        for name in parts:
            parts[name].append(named(plays.name_counts(name, train), VOCAB_KEYS[name]))
        country_counts.append(plays.rows.loc[train, C.COUNTRY].value_counts())
    check_play_count(source, plays_in)
    per_code = (pd.concat(country_counts).groupby(level=0).sum() if country_counts
                else pd.Series(dtype=np.int64))
    return ({name: _concat_counts(chunks, VOCAB_KEYS[name]) for name, chunks in parts.items()},
            per_code, plays_in)


def spark_train_counts(source: PlaySource, spark_master: str | None
                       ) -> tuple[dict[str, pd.DataFrame], pd.Series, int]:
    """Spark engine: the same counts, from Spark's train plays per (artist, track, country)."""
    from utils.models_with_clusters.vocab_spark import spark_train_counts as counts_on_spark

    table, plays_in = counts_on_spark(source, spark_master)
    names = {name: named(table, keys).groupby(keys, sort=False, as_index=False)[COUNT].sum()
             for name, keys in VOCAB_KEYS.items() if name != "countries"}
    return names, table.groupby(C.COUNTRY)[COUNT].sum(), plays_in


@locked_stage("final_dir", reads=("user_dir", "summary_dir"))
def build_vocab(work: str | Path, engine: str = "local", spark_master: str | None = None
                ) -> dict[str, Any]:
    """Fit the artist, track and country vocabularies on the train plays; write final_dir/vocab.

    `spark_master` (engine spark): a master URL or sc://host:port (default SPARK_REMOTE, else
    local[*]).
    """
    check_engine_target(engine, spark_master)
    layout = WorkLayout(Path(work))
    with Timer() as timer:
        source = open_play_source(layout)
        forget_stage(layout.final_dir, STAGE)
        if engine == "spark":
            names, per_code, plays_in = spark_train_counts(source, spark_master)
        else:
            names, per_code, plays_in = local_train_counts(source)
        tables = {name: fit_vocab(counts, VOCAB_KEYS[name]) for name, counts in names.items()}
        tables["countries"] = country_vocab(summary_dir.load_country_vocab(layout.root), per_code)
        with atomic_dir(layout.vocab) as tmp:
            for name, table in tables.items():
                write_vocab(table, tmp / f"{name}.csv")
    write_manifest(
        layout.final_dir, STAGE, inputs=[layout.user_dir, layout.summary_dir],
        parameters={"fit_on": "train", "unknown_id": UNKNOWN_ID, "engine": engine,
                    "order": "train plays desc, then name (countries: summarize codes)"},
        rows_in=plays_in, rows_out=plays_in, rows_rejected=0,
        outputs=[f"vocab/{name}.csv" for name in VOCAB_KEYS], timings={"total": timer.seconds},
    )
    return {"engine": engine, "plays": plays_in, "train_plays": int(per_code.sum()),
            "sizes": {name: len(table) for name, table in tables.items()},
            "vocab_dir": str(layout.vocab), "seconds": round(timer.seconds, 2)}


def vocab_overview(work: str | Path, top: int = DisplayParams.top_names) -> pd.DataFrame:
    """The most frequent entries of each vocabulary side by side, for a quick look."""
    rows = []
    for name, vocab in read_vocabularies(work).items():
        head = vocab.table.head(top)
        label = head[vocab.keys].astype(str).agg(" / ".join, axis=1)
        rows.append(pd.DataFrame({"vocabulary": name, ID: head[ID], "name": label,
                                  COUNT: head[COUNT]}))
    return pd.concat(rows, ignore_index=True)
