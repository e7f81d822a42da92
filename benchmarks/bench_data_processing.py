"""Speed and memory of the data-processing stages (tracks + denormalize): local vs Spark.

Usage: python benchmarks/bench_data_processing.py --raw DIR [--runs N]
                                                  [--engines local spark] [--spark-master URL]

DIR is a raw directory in the Last.fm 1K format (e.g. `sessionlen synth --scale demo --out DIR`).
Each engine runs in its own process, N times in scratch WORK directories: tracks (timed), the
offline metadata stage (not timed), denormalize (timed). The table shows median seconds, plays
per second, the process's peak resident memory (for Spark, the Python driver plus the JVM) and
whether the engine wrote the same bytes as the first one. The Spark session is started before
the clock, so runs after the first are warm. Peak memory is read from /proc (Linux).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from utils.core.config import LASTFM_API_URL, CrawlParams, WorkLayout
from utils.data_processing.denormalize import denormalize
from utils.data_processing.denormalize_fields import USER_FILE
from utils.data_processing.track_metadata import build_track_metadata
from utils.data_processing.tracks import build_unique_tracks


def process_peak_mb(pid: str = "self") -> float:
    """Peak resident memory (VmHWM) of a process in MB, 0 when it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    line = next((s for s in status.splitlines() if s.startswith("VmHWM:")), "VmHWM: 0 kB")
    return int(line.split()[1]) / 1024


def peak_rss_mb() -> float:
    """Peak memory of this process plus its live children (the Spark JVM)."""
    children = [c for task in Path("/proc/self/task").iterdir()
                for c in (task / "children").read_text().split()]
    return process_peak_mb() + sum(process_peak_mb(c) for c in children)


def output_digest(work: Path) -> str:
    """SHA-256 over unique_tracks.csv and every user file (names and bytes)."""
    layout = WorkLayout(work)
    digest = hashlib.sha256()
    for path in [layout.unique_tracks, *sorted(layout.user_dir.glob(f"*/{USER_FILE}"))]:
        digest.update(str(path.relative_to(work)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def one_run(raw: Path, work: Path, engine: str, master: str | None) -> dict[str, Any]:
    """tracks, offline metadata, denormalize in a fresh WORK: timings, counts, output digest."""
    started = time.perf_counter()
    tracks = build_unique_tracks(raw, work, engine=engine, spark_master=master)
    tracks_s = time.perf_counter() - started
    build_track_metadata(work, CrawlParams(), api_key=None, api_url=LASTFM_API_URL)
    started = time.perf_counter()
    users = denormalize(raw, work, engine=engine, spark_master=master)
    return {"tracks_s": tracks_s, "denormalize_s": time.perf_counter() - started,
            "plays": users["plays_out"], "tracks": tracks["tracks"],
            "digest": output_digest(work)}


def engine_runs(raw: Path, engine: str, runs: int, master: str | None) -> dict[str, Any]:
    """Every run of one engine in this process: median timings and the peak memory."""
    if engine == "spark":
        from utils.data_processing.spark_stages import spark_session

        spark_session(master).sparkContext.setLogLevel("ERROR")
    results = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory(prefix="bench_data_processing_") as scratch:
            results.append(one_run(raw, Path(scratch) / "work", engine, master))
    return {
        "engine": engine,
        "tracks_s": statistics.median(r["tracks_s"] for r in results),
        "denormalize_s": statistics.median(r["denormalize_s"] for r in results),
        "plays": results[0]["plays"], "tracks": results[0]["tracks"],
        "digests": sorted({r["digest"] for r in results}), "peak_mb": peak_rss_mb(),
    }


def run_in_child(args: argparse.Namespace, engine: str) -> dict[str, Any]:
    """Run one engine's measurements in a fresh interpreter (a clean memory peak)."""
    command = [sys.executable, __file__, "--raw", str(args.raw), "--runs", str(args.runs),
               "--child", engine]
    if args.spark_master:
        command += ["--spark-master", args.spark_master]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"{engine} run failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def format_table(rows: list[dict[str, Any]]) -> str:
    """The results as an aligned text table, ratios against the first engine."""
    base = rows[0]
    lines = [f"{'engine':8} {'tracks s':>9} {'denorm s':>9} {'total s':>8} {'plays/s':>10} "
             f"{'peak MB':>8} {'vs ' + base['engine']:>9} {'same bytes':>10}"]
    for row in rows:
        total = row["tracks_s"] + row["denormalize_s"]
        ratio = total / (base["tracks_s"] + base["denormalize_s"])
        same = row["digests"] == base["digests"] and len(row["digests"]) == 1
        lines.append(f"{row['engine']:8} {row['tracks_s']:9.2f} {row['denormalize_s']:9.2f} "
                     f"{total:8.2f} {row['plays'] / total:10,.0f} {row['peak_mb']:8,.0f} "
                     f"{ratio:8.2f}x {'yes' if same else 'NO':>10}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raw", type=Path, required=True)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--engines", nargs="+", default=["local", "spark"],
                        choices=["local", "spark"])
    parser.add_argument("--spark-master", default=None)
    parser.add_argument("--child", choices=["local", "spark"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(engine_runs(args.raw, args.child, args.runs, args.spark_master)))
        return 0
    rows = [run_in_child(args, engine) for engine in args.engines]
    print(f"raw: {args.raw}  plays: {rows[0]['plays']:,}  tracks: {rows[0]['tracks']:,}  "
          f"runs per engine: {args.runs} (median)")
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
