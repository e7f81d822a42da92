"""Column names and file names of the raw format and of every stage output (DESIGN.md)."""

from __future__ import annotations

PLAYS_FILE = "userid-timestamp-artid-artname-traid-traname.tsv"
PROFILE_FILE = "userid-profile.tsv"

# Synthetic data's planted truth: a folder beside the raw files, read for the oracle.
GROUND_TRUTH = "ground_truth"
GT_SESSIONS_FILE = "sessions.csv"
GT_TRACKS_FILE = "tracks.csv"
GT_USERS_FILE = "users.csv"
GT_CALIBRATION_FILE = "calibration.csv"

# Raw plays: no header in the file; these are the names the reader gives the six fields.
USER_ID = "user_id"
TIMESTAMP = "timestamp"
ARTIST_MBID = "artist_mbid"
ARTIST_NAME = "artist_name"
TRACK_MBID = "track_mbid"
TRACK_NAME = "track_name"
PLAYS_COLUMNS = [USER_ID, TIMESTAMP, ARTIST_MBID, ARTIST_NAME, TRACK_MBID, TRACK_NAME]

# Raw profile: the file's header is `#id gender age country registered`.
PROFILE_HEADER = ["#id", "gender", "age", "country", "registered"]
GENDER = "gender"
AGE = "age"
COUNTRY = "country"
REGISTERED = "registered"
PROFILE_COLUMNS = [USER_ID, GENDER, AGE, COUNTRY, REGISTERED]

# Rejects file: WORK/rejects/<input file name>.rejects.csv
REJECTS_COLUMNS = ["line_number", "reason", "line"]

# WORK/tracks/
ARTIST_KEY = "artist_key"
TRACK_KEY = "track_key"
PLAY_COUNT = "play_count"
# In-session start-to-start gaps after plays of a track (and of its artist): the offline
# duration estimate when the API has no answer.
GAP_MEDIAN_S = "gap_median_s"
GAP_COUNT = "gap_count"
ARTIST_GAP_MEDIAN_S = "artist_gap_median_s"
UNIQUE_TRACKS_COLUMNS = [
    ARTIST_KEY, TRACK_KEY, ARTIST_NAME, TRACK_NAME, ARTIST_MBID, TRACK_MBID, PLAY_COUNT,
    GAP_MEDIAN_S, GAP_COUNT, ARTIST_GAP_MEDIAN_S,
]
DURATION = "duration"
GENRE = "genre"
DURATION_SOURCE = "duration_source"
DURATION_SOURCES = ("api", "estimated", "default")
TRACK_METADATA_COLUMNS = [ARTIST_KEY, TRACK_KEY, DURATION, GENRE, DURATION_SOURCE]

# WORK/user_dir/{user_id}/*.csv
USER_DIR_COLUMNS = [
    USER_ID, TIMESTAMP, ARTIST_NAME, TRACK_NAME, GENDER, AGE, COUNTRY, REGISTERED, DURATION, GENRE,
]

# WORK/summary_dir/{train,validate,test}/{user_id}.csv
SESSION_ID = "session_id"
PREVIOUS_SESSION_LENGTH = "previous_session_length"
AVERAGE_SESSION_LENGTH = "average_session_length"
CURRENT_SESSION_LENGTH = "current_session_length"
SUMMARY_COLUMNS = [
    TIMESTAMP, USER_ID, SESSION_ID, GENDER, AGE, COUNTRY, REGISTERED,
    PREVIOUS_SESSION_LENGTH, AVERAGE_SESSION_LENGTH, CURRENT_SESSION_LENGTH,
]
SPLITS = ("train", "validate", "test")
# The split a session belongs to, by name, in the sessions read back from summary_dir.
SPLIT = "split"

