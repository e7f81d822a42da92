"""The `sessionlen` command line: one subcommand per pipeline step, each calling `utils`."""

from __future__ import annotations

import argparse
import os
import sys
import typing
from collections.abc import Callable, Sequence
from pathlib import Path

from utils.core import config
from utils.core.errors import SessionlenError, os_error_line
from utils.core.spark import CONNECT_SCHEME


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (the usage is one `--help` away)."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or a positive integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _add_engine(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--engine", choices=["local", "spark"], default=config.RunParams.engine)
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--spark-master", default=None,
                       help="Spark master URL (default: $SPARK_REMOTE if set, else local[*])")
    where.add_argument("--spark-remote", type=_connect_url, default=None,
                       help="Spark Connect server, sc://host:port (default: $SPARK_REMOTE)")


def _connect_url(text: str) -> str:
    if not text.startswith(CONNECT_SCHEME):
        raise argparse.ArgumentTypeError(f"must start with {CONNECT_SCHEME}, got {text}")
    return text


def _spark_url(args: argparse.Namespace) -> str | None:
    """Where the Spark engine runs: --spark-remote or --spark-master (None: the default)."""
    return args.spark_remote or args.spark_master


def _add_mechanics(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mechanics", choices=list(config.SYNTH_MECHANICS),
                        default=config.SYNTH_MECHANICS[0],
                        help="session-level law of generated synthetic data")


def _add_no_wait(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-wait", action="store_true",
                        help="exit at once (status 75) if another process is writing the same "
                             "WORK stage, instead of waiting for it")


def cmd_synth(args: argparse.Namespace) -> None:
    from utils.synthetic.generate import format_calibration, generate_dataset

    report = generate_dataset(args.out, scale=args.scale, users=args.users, seed=args.seed,
                              mechanics=args.mechanics)
    print(format_calibration(report))
    print(f"synthetic dataset written to {args.out}")


def cmd_download(args: argparse.Namespace) -> None:
    from utils.data_processing.download import OFFICIAL_URL, download_dataset

    path = download_dataset(args.out, url=args.url or OFFICIAL_URL)
    print(f"dataset ready in {path}")


def cmd_tracks(args: argparse.Namespace) -> None:
    from utils.data_processing.tracks import build_unique_tracks

    summary = build_unique_tracks(args.raw, args.work, engine=args.engine,
                                  spark_master=_spark_url(args))
    print(summary)


def cmd_metadata(args: argparse.Namespace) -> None:
    from utils.data_processing.track_metadata import (
        api_key_from_env,
        api_url_from_env,
        build_track_metadata,
    )

    params = config.CrawlParams(rate=args.rate, limit=args.limit, concurrency=args.concurrency,
                                timeout_s=args.timeout, max_retries=args.max_retries)
    summary = build_track_metadata(args.work, params, api_key=api_key_from_env(),
                                   api_url=api_url_from_env())
    print(summary)


def cmd_denormalize(args: argparse.Namespace) -> None:
    from utils.data_processing.denormalize import denormalize

    print(denormalize(args.raw, args.work, engine=args.engine, spark_master=_spark_url(args)))


def cmd_summarize(args: argparse.Namespace) -> None:
    from utils.baseline.summaries import summarize

    params = config.SessionParams(split=args.split, gap_minutes=args.gap_minutes, seed=args.seed)
    print(summarize(args.work, params, engine=args.engine, spark_master=_spark_url(args)))


def cmd_vocab(args: argparse.Namespace) -> None:
    from utils.models_with_clusters.vocab import build_vocab

    print(build_vocab(args.work, engine=args.engine, spark_master=_spark_url(args)))


def cmd_session_data(args: argparse.Namespace) -> None:
    from utils.models_with_clusters.session_data import build_session_data

    print(build_session_data(args.work, engine=args.engine, spark_master=_spark_url(args)))


def cmd_profiles(args: argparse.Namespace) -> None:
    from utils.models_with_clusters.profiles import build_user_profiles

    params = config.ClusterParams(min_rows=args.min_rows, min_sessions=args.min_sessions,
                                  max_average_length=args.max_average_length)
    print(build_user_profiles(args.work, params, engine=args.engine,
                              spark_master=_spark_url(args)))


def cmd_in_session(args: argparse.Namespace) -> None:
    from utils.models_with_clusters.in_session_results import run_in_session
    from utils.report import write_report

    table = run_in_session(args.work, args.raw, config.InSessionParams(seed=args.seed))
    write_report(args.work, args.raw)
    print(table.to_string())


def cmd_run(args: argparse.Namespace) -> None:
    from utils.runner import run_pipeline

    run_pipeline(raw=args.raw, work=args.work, scale=args.scale, engine=args.engine,
                 seed=args.seed, mechanics=args.mechanics, strict=args.strict)


def cmd_report(args: argparse.Namespace) -> None:
    from utils.report import write_report

    print(write_report(args.work, args.raw))


