"""Per-play session data (final_dir): every play with its session's summary row and its split.

The sessions of each user's plays are recomputed from user_dir with the summarize stage's own rule
and gap, then matched one to one with the sessions in summary_dir (same count, same start times,
same lengths). Each play therefore lands in exactly the split of its session, and the per-play
rows carry the very summary values (ids, profile codes, lengths) the baseline stage uses.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from utils.core import columns as C
from utils.core.config import DisplayParams, WorkLayout
from utils.core.errors import SessionlenError
from utils.core.parallel import worker_count
from utils.core.spark import check_engine_target
from utils.core.stage_io import (
    Timer,
    annotate_stage,
    atomic_dir,
    forget_stage,
    require_stage,
    write_manifest,
)
from utils.core.work_lock import locked_stage, reading_stage
from utils.models_with_clusters.final_dir import (
    FINAL_TYPES,
    SESSION_DATA_STAGE,
    SPLIT_COUNTS,
    PlaySource,
    check_play_count,
    open_play_source,
    split_counts,
    write_final_csv,
)
from utils.models_with_clusters.split_plays import SplitPlays, iter_split_plays
from utils.models_with_clusters.vocab import Vocabulary, read_vocabularies

STAGE = SESSION_DATA_STAGE


def encoded_plays(plays: SplitPlays, vocabs: dict[str, Vocabulary]) -> pd.DataFrame:
    """FINAL_COLUMNS plus split, with artist and track as vocabulary ids."""
    artist_ids = vocabs["artists"].encode(plays.artists)
    track_ids = vocabs["tracks"].encode(plays.tracks)
    return plays.rows.assign(**{
        C.ARTIST_NAME: artist_ids[plays.rows[C.ARTIST_NAME].to_numpy()],
        C.TRACK_NAME: track_ids[plays.rows[C.TRACK_NAME].to_numpy()],
    })


def write_local(source: PlaySource, vocabs: dict[str, Vocabulary], out: dict[str, Path]
                ) -> tuple[dict[str, dict[str, int]], int]:
    """Local engine: write every user's per-split files into `out`; (totals per split, plays)."""
    totals = {name: dict.fromkeys(SPLIT_COUNTS, 0) for name in C.SPLITS}
    plays_in = 0
    for plays in iter_split_plays(source):
        plays_in += len(plays.rows)
        encoded = encoded_plays(plays, vocabs)
        for name in C.SPLITS:
            part = encoded[plays.in_split(name)]
            if len(part):
                write_final_csv(part, out[name] / f"{plays.user}.csv")
            for key, value in split_counts(part).items():
                totals[name][key] += value
    check_play_count(source, plays_in)
    return totals, plays_in


def write_spark(source: PlaySource, vocabs: dict[str, Vocabulary], out: dict[str, Path],
                spark_master: str | None) -> tuple[dict[str, dict[str, int]], int]:
    """Spark engine: the same files, written by Spark's workers."""
    from utils.models_with_clusters.session_data_spark import spark_session_data

    tables = {name: vocab.table for name, vocab in vocabs.items()}
    return spark_session_data(source, tables, out, spark_master)


@locked_stage("final_dir", reads=("user_dir", "summary_dir"))
def build_session_data(work: str | Path, engine: str = "local", spark_master: str | None = None
                       ) -> dict[str, Any]:
    """Write final_dir/{train,validate,test}/{user_id}.csv: every play, in its session's split.

    `spark_master` (engine spark): a master URL or sc://host:port (default SPARK_REMOTE, else
    local[*]).
    """
    check_engine_target(engine, spark_master)
    layout = WorkLayout(Path(work))
    with Timer() as timer:
        source = open_play_source(layout)
        vocabs = read_vocabularies(layout.root)
        forget_stage(layout.final_dir, STAGE)
        with contextlib.ExitStack() as stack:
            out = {name: stack.enter_context(atomic_dir(layout.final_dir / name))
                   for name in C.SPLITS}
            if engine == "spark":
                totals, plays_in = write_spark(source, vocabs, out, spark_master)
            else:
                totals, plays_in = write_local(source, vocabs, out)
    plays_out = sum(t["plays"] for t in totals.values())
    write_manifest(
        layout.final_dir, STAGE, inputs=[layout.user_dir, layout.summary_dir, layout.vocab],
        parameters={"gap_minutes": source.gap_minutes, "engine": engine}, rows_in=plays_in,
        rows_out=plays_out, rows_rejected=0, outputs=list(C.SPLITS),
        timings={"total": timer.seconds},
    )
    annotate_stage(layout.final_dir, STAGE, splits=totals)
    return {"final_dir": str(layout.final_dir), "engine": engine, "plays": plays_in,
            "splits": totals, "seconds": round(timer.seconds, 2)}


def session_data_overview(work: str | Path) -> pd.DataFrame:
    """Per split: users, sessions, plays and the share of plays of names unseen in training."""
    entry = require_stage(WorkLayout(Path(work)).final_dir, STAGE)
    table = pd.DataFrame.from_dict(entry["splits"], orient="index")
    for kind in ("artist", "track"):
        table[f"unknown_{kind}_share"] = (
            table[f"unknown_{kind}_plays"] / table["plays"].where(table["plays"] > 0))
    return table


def _read_final_file(path: Path, columns: list[str] | None = None) -> pa.Table:
    """One final_dir file with its column types (only `columns`, if given; every row is still
    split and its field count checked)."""
    if not path.is_file():
        raise SessionlenError(f"{path}: no such final_dir file")
    return pacsv.read_csv(
        path, read_options=pacsv.ReadOptions(use_threads=False),
        convert_options=pacsv.ConvertOptions(column_types=FINAL_TYPES,
                                             include_columns=columns or []))


def read_final_split(work: str | Path, split: str, users: list[str] | None = None,
                     columns: list[str] | None = None) -> pd.DataFrame:
    """The per-play rows of one final_dir split (all users, or the given user ids), with every
    column or only `columns`.

    Files are read side by side, one per thread: each is small, and Arrow's own threads would
    spend more on starting than on parsing it.
    """
    final_dir = WorkLayout(Path(work)).final_dir
    if split not in C.SPLITS:
        raise SessionlenError(f"unknown split {split!r}; valid splits: {', '.join(C.SPLITS)}")
    # Many files: a rerun of the stage must not swap the folder between two of them.
    with reading_stage(final_dir):
        require_stage(final_dir, STAGE)
        files = sorted((final_dir / split).glob("*.csv")) if users is None else [
            final_dir / split / f"{user}.csv" for user in users]
        with ThreadPoolExecutor(worker_count()) as pool:
            tables = list(pool.map(lambda path: _read_final_file(path, columns), files))
    if not tables:
        schema = pa.schema(list(FINAL_TYPES.items()))
        empty = schema.empty_table()
        return (empty.select(columns) if columns else empty).to_pandas()
    return pa.concat_tables(tables).to_pandas()


def sample_rows(work: str | Path, split: str = DisplayParams.sample_split,
                rows: int = DisplayParams.sample_rows) -> pd.DataFrame:
    """The first rows of the first user's file of a split, to see what the files hold."""
    final_dir = WorkLayout(Path(work)).final_dir
    require_stage(final_dir, STAGE)
    first = next(iter(sorted((final_dir / split).glob("*.csv"))), None)
    if first is None:
        return pa.schema(list(FINAL_TYPES.items())).empty_table().to_pandas()
    return read_final_split(work, split, [first.stem]).head(rows)
