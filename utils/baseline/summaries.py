"""The summarize stage: per-user plays -> sessions -> leakage-free per-session summaries -> splits.

Both engines reduce the plays to the same intermediate table of sessions (session_table: one
row per session, lengths in integer milliseconds) and hand it to `write_summaries`
(summary_writer), which assigns the splits, fits the country vocabulary on train sessions, and
writes every file; summary_dir reads them back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from utils.baseline.session_table import PLAYS, local_sessions
from utils.baseline.splits import check_fractions
from utils.baseline.summary_dir import SUMMARY_OUTPUTS
from utils.baseline.summary_writer import write_summaries
from utils.baseline.user_plays import user_files
from utils.core.config import SessionParams, WorkLayout
from utils.core.errors import SessionlenError
from utils.core.spark import check_engine, check_engine_target
from utils.core.stage_io import Timer, atomic_dir, require_stage, write_manifest
from utils.core.work_lock import locked_stage


def engine_sessions(users: dict[str, list[Path]], gap_minutes: float, engine: str,
                    spark_master: str | None) -> tuple[pd.DataFrame, int]:
    """(sessions table, plays read) from the chosen engine."""
    check_engine(engine)
    if engine == "spark":
        from utils.baseline.session_table_spark import spark_sessions

        return spark_sessions(users, gap_minutes, spark_master)
    return local_sessions(users, gap_minutes)


@locked_stage("summary_dir", reads=("user_dir",))
def summarize(work: Path, params: SessionParams, engine: str = "local",
              spark_master: str | None = None) -> dict[str, Any]:
    """Sessions, per-session summaries and splits of WORK/user_dir into WORK/summary_dir."""
    layout = WorkLayout(Path(work))
    check_engine_target(engine, spark_master)
    if not params.gap_minutes > 0:
        raise SessionlenError(f"SessionParams gap_minutes={params.gap_minutes} must be positive")
    check_fractions(params.train_fraction, params.validate_fraction)
    require_stage(layout.user_dir, "denormalize")
    users = user_files(layout.user_dir)
    with Timer() as compute:
        sessions, plays_in = engine_sessions(users, params.gap_minutes, engine, spark_master)
    if not plays_in:
        raise SessionlenError(f"{layout.user_dir}: the user files hold no plays")
    with atomic_dir(layout.summary_dir) as out:
        with Timer() as write:
            counts = write_summaries(sessions, list(users), params, out)
        write_manifest(
            out, "summarize", inputs=[layout.user_dir],
            parameters={**params.to_dict(), "engine": engine, **counts}, rows_in=plays_in,
            rows_out=int(sessions[PLAYS].sum()), rows_rejected=0, outputs=SUMMARY_OUTPUTS,
            timings={"sessions": compute.seconds, "write": write.seconds},
        )
    return {
        "summary_dir": str(layout.summary_dir), "engine": engine, "plays": plays_in,
        "users": len(users), **counts,
        "seconds": round(compute.seconds + write.seconds, 3),
    }