def cmd_fake_api(args: argparse.Namespace) -> None:
    from utils.synthetic.fake_api import FaultConfig, serve

    faults = FaultConfig(
        p_5xx=args.p_5xx, p_rate_limit=args.p_rate_limit, p_temporary=args.p_temporary,
        p_operation_failed=args.p_operation_failed, p_slow=args.p_slow,
        p_truncated=args.p_truncated, p_reset=args.p_reset, slow_seconds=args.slow_seconds,
        seed=args.seed,
    )
    serve(args.catalog, host=args.host, port=args.port,
          api_key=os.environ.get(config.API_KEY_ENV) or None, faults=faults)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand (fixed forms from DESIGN.md, plus options)."""
    parser = _Parser(
        prog="sessionlen", description="Predict Last.fm session lengths: pipeline steps.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("synth", help="generate a synthetic dataset in the real format")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--users", type=_positive_int, default=None)
    p.add_argument("--seed", type=int, default=config.DEFAULT_SEED)
    p.add_argument("--scale", choices=list(config.SCALES), default="tiny")
    _add_mechanics(p)
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("download", help="download and verify the real Last.fm 1K dataset")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--url", default=None, help="tarball URL (default: the official one)")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("tracks", help="distinct (artist, track) pairs with play counts")
    p.add_argument("--raw", type=Path, required=True)
    p.add_argument("--work", type=Path, required=True)
    _add_engine(p)
    _add_no_wait(p)
    p.set_defaults(func=cmd_tracks)

    p = sub.add_parser("metadata", help="track durations and genres (Last.fm API or offline)")
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--limit", type=_positive_int, default=None)
    crawl = config.CrawlParams()
    p.add_argument("--rate", type=_positive_float, default=crawl.rate, help="requests per second")
    p.add_argument("--concurrency", type=_positive_int, default=crawl.concurrency)
    p.add_argument("--timeout", type=_positive_float, default=crawl.timeout_s,
                   help="seconds to wait for one answer")
    p.add_argument("--max-retries", type=_non_negative_int, default=crawl.max_retries,
                   help="retries of a request after a transient fault")
    _add_no_wait(p)
    p.set_defaults(func=cmd_metadata)

    p = sub.add_parser("denormalize", help="per-user play files joined with profile and metadata")
    p.add_argument("--raw", type=Path, required=True)
    p.add_argument("--work", type=Path, required=True)
    _add_engine(p)
    _add_no_wait(p)
    p.set_defaults(func=cmd_denormalize)

    p = sub.add_parser("summarize", help="sessions, per-session summaries and splits")
    p.add_argument("--work", type=Path, required=True)
    session = config.SessionParams()
    p.add_argument("--split", choices=["chrono", "seed"], default=session.split)
    p.add_argument("--gap-minutes", type=_positive_float, default=session.gap_minutes)
    p.add_argument("--seed", type=int, default=session.seed)
    _add_engine(p)
    _add_no_wait(p)
    p.set_defaults(func=cmd_summarize)

    p = sub.add_parser("vocab", help="artist, track and country vocabularies fit on train")
    p.add_argument("--work", type=Path, required=True)
    _add_no_wait(p)
    _add_engine(p)
    p.set_defaults(func=cmd_vocab)

    p = sub.add_parser("session-data", help="per-play session rows for each split (final_dir)")
    p.add_argument("--work", type=Path, required=True)
    _add_no_wait(p)
    _add_engine(p)
    p.set_defaults(func=cmd_session_data)

    p = sub.add_parser("profiles", help="train-only user profiles for clustering")
    p.add_argument("--work", type=Path, required=True)
    cluster = config.ClusterParams()
    p.add_argument("--min-rows", type=int, default=cluster.min_rows)
    p.add_argument("--min-sessions", type=int, default=cluster.min_sessions)
    p.add_argument("--max-average-length", type=_positive_float,
                   default=cluster.max_average_length)
    _add_no_wait(p)
    _add_engine(p)
    p.set_defaults(func=cmd_profiles)

    p = sub.add_parser("in-session", help="predict the total length once a session has lasted "
                                          "10, 30 or 60 minutes")
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--raw", type=Path, default=None,
                   help="the raw data (its ground_truth/ gives the oracle)")
    p.add_argument("--seed", type=int, default=config.DEFAULT_SEED)
    _add_no_wait(p)
    p.set_defaults(func=cmd_in_session)

    p = sub.add_parser("run", help="execute every notebook in order (papermill)")
    p.add_argument("--raw", type=Path, default=None,
                   help="raw data dir (default: real data if present, else synthetic)")
    p.add_argument("--work", type=Path, default=None, help="WORK dir (default work/<scale>)")
    run = config.RunParams()
    p.add_argument("--scale", choices=list(config.SCALES), default=run.scale)
    p.add_argument("--seed", type=int, default=run.seed)
    p.add_argument("--engine", choices=["local", "spark"], default=run.engine)
    _add_mechanics(p)
    p.add_argument("--strict", action="store_true",
                   help="fail when the data is too small for a notebook instead of skipping it")
    _add_no_wait(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("report", help="rebuild WORK/results/report.md from experiments.csv")
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--raw", type=Path, default=None,
                   help="the raw data the results come from (named in the report)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("fake-api", help="serve track.getInfo from a catalog on loopback")
    p.add_argument("--catalog", type=Path, required=True, help="ground_truth/tracks.csv")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--seed", type=int, default=config.DEFAULT_SEED)
    for name in ("5xx", "rate-limit", "temporary", "operation-failed", "slow", "truncated",
                 "reset"):
        p.add_argument(f"--p-{name}", type=float, default=0.0,
                       help=f"probability of a {name} fault per request")
    p.add_argument("--slow-seconds", type=float, default=15.0)
    p.set_defaults(func=cmd_fake_api)
    return parser


def run_cli(func: Callable[[argparse.Namespace], None], args: argparse.Namespace) -> int:
    """Run a subcommand; user mistakes and OS errors become one line on stderr, never a trace."""
    try:
        func(args)
    except SessionlenError as exc:
        print(f"sessionlen {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        # A full disk, a read-only WORK, a missing path: the path, what happened, what to do.
        print(f"sessionlen {args.command}: error: {os_error_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sessionlen {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `sessionlen` console script."""
    args = build_parser().parse_args(argv)
    if getattr(args, "no_wait", False):
        from utils.core.work_lock import never_wait

        never_wait()
    return run_cli(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