# WORK/final_dir/{train,validate,test}/{user_id}.csv
CURRENT_TIMESTAMP = "current_timestamp"
START_TIMESTAMP = "start_timestamp"
TRACK_DURATION = "track_duration"
TIMES_PLAYED = "times_played"
SESSION_LENGTH = "session_length"
FINAL_COLUMNS = [
    USER_ID, CURRENT_TIMESTAMP, START_TIMESTAMP, SESSION_ID, PREVIOUS_SESSION_LENGTH,
    AVERAGE_SESSION_LENGTH, GENDER, AGE, COUNTRY, REGISTERED, TRACK_DURATION, TIMES_PLAYED,
    ARTIST_NAME, TRACK_NAME, SESSION_LENGTH,
]

# WORK/final_dir/user_profile_cluster.csv
PROFILE_CLUSTER_COLUMNS = [
    USER_ID, GENDER, AGE, COUNTRY, REGISTERED, "top_artist", "top_track", "total_sessions",
    AVERAGE_SESSION_LENGTH, "max_session_length", "median_session_length", "total_session_rows",
]

# WORK/results/experiments.csv
# Test metrics carry 95% paired bootstrap intervals over users; `reference` is the naive baseline
# with the lowest validation MAE, and `selected` marks the model picked on validation MAE.
EXPERIMENT_COLUMNS = [
    "run_id", "finished_at", "stage", "model", "params", "n_test", "val_mae_s",
    "mae_s", "mae_ci_low", "mae_ci_high", "rmse_s", "baseline_mae_s",
    "normalized_mae", "normalized_mae_ci_low", "normalized_mae_ci_high", "reference",
    "headroom_captured", "headroom_ci_low", "headroom_ci_high",
    "diff_vs_reference_s", "diff_vs_reference_ci_low", "diff_vs_reference_ci_high",
    "selected", "train_seconds",
    # Distributional models (baseline.distribution), empty for point-only models: test pinball loss
    # of the q10/q50/q90 with its interval, share of test sessions inside [q10, q90] and its
    # mean width, the validation pinball loss and the distributional model picked on it.
    "pinball_loss_s", "pinball_ci_low", "pinball_ci_high", "coverage_80", "interval_width_s",
    "val_pinball_loss_s", "selected_distribution",
]
# Columns only some stages fill, after the common ones in the file: the in-session stage's
# checkpoint (seconds the session had lasted when predicted), empty for every other stage. Rows
# may omit them, so a stage that writes EXPERIMENT_COLUMNS alone keeps working.
CHECKPOINT_S = "checkpoint_s"
STAGE_COLUMNS = [CHECKPOINT_S]
EXPERIMENT_FILE_COLUMNS = [*EXPERIMENT_COLUMNS, *STAGE_COLUMNS]
# One row per paired comparison of two models' test MAE (WORK/results/comparisons.csv).
COMPARISON_COLUMNS = ["run_id", "stage", "model", "versus", "diff_mae_s", "diff_ci_low",
                      "diff_ci_high", "verdict"]
COMPARISON_FILE_COLUMNS = [*COMPARISON_COLUMNS, *STAGE_COLUMNS]

# ground_truth/ of a synthetic dataset. Beside each planted length, whole seconds of its exact law
# given what is known at the session's start: quantiles (column -> level) and, per checkpoint e,
# the median of the total length given the session lasts more than e seconds (asked mid-session).
GT_MEDIAN = "median_length_s"
GT_Q10 = "q10_length_s"
GT_Q90 = "q90_length_s"
GT_QUANTILE_LEVELS = {GT_Q10: 0.1, GT_MEDIAN: 0.5, GT_Q90: 0.9}
GT_CHECKPOINTS_S = (600, 1800, 3600)
GT_GIVEN_MEDIANS = {f"median_length_given_{e}_s": e for e in GT_CHECKPOINTS_S}
GT_LAW_COLUMNS = [GT_MEDIAN, GT_Q10, GT_Q90, *GT_GIVEN_MEDIANS]
GT_SESSIONS_COLUMNS = [USER_ID, "start_ms", "length_s", *GT_LAW_COLUMNS]
GT_TRACKS_COLUMNS = [
    ARTIST_NAME, TRACK_NAME, ARTIST_MBID, TRACK_MBID, "duration_ms", "tags",
]
GT_USERS_COLUMNS = [USER_ID, "archetype"]
