"""Stage 3, denormalize: every play joined with its listener's profile and its track's metadata.

Writes WORK/user_dir/{user_id}/part-00000.csv, one file per user, oldest play first. Equal
timestamps keep the reverse of file order: the raw file is newest first, so the later line is
the earlier play. The text of each field is built once (`denormalize_fields`) and shared by
both engines, so they write the same bytes; the local engine's lines are made in
`utils.data_processing.denormalize_local`; the Spark engine runs that code in its tasks
(`denormalize_spark`), or the SQL plan of `spark_stages` when a user's lines are not one block.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from utils.core import columns as C
from utils.core.arrow_memory import keep_freed_memory, prefer_jemalloc
from utils.core.config import DisplayParams, WorkLayout
from utils.core.spark import check_engine_target
from utils.core.stage_io import Timer, atomic_dir, require_file, require_stage, write_manifest
from utils.core.work_lock import locked_stage
from utils.data_processing.denormalize_fields import USER_FILE, metadata_lookup, profile_lookup
from utils.data_processing.track_metadata import read_metadata_table

if TYPE_CHECKING:
    import pyarrow as pa
    from matplotlib.figure import Figure

    from utils.data_processing.raw_lines import ReadResult


def read_lookups(profile_path: Path, layout: WorkLayout
                 ) -> tuple[ReadResult, pa.Table, pa.Table]:
    """The profile file as read, and the two lookups every play is joined with: profile
    fields per user, metadata fields per track."""
    from utils.data_processing.profile_reader import read_profiles

    profiles = read_profiles(profile_path, layout.rejects)
    metadata = metadata_lookup(read_metadata_table(
        layout.track_metadata, [C.ARTIST_KEY, C.TRACK_KEY, C.DURATION, C.GENRE]))
    return profiles, profile_lookup(profiles.frame), metadata


@locked_stage("user_dir", reads=("tracks",))
def denormalize(raw: Path, work: Path, engine: str = "local",
                spark_master: str | None = None) -> dict:
    """Stage denormalize: write WORK/user_dir/{user}/part-00000.csv and the manifest."""
    check_engine_target(engine, spark_master)
    raw, layout = Path(raw), WorkLayout(Path(work))
    require_stage(layout.tracks, "metadata")
    plays_path = require_file(raw / C.PLAYS_FILE, "plays file")
    profile_path = require_file(raw / C.PROFILE_FILE, "profile file")
    if engine == "local":
        # Before the lookups are read: the memory they free is then reused by the plays.
        prefer_jemalloc()
        keep_freed_memory()
    with ThreadPoolExecutor(max_workers=1) as pool, Timer() as build, \
            atomic_dir(layout.user_dir) as tmp:
        # The local engine reads the plays meanwhile and waits for the lookups only to join.
        lookups = pool.submit(read_lookups, profile_path, layout)
        if engine == "spark":
            from utils.data_processing.denormalize_spark import spark_denormalize

            _, people, metadata = lookups.result()
            counts = spark_denormalize(plays_path, layout.rejects, people, metadata, tmp,
                                       spark_master)
        else:
            from utils.data_processing.denormalize_local import local_denormalize

            counts = local_denormalize(plays_path, layout.rejects,
                                       lambda: lookups.result()[1:], tmp)
        profiles = lookups.result()[0]
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
        timings={"build_and_write": build.seconds},
    )
    return {"engine": engine, "plays_in": counts["rows_in"], "plays_out": counts["rows_out"],
            "plays_rejected": counts["rows_rejected"], **join,
            "output": str(layout.user_dir), "seconds": round(build.seconds, 3)}


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


def user_sample(work: Path, user: str | None = None, rows: int = DisplayParams.sample_rows
                ) -> pd.DataFrame:
    """The first `rows` lines of a user's file (default: the user with the most plays)."""
    user = user or str(rows_per_user(work).index[0])
    path = WorkLayout(Path(work)).user_dir / user / USER_FILE
    require_file(path, f"user file of {user}")
    return pd.read_csv(path, nrows=rows, dtype=str, keep_default_na=False)
