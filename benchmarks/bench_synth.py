"""Wall time, peak memory and calibration of the synthetic generator at a chosen scale.

    .venv/bin/python benchmarks/bench_synth.py [--scale full] [--seed 1] [--out DIR]

Without --out the dataset goes to a temporary directory that is removed afterwards. The target
at full scale (19.15M plays, ~2.4 GB of TSV) on 2 cores: at most 3 minutes and 6 GB peak RSS.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

from utils.core.config import SCALES
from utils.synthetic.generate import format_calibration, generate_dataset

TARGET_SECONDS = 180.0
TARGET_PEAK_GIB = 6.0


def peak_rss_gib() -> float:
    """Peak resident memory of this process and its finished children, GiB (ru_maxrss is KiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 2**20


def run(out: Path, scale: str, seed: int) -> int:
    """Generate, then print timing, memory and the calibration table; 1 if a target is missed."""
    start = time.perf_counter()
    report = generate_dataset(out, scale=scale, seed=seed)
    seconds = time.perf_counter() - start
    peak = peak_rss_gib()
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2**30
    print(format_calibration(report))
    print(f"\nscale {scale}: {report.plays:,} plays, {size:.2f} GiB written to {out}")
    print(f"wall time {seconds:.1f} s ({report.plays / seconds / 1e6:.2f} M plays/s), "
          f"peak RSS {peak:.2f} GiB")
    if scale != "full":
        return 0
    ok = seconds <= TARGET_SECONDS and peak <= TARGET_PEAK_GIB
    print(f"targets (<= {TARGET_SECONDS:.0f} s, <= {TARGET_PEAK_GIB:.0f} GiB): "
          f"{'met' if ok else 'MISSED'}")
    return 0 if ok else 1


def main() -> int:
    """Parse arguments and run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=list(SCALES), default="full")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write the dataset (default: a temporary directory)")
    args = parser.parse_args()
    if args.out is not None:
        return run(args.out, args.scale, args.seed)
    with tempfile.TemporaryDirectory(prefix="bench-synth-") as tmp:
        return run(Path(tmp) / "synthetic", args.scale, args.seed)


if __name__ == "__main__":
    sys.exit(main())
