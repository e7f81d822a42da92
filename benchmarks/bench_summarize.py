"""Speed of the summarize stage: local engine vs Spark vs the same SQL in DuckDB.

Usage: python benchmarks/bench_summarize.py --work DIR [--engines local spark duckdb]
                                            [--spark-master URL] [--threads N]

DIR is a WORK directory whose denormalize stage is complete (e.g. work/demo after `make run`).
The stage runs in a scratch WORK that links to DIR/user_dir, so DIR itself is not modified.
`local` and `spark` time the whole stage (read, sessions, splits, files; the Spark session is
started before the clock); `duckdb` times the same reading, session rule and per-session
summary as SQL window functions in this process, without writing files, so it is compared with
the local engine's compute time (the `sessions` timing of its manifest). Each engine's session
count and total length are checked against the local engine's.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from peers import duckdb_sessions

from utils.baseline.session_table import LENGTH_MS
from utils.baseline.summaries import summarize
from utils.baseline.summary_dir import load_summaries
from utils.baseline.user_plays import user_files
from utils.core.config import SessionParams, WorkLayout
from utils.core.stage_io import MANIFEST, require_stage


def scratch_work(work: Path, scratch: Path) -> Path:
    """A WORK under `scratch` whose user_dir is a link to WORK/user_dir."""
    root = scratch / "work"
    root.mkdir()
    (root / "user_dir").symlink_to(WorkLayout(work).user_dir.resolve())
    return root


def stage_run(root: Path, engine: str, spark_master: str | None) -> dict[str, float]:
    """Run the stage with one engine: wall seconds, compute seconds, sessions, total length."""
    started = time.perf_counter()
    result = summarize(root, SessionParams(), engine=engine, spark_master=spark_master)
    seconds = time.perf_counter() - started
    manifest = json.loads((WorkLayout(root).summary_dir / MANIFEST).read_text())["summarize"]
    frames = load_summaries(root)
    return {
        "seconds": seconds, "compute_seconds": manifest["timings_s"]["sessions"],
        "plays": result["plays"], "sessions": sum(result["sessions_per_split"].values()),
        "total_length_s": round(sum(f["current_session_length"].sum() for f in frames.values()),
                                3),
    }


def duckdb_run(root: Path, threads: int | None) -> dict[str, float]:
    """The session rule and per-session summary as SQL window functions in DuckDB."""
    files = [p for paths in user_files(WorkLayout(root).user_dir).values() for p in paths]
    started = time.perf_counter()
    table = duckdb_sessions(files, SessionParams().gap_minutes, threads)
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds, "compute_seconds": seconds, "plays": int(table["plays"].sum()),
        "sessions": len(table), "total_length_s": round(table[LENGTH_MS].sum() / 1000.0, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--engines", nargs="+", default=["local", "spark", "duckdb"],
                        choices=["local", "spark", "duckdb"])
    parser.add_argument("--spark-master", default=None)
    parser.add_argument("--threads", type=int, default=None, help="DuckDB threads")
    args = parser.parse_args(argv)
    require_stage(WorkLayout(args.work).user_dir, "denormalize")
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_summarize_") as scratch:
        root = scratch_work(args.work, Path(scratch))
        for engine in args.engines:
            if engine == "duckdb":
                results[engine] = duckdb_run(root, args.threads)
                continue
            if engine == "spark":
                from utils.core.spark import get_spark

                get_spark(args.spark_master)  # JVM start-up is not part of the stage's time
            results[engine] = stage_run(root, engine, args.spark_master)
            print(f"{engine}: {results[engine]['seconds']:.2f} s", flush=True)
    table = pd.DataFrame(results).T
    if "local" in results:
        local = results["local"]
        table["ratio_vs_local"] = table["seconds"] / local["seconds"]
        table["compute_ratio_vs_local"] = table["compute_seconds"] / local["compute_seconds"]
        table["same_sessions"] = [
            r["sessions"] == local["sessions"] and r["total_length_s"] == local["total_length_s"]
            for r in results.values()]
    print(table.to_string(float_format=lambda x: f"{x:.3f}"))
    return 0 if table.get("same_sessions", pd.Series([True])).all() else 1


if __name__ == "__main__":
    sys.exit(main())
