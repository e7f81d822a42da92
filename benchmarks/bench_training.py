"""Training speed of the baseline stage's models on a WORK directory's summaries.

Usage: python benchmarks/bench_training.py --work DIR [--epochs 3] [--sequence-length 10]

Prints seconds per epoch for each network (the first epoch, which includes graph tracing, apart
from the steady ones) with its ratio to the GRU, and the LightGBM fit time in GRU epochs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from utils.baseline.boosting import BoostingSettings, fit_lightgbm
from utils.baseline.experiment import start_experiment
from utils.baseline.experiment_state import Experiment
from utils.baseline.models import NETWORKS, fit_network
from utils.core.config import ModelParams
from utils.core.errors import SessionlenError


def quiet(_: str) -> None:
    """Progress lines are not part of a benchmark's output."""


def network_timings(run: Experiment, params: ModelParams, dropout: float) -> pd.DataFrame:
    """Seconds per epoch of every network (early stopping kept out of the way by the caller)."""
    train_rows = len(run.features.rows["train"])
    lines = []
    for name in NETWORKS:
        trained = fit_network(name, run.features, params, dropout, log=quiet)
        steady = float(np.median(trained.epoch_seconds[1:] or trained.epoch_seconds))
        lines.append({"network": name, "first_epoch_s": trained.epoch_seconds[0],
                      "seconds_per_epoch": steady, "train_sessions_per_s": train_rows / steady})
    table = pd.DataFrame(lines).set_index("network")
    table["ratio_to_gru"] = table["seconds_per_epoch"] / table.loc["gru", "seconds_per_epoch"]
    return table


def lightgbm_timing(run: Experiment, seed: int) -> pd.DataFrame:
    """LightGBM's fit time with the default settings, and its ratio to one GRU epoch."""
    trained = fit_lightgbm(run.features, BoostingSettings(seed=seed), log=quiet)
    return pd.DataFrame([{"model": "lightgbm", "fit_s": trained.train_seconds,
                          "rounds": trained.booster.current_iteration(),
                          "best_round": trained.best_round}]).set_index("model")


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, time the models, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--sequence-length", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--hidden-dim", type=int, default=8)
    parser.add_argument("--dropout", type=float, default=0.2)
    args = parser.parse_args(argv)
    # Patience above the epoch count: every requested epoch runs and is timed.
    params = ModelParams(epochs=args.epochs, sequence_length=args.sequence_length,
                         batch_size=args.batch_size, hidden_dim=args.hidden_dim,
                         patience=args.epochs + 1)
    try:
        run = start_experiment(args.work, args.sequence_length)
        networks = network_timings(run, params, args.dropout)
        boosting = lightgbm_timing(run, params.seed)
    except SessionlenError as exc:
        print(f"bench_training: error: {exc}", file=sys.stderr)
        return 2
    print(f"training speed on {args.work}: {len(run.features.rows['train']):,} train sessions, "
          f"{args.epochs} epochs, sequence length {args.sequence_length}, "
          f"batch {args.batch_size}, hidden {args.hidden_dim}")
    print(networks.round(3).to_string())
    boosting["fit_s_per_gru_epoch"] = boosting["fit_s"] / networks.loc["gru", "seconds_per_epoch"]
    print(boosting.round(3).to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
