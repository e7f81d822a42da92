"""Sustained request rate of the metadata crawl against the loopback fake API, per --rate.

Usage: python benchmarks/bench_crawl.py [--rates 5 20 50] [--seconds 6] [--concurrency 4]

For each target rate it crawls a fresh catalog for about `--seconds` seconds and measures the rate
where it matters, at the server: (requests - 1) / (last arrival - first arrival). Prints a table
with the ratio achieved / target; the target is at least 0.95 and the limiter never exceeds 1.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from utils.core.columns import GT_TRACKS_COLUMNS, UNIQUE_TRACKS_COLUMNS
from utils.core.config import CrawlParams, WorkLayout
from utils.core.stage_io import write_manifest
from utils.data_processing.track_metadata import build_track_metadata
from utils.synthetic.fake_api import start_server

KEY = "bench0123456789abcdef0123456789ab"
TARGET_RATIO = 0.95


def write_catalog(path: Path, n: int) -> pd.DataFrame:
    """A catalog of n tracks, returned as its unique_tracks frame (most played first)."""
    artists = [f"Artist {i % 97}" for i in range(n)]
    tracks = [f"Track {i}" for i in range(n)]
    pd.DataFrame({"artist_name": artists, "track_name": tracks, "artist_mbid": "",
                  "track_mbid": "", "duration_ms": 150_000 + np.arange(n) * 10,
                  "tags": "rock|pop"})[GT_TRACKS_COLUMNS].to_csv(path, index=False)
    return pd.DataFrame({
        "artist_key": [a.lower() for a in artists], "track_key": [t.lower() for t in tracks],
        "artist_name": artists, "track_name": tracks, "artist_mbid": "", "track_mbid": "",
        "play_count": np.arange(n, 0, -1), "gap_median_s": 200.0, "gap_count": 3,
        "artist_gap_median_s": 210.0,
    })[UNIQUE_TRACKS_COLUMNS]


def write_work(root: Path, tracks: pd.DataFrame) -> Path:
    """A WORK directory holding a completed tracks stage."""
    layout = WorkLayout(root)
    layout.tracks.mkdir(parents=True)
    tracks.to_csv(layout.unique_tracks, index=False)
    write_manifest(layout.tracks, "tracks", inputs=[], parameters={}, rows_in=len(tracks),
                   rows_out=len(tracks), rows_rejected=0, outputs=[layout.unique_tracks.name],
                   timings={})
    return root


def measure(rate: float, seconds: float, concurrency: int, scratch: Path) -> dict[str, float]:
    """Crawl about `seconds` worth of tracks at `rate`; the rate measured at the server."""
    n = max(int(rate * seconds), 10)
    folder = scratch / f"rate-{rate:g}"
    folder.mkdir()
    tracks = write_catalog(folder / "tracks.csv", n)
    work = write_work(folder / "work", tracks)
    with start_server(folder / "tracks.csv", api_key=KEY) as api:
        summary = build_track_metadata(work, CrawlParams(rate=rate, concurrency=concurrency),
                                       KEY, api.url, progress=False)
        arrivals = np.array(api.arrivals)
    achieved = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])
    return {"target_rate": rate, "requests": len(arrivals), "achieved_rate": achieved,
            "client_rate": summary["request_rate"], "ratio": achieved / rate,
            "resolved": summary["by_source"].get("api", 0) / n}


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, measure every rate, print the table; exit 1 below the target ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=float, nargs="+", default=[5.0, 20.0, 50.0])
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        rows = [measure(rate, args.seconds, args.concurrency, Path(scratch))
                for rate in args.rates]
    table = pd.DataFrame(rows).set_index("target_rate")
    table["meets_target"] = table["ratio"] >= TARGET_RATIO
    print(table.round(3).to_string())
    return 0 if table["meets_target"].all() else 1


if __name__ == "__main__":
    sys.exit(main())
