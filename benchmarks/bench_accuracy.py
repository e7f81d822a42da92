"""Accuracy across datasets: every model's normalized MAE and headroom over several seeds.

Usage: python benchmarks/bench_accuracy.py [--seeds 1 2 3] [--scale demo]
       [--mechanics standard variant] [--out DIR] [--reuse]

For each generator mechanics and seed it generates a synthetic dataset (reused when present),
runs the whole pipeline on it (`sessionlen run`, each run's log in DIR/logs/), and reads the
latest run of each stage from its experiments.csv. It prints, per mechanics, stage and model, the
mean and standard deviation across seeds of normalized MAE and headroom captured, and how often
the model was the one selected on validation; then the selected model's headroom per mechanics;
then the distributional models' pinball loss relative to the oracle's and their 80% coverage.
One run of the pipeline is one draw: these spreads are what a single run's figures vary by.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pandas as pd

from utils.core import config
from utils.core.results import load_experiments
from utils.report import latest_runs, model_labels
from utils.synthetic.generate import MECHANICS, generate_dataset

DEFAULT_OUT = config.PROJECT_ROOT / "work" / "bench_accuracy"


def dataset(out: Path, mechanics: str, scale: str, seed: int) -> Path:
    """The raw synthetic dataset of one mechanics and seed, generated once."""
    raw = out / "raw" / f"{mechanics}-{scale}-{seed}"
    if not (raw / "ground_truth" / "sessions.csv").is_file():
        generate_dataset(raw, scale=scale, seed=seed, mechanics=mechanics)
    return raw


def recorded_runs(work: Path) -> pd.DataFrame:
    """The latest rows of each stage recorded in WORK, labelled like the report's tables."""
    rows = latest_runs(load_experiments(work))
    # The in-session stage picks and scores once per checkpoint: each is a stage of its own here.
    point = rows["checkpoint_s"]
    stage = rows["stage"].where(point.isna(), rows["stage"] + " @ "
                                + point.map(lambda e: f"{e:g} s"))
    return rows.assign(label=model_labels(rows), stage=stage)


def run_pipeline(out: Path, raw: Path, name: str, scale: str, seed: int, reuse: bool
                 ) -> pd.DataFrame:
    """Run every notebook on `raw` (log in out/logs/) and return each stage's latest rows.

    With `reuse`, a WORK whose both stages are recorded already is read instead of rerun.
    """
    work, log = out / "work" / name, out / "logs" / f"{name}.log"
    if reuse and (work / "results" / "experiments.csv").is_file():
        rows = recorded_runs(work)
        if {"baseline", "clusters"} <= set(rows["stage"]):
            return rows
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "utils.cli", "run", "--raw", str(raw), "--work", str(work),
               "--scale", scale, "--seed", str(seed)]
    with open(log, "w", encoding="utf-8") as fh:
        done = subprocess.run(command, stdout=fh, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        raise SystemExit(f"bench_accuracy: the run on {raw} failed; see {log}")
    return recorded_runs(work)


def summary(results: pd.DataFrame) -> pd.DataFrame:
    """Mean and spread across seeds per (mechanics, stage, model), best mean headroom first."""
    grouped = results.groupby(["mechanics", "stage", "label"], sort=False)
    table = grouped.agg(
        runs=("seed", "nunique"),
        normalized_mae_mean=("normalized_mae", "mean"),
        normalized_mae_sd=("normalized_mae", "std"),
        headroom_mean=("headroom_captured", "mean"),
        headroom_sd=("headroom_captured", "std"),
        selected=("selected", "sum"),
    )
    return table.sort_values(["mechanics", "stage", "headroom_mean"],
                             ascending=[True, True, False])


def distribution_summary(results: pd.DataFrame) -> pd.DataFrame:
    """Distributional models across seeds: pinball loss as a multiple of the oracle's in the
    same run, coverage of the 80% interval, and how often each was picked on validation."""
    spread = results[results["pinball_loss_s"].notna()]
    oracle = spread[spread["model"] == "oracle"].set_index(["mechanics", "stage", "seed"])
    ratio = spread["pinball_loss_s"] / oracle["pinball_loss_s"].reindex(
        pd.MultiIndex.from_frame(spread[["mechanics", "stage", "seed"]])).to_numpy()
    grouped = spread.assign(pinball_vs_oracle=ratio).groupby(["mechanics", "stage", "label"],
                                                             sort=False)
    table = grouped.agg(
        runs=("seed", "nunique"),
        pinball_vs_oracle_mean=("pinball_vs_oracle", "mean"),
        pinball_vs_oracle_sd=("pinball_vs_oracle", "std"),
        coverage_80_mean=("coverage_80", "mean"), coverage_80_sd=("coverage_80", "std"),
        selected=("selected_distribution", lambda picked: int(picked.astype(bool).sum())),
    )
    return table.sort_values(["mechanics", "stage", "pinball_vs_oracle_mean"])


def selected_summary(results: pd.DataFrame) -> pd.DataFrame:
    """The validation-picked model's headroom per mechanics and stage, across seeds."""
    picked = results[results["selected"].astype(bool)]
    return picked.groupby(["mechanics", "stage"], sort=False).agg(
        runs=("seed", "nunique"), headroom_mean=("headroom_captured", "mean"),
        headroom_sd=("headroom_captured", "std"), headroom_min=("headroom_captured", "min"),
        picks=("label", lambda labels: ", ".join(f"{m} x{n}" for m, n in
                                                 labels.value_counts().items())))


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--scale", choices=list(config.SCALES), default="demo")
    parser.add_argument("--mechanics", choices=list(MECHANICS), nargs="+", default=["standard"])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--reuse", action="store_true",
                        help="read runs already complete in DIR instead of rerunning them")
    args = parser.parse_args(argv)
    frames = []
    for mechanics in args.mechanics:
        for seed in args.seeds:
            raw = dataset(args.out, mechanics, args.scale, seed)
            name = f"{mechanics}-{args.scale}-{seed}"
            print(f"running the pipeline on {name} ...", flush=True)
            frames.append(run_pipeline(args.out, raw, name, args.scale, seed, args.reuse)
                          .assign(mechanics=mechanics, seed=seed))
    results = pd.concat(frames, ignore_index=True)
    results.to_csv(args.out / f"accuracy_runs-{'-'.join(args.mechanics)}.csv", index=False)
    with pd.option_context("display.width", 160, "display.max_rows", 200):
        print(summary(results).round(4).to_string())
        print()
        print(selected_summary(results).round(4).to_string())
        if results["pinball_loss_s"].notna().any():
            print()
            print(distribution_summary(results).round(4).to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
