"""Train-only user profiles for clustering (final_dir/user_profile_cluster.csv).

Every statistic comes from the user's TRAIN plays and sessions: profiles built on all data would
let the clusters, and so the per-cluster models, see the test sessions. The original pipeline's
eligibility filters are parameters; the users they exclude are listed with the reason in
`user_profile_excluded.csv` and counted per reason in the manifest, never dropped silently.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from utils.baseline.summary_dir import load_user_ids
from utils.core import columns as C
from utils.core.config import ClusterParams, WorkLayout
from utils.core.errors import SessionlenError
from utils.core.spark import check_engine_target
from utils.core.stage_io import (
    Timer,
    annotate_stage,
    atomic_file,
    forget_stage,
    require_file,
    require_stage,
    write_manifest,
)
from utils.core.work_lock import locked_stage
from utils.models_with_clusters.final_dir import (
    PROFILES_STAGE,
    SESSION_DATA_STAGE,
    UNKNOWN_ID,
    ProfileParts,
)
from utils.models_with_clusters.session_data import read_final_split

STAGE = PROFILES_STAGE
EXCLUDED_FILE = "user_profile_excluded.csv"
REASON = "reason"
TOTAL_SESSIONS = "total_sessions"
TOTAL_ROWS = "total_session_rows"
TOP_ARTIST = "top_artist"
TOP_TRACK = "top_track"
MAX_LENGTH = "max_session_length"
MEDIAN_LENGTH = "median_session_length"
# Exclusion reasons, in the order they are checked; a user may have several.
NO_TRAIN = "no_train_plays"
FEW_ROWS = "min_rows"
FEW_SESSIONS = "min_sessions"
LONG_AVERAGE = "max_average_length"
REASONS = (NO_TRAIN, FEW_ROWS, FEW_SESSIONS, LONG_AVERAGE)
EXCLUDED_COLUMNS = [C.USER_ID, REASON, TOTAL_ROWS, TOTAL_SESSIONS, C.AVERAGE_SESSION_LENGTH]


def _top_id(train: pd.DataFrame, column: str) -> pd.Series:
    """Each user's most played id; ties go to the smaller id (the more frequent overall).

    The unknown id only wins for a user whose plays are all of unknown names.
    """
    counts = train.groupby([C.USER_ID, column], sort=False).size().rename("plays").reset_index()
    counts["unknown"] = counts[column] == UNKNOWN_ID
    ranked = counts.sort_values([C.USER_ID, "unknown", "plays", column],
                                ascending=[True, True, False, True], kind="stable")
    return ranked.drop_duplicates(C.USER_ID).set_index(C.USER_ID)[column]


def profile_parts(train: pd.DataFrame) -> ProfileParts:
    """Local engine: the profile parts of every user of the train plays."""
    train = train.sort_values([C.USER_ID, C.CURRENT_TIMESTAMP], kind="stable")
    # Profile fields as of the user's latest train session (age grows over the years).
    latest = train.groupby(C.USER_ID, sort=True).tail(1).set_index(C.USER_ID)
    sessions = train.drop_duplicates([C.USER_ID, C.SESSION_ID])
    return ProfileParts(
        latest=latest[[C.GENDER, C.AGE, C.COUNTRY, C.REGISTERED]],
        top_artist=_top_id(train, C.ARTIST_NAME), top_track=_top_id(train, C.TRACK_NAME),
        rows=train.groupby(C.USER_ID, sort=True).size(),
        lengths=sessions[[C.USER_ID, C.SESSION_LENGTH]],
    )


def profiles_of(parts: ProfileParts) -> pd.DataFrame:
    """PROFILE_CLUSTER_COLUMNS for every user of the parts (one row per user, by id)."""
    lengths = parts.lengths.groupby(C.USER_ID, sort=True)[C.SESSION_LENGTH]
    latest = parts.latest
    profiles = pd.DataFrame({
        C.GENDER: latest[C.GENDER], C.AGE: latest[C.AGE], C.COUNTRY: latest[C.COUNTRY],
        C.REGISTERED: latest[C.REGISTERED],
        TOP_ARTIST: parts.top_artist, TOP_TRACK: parts.top_track,
        TOTAL_SESSIONS: lengths.size(),
        C.AVERAGE_SESSION_LENGTH: lengths.mean(),
        MAX_LENGTH: lengths.max(),
        MEDIAN_LENGTH: lengths.median(),
        TOTAL_ROWS: parts.rows,
    })
    profiles.index.name = C.USER_ID
    return profiles.reset_index()[C.PROFILE_CLUSTER_COLUMNS]


def engine_parts(layout: WorkLayout, engine: str, spark_master: str | None) -> ProfileParts:
    """The profile parts of the train split of final_dir, from the chosen engine."""
    if engine == "spark":
        from utils.models_with_clusters.profiles_spark import spark_profile_parts

        return spark_profile_parts(layout.final_dir / "train", spark_master)
    return profile_parts(read_final_split(layout.root, "train"))


def check_thresholds(params: ClusterParams) -> None:
    """Fail with a one-line error on a negative or non-positive eligibility threshold."""
    for name in ("min_rows", "min_sessions"):
        if getattr(params, name) < 0:
            raise SessionlenError(f"ClusterParams parameter {name}={getattr(params, name)} "
                                  f"must not be negative")
    if not params.max_average_length > 0:
        raise SessionlenError(f"ClusterParams parameter max_average_length="
                              f"{params.max_average_length} must be positive")


def exclusion_reasons(profiles: pd.DataFrame, params: ClusterParams) -> pd.DataFrame:
    """One boolean column per threshold reason: True where the user fails it."""
    return pd.DataFrame({
        FEW_ROWS: profiles[TOTAL_ROWS].to_numpy() < params.min_rows,
        FEW_SESSIONS: profiles[TOTAL_SESSIONS].to_numpy() < params.min_sessions,
        LONG_AVERAGE: profiles[C.AVERAGE_SESSION_LENGTH].to_numpy() > params.max_average_length,
    }, index=profiles.index)


def excluded_table(profiles: pd.DataFrame, failed: pd.DataFrame, no_train: np.ndarray
                   ) -> pd.DataFrame:
    """EXCLUDED_COLUMNS rows: failing profiles with their reasons, and users without train plays."""
    mask = failed.any(axis=1).to_numpy()
    reasons = pd.Series("", index=failed.index[mask])
    for reason in failed.columns:
        reasons += np.where(failed.loc[mask, reason], f"{reason};", "")
    reasons = reasons.str.rstrip(";")
    failing = profiles.loc[mask, EXCLUDED_COLUMNS[2:]].assign(
        **{C.USER_ID: profiles.loc[mask, C.USER_ID], REASON: reasons})
    absent = pd.DataFrame({C.USER_ID: no_train, REASON: NO_TRAIN, TOTAL_ROWS: 0,
                           TOTAL_SESSIONS: 0, C.AVERAGE_SESSION_LENGTH: np.nan})
    table = pd.concat([failing[EXCLUDED_COLUMNS], absent[EXCLUDED_COLUMNS]], ignore_index=True)
    return table.sort_values(C.USER_ID, ignore_index=True)


def reason_counts(excluded: pd.DataFrame) -> dict[str, int]:
    """Excluded users per reason (a user failing two thresholds counts under both)."""
    split = excluded[REASON].str.split(";").explode()
    return {reason: int((split == reason).sum()) for reason in REASONS}


def write_csv_atomic(frame: pd.DataFrame, path: Path) -> None:
    """A small table as CSV, replacing `path` only once it is complete."""
    with atomic_file(path, "w", encoding="utf-8", newline="") as fh:
        frame.to_csv(fh, index=False, lineterminator="\n")


@locked_stage("final_dir", reads=("summary_dir",))
def build_user_profiles(work: str | Path, params: ClusterParams, engine: str = "local",
                        spark_master: str | None = None) -> dict[str, Any]:
    """Write the eligible users' train profiles and the excluded users with their reasons.

    `spark_master` (engine spark): a master URL or sc://host:port (default SPARK_REMOTE, else
    local[*]).
    """
    check_engine_target(engine, spark_master)
    check_thresholds(params)
    layout = WorkLayout(Path(work))
    final_dir = layout.final_dir
    with Timer() as timer:
        require_stage(final_dir, SESSION_DATA_STAGE)
        all_users = load_user_ids(layout.root)[C.USER_ID].to_numpy()
        profiles = profiles_of(engine_parts(layout, engine, spark_master))
        failed = exclusion_reasons(profiles, params)
        no_train = np.setdiff1d(all_users, profiles[C.USER_ID].to_numpy())
        excluded = excluded_table(profiles, failed, no_train)
        eligible = profiles[~failed.any(axis=1).to_numpy()].reset_index(drop=True)
        forget_stage(final_dir, STAGE)
        write_csv_atomic(eligible, layout.user_profile_cluster)
        write_csv_atomic(excluded, final_dir / EXCLUDED_FILE)
    by_reason = reason_counts(excluded)
    thresholds = {k: getattr(params, k) for k in ("min_rows", "min_sessions",
                                                  "max_average_length")}
    write_manifest(
        final_dir, STAGE, inputs=[final_dir / "train", layout.summary_dir], parameters=thresholds,
        rows_in=len(all_users), rows_out=len(eligible), rows_rejected=len(excluded),
        outputs=[layout.user_profile_cluster.name, EXCLUDED_FILE],
        timings={"total": timer.seconds},
    )
    annotate_stage(final_dir, STAGE, excluded_by_reason=by_reason, engine=engine)
    return {"engine": engine, "users": len(all_users), "eligible": len(eligible),
            "excluded": len(excluded), "excluded_by_reason": by_reason, "thresholds": thresholds,
            "profile_file": str(layout.user_profile_cluster), "seconds": round(timer.seconds, 2)}


def _read_checked(path: Path, columns: list[str], what: str) -> pd.DataFrame:
    """A CSV whose header must hold `columns` (one-line error naming the file otherwise)."""
    frame = pd.read_csv(require_file(path, what), keep_default_na=False, na_values=[""])
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise SessionlenError(f"{path}: missing column(s) {', '.join(missing)}")
    return frame


def load_profiles(work: str | Path) -> pd.DataFrame:
    """The eligible users' profiles (PROFILE_CLUSTER_COLUMNS), after checking the stage."""
    layout = WorkLayout(Path(work))
    require_stage(layout.final_dir, STAGE)
    frame = _read_checked(layout.user_profile_cluster, C.PROFILE_CLUSTER_COLUMNS, "profiles")
    return frame[C.PROFILE_CLUSTER_COLUMNS]


