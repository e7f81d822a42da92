"""Speed and peak memory of the plays reader against its peers, on one plays file.

    .venv/bin/python benchmarks/bench_reader.py --plays PLAYS.tsv

Each reader runs in its own child process so that its peak RSS is its own. The floor is one
`pyarrow.csv.read_csv` of the file into untyped Arrow strings (quoting disabled); the pandas
peer is `pandas.read_csv(..., quoting=csv.QUOTE_NONE)`. Ratios are seconds / floor seconds.
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from peers import read_arrow_floor

READERS = ("arrow-floor", "pandas-quote-none", "sessionlen-arrow", "sessionlen")


def _read_pandas(path: Path) -> int:
    """pandas' C parser with quoting disabled, every field a string."""
    import pandas as pd

    from utils.core.columns import PLAYS_COLUMNS

    frame = pd.read_csv(path, sep="\t", header=None, names=PLAYS_COLUMNS, quoting=csv.QUOTE_NONE,
                        dtype=str, keep_default_na=False, on_bad_lines="skip")
    return len(frame)


def _read_sessionlen_arrow(path: Path) -> int:
    """The project reader up to the typed, validated Arrow table."""
    from utils.data_processing.plays_reader import read_plays_arrow

    return read_plays_arrow(path).num_rows


def _read_sessionlen(path: Path) -> int:
    """The project reader up to the typed pandas frame other stages use."""
    from utils.data_processing.plays_reader import read_plays

    return len(read_plays(path).frame)


def run_one(reader: str, path: Path) -> dict[str, float]:
    """Time one reader in this process; rows, seconds and peak RSS in GiB."""
    function = {
        "arrow-floor": read_arrow_floor, "pandas-quote-none": _read_pandas,
        "sessionlen-arrow": _read_sessionlen_arrow, "sessionlen": _read_sessionlen,
    }[reader]
    start = time.perf_counter()
    rows = function(path)
    seconds = time.perf_counter() - start
    # ru_maxrss is in KiB on Linux.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {"rows": rows, "seconds": seconds, "peak_rss_gib": peak}


def run_isolated(reader: str, path: Path) -> dict[str, float]:
    """Run one reader in a child process and return its measurements."""
    child = subprocess.run(
        [sys.executable, __file__, "--plays", str(path), "--child", reader],
        capture_output=True, text=True, check=True,
    )
    return json.loads(child.stdout.strip().splitlines()[-1])


def report(results: dict[str, dict[str, float]]) -> str:
    """A table of rows/s, seconds, peak RSS and the ratio to the floor."""
    floor = results.get("arrow-floor", {}).get("seconds")
    lines = [f"{'reader':<20}{'rows':>12}{'seconds':>10}{'rows/s':>14}{'peak RSS':>11}"
             f"{'x floor':>9}"]
    for name, r in results.items():
        ratio = f"{r['seconds'] / floor:>9.2f}" if floor else f"{'-':>9}"
        lines.append(f"{name:<20}{int(r['rows']):>12,}{r['seconds']:>10.2f}"
                     f"{r['rows'] / r['seconds']:>14,.0f}{r['peak_rss_gib']:>8.2f} GiB{ratio}")
    return "\n".join(lines)


def main() -> None:
    """Parse arguments; run each reader isolated (or one, as the child) and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plays", type=Path, required=True, help="a plays .tsv file")
    parser.add_argument("--readers", nargs="+", choices=READERS, default=list(READERS))
    parser.add_argument("--child", choices=READERS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_one(args.child, args.plays)))
        return
    if not args.plays.is_file():
        parser.error(f"{args.plays}: no such file")
    size = args.plays.stat().st_size
    print(f"{args.plays}: {size / 2**30:.2f} GiB")
    results = {reader: run_isolated(reader, args.plays) for reader in args.readers}
    print(report(results))


if __name__ == "__main__":
    main()
