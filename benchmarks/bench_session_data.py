"""Speed and memory of the vocab and session_data stages (final_dir per-play files).

Usage: python benchmarks/bench_session_data.py --work DIR

DIR is a WORK directory whose summarize stage is complete (e.g. work/demo after `make run`).
The stages run in a scratch WORK linking to DIR/user_dir and DIR/summary_dir, so DIR itself is
not modified. Each stage runs in a fresh process, so its peak RSS is its own. For scale, the
table also times a bare read of every user_dir file (the I/O floor: the same bytes parsed, no
work done) and quotes the summarize stage's own time from its manifest; the ratio columns
compare each stage with them.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd
import pyarrow.csv as pacsv

from utils.baseline.user_plays import user_files
from utils.core.config import WorkLayout
from utils.core.errors import SessionlenError
from utils.core.stage_io import require_stage


def scratch_work(work: Path, scratch: Path) -> Path:
    """A WORK under `scratch` whose user_dir and summary_dir link to those of `work`."""
    root = scratch / "work"
    root.mkdir()
    layout = WorkLayout(work)
    (root / "user_dir").symlink_to(layout.user_dir.resolve())
    (root / "summary_dir").symlink_to(layout.summary_dir.resolve())
    return root


def _peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (Linux reports KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _run_stage(name: str, root: str) -> dict[str, float]:
    """Run one stage (in a fresh process): seconds, plays and peak RSS."""
    from utils.models_with_clusters.session_data import build_session_data
    from utils.models_with_clusters.vocab import build_vocab

    stage = {"vocab": build_vocab, "session_data": build_session_data}[name]
    started = time.perf_counter()
    result = stage(Path(root))
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "plays": result["plays"], "peak_rss_mb": _peak_rss_mb()}


def _read_floor(root: str) -> dict[str, float]:
    """Parse every user_dir file with the same reader and do nothing else."""
    started = time.perf_counter()
    rows = 0
    for files in user_files(WorkLayout(Path(root)).user_dir).values():
        for path in files:
            rows += pacsv.read_csv(path).num_rows
    return {"seconds": time.perf_counter() - started, "plays": rows,
            "peak_rss_mb": _peak_rss_mb()}


def in_fresh_process(func: Callable[..., dict[str, float]], *args: str) -> dict[str, float]:
    """Call `func(*args)` in a new interpreter, so its peak memory is measured alone."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(func, *args).result()


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the stages, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        summarize_entry = require_stage(WorkLayout(args.work).summary_dir, "summarize")
    except SessionlenError as exc:
        print(f"bench_session_data: error: {exc}", file=sys.stderr)
        return 2
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_session_data_") as scratch:
        root = str(scratch_work(args.work, Path(scratch)))
        results["read_floor"] = in_fresh_process(_read_floor, root)
        for name in ("vocab", "session_data"):
            results[name] = in_fresh_process(_run_stage, name, root)
            print(f"{name}: {results[name]['seconds']:.2f} s", flush=True)
    table = pd.DataFrame(results).T
    table["plays_per_s"] = table["plays"] / table["seconds"]
    table["ratio_vs_read_floor"] = table["seconds"] / results["read_floor"]["seconds"]
    summarize_s = sum(summarize_entry["timings_s"].values())
    table["ratio_vs_summarize"] = table["seconds"] / summarize_s
    print(f"final_dir stages on {args.work} (summarize took {summarize_s:.2f} s by its manifest)")
    print(table.to_string(float_format=lambda x: f"{x:.3f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