def load_excluded(work: str | Path) -> pd.DataFrame:
    """The users left out of the profiles, with their reasons."""
    layout = WorkLayout(Path(work))
    require_stage(layout.final_dir, STAGE)
    return _read_checked(layout.final_dir / EXCLUDED_FILE, EXCLUDED_COLUMNS, "exclusions")


def eligibility_summary(work: str | Path) -> pd.DataFrame:
    """Thresholds applied, users kept, and users excluded per reason, as one small table."""
    entry = require_stage(WorkLayout(Path(work)).final_dir, STAGE)
    rows = [("users", entry["rows_in"]), ("eligible", entry["rows_out"]),
            ("excluded", entry["rows_rejected"])]
    rows += [(f"excluded: {reason}", n) for reason, n in entry["excluded_by_reason"].items()]
    rows += [(f"threshold: {name}", value) for name, value in entry["parameters"].items()]
    # object dtype: counts stay integers next to the float threshold
    return pd.DataFrame(rows, columns=["what", "value"], dtype=object).set_index("what")


def describe_profiles(profiles: pd.DataFrame) -> pd.DataFrame:
    """Count, mean, spread and quantiles of every profile column but the user id."""
    # object dtype: each cell prints plainly instead of the whole table in scientific notation
    return profiles.drop(columns=[C.USER_ID]).describe().T.round(1).astype(object)
