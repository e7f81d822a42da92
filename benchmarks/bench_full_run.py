"""The whole pipeline (`sessionlen run`), timed notebook by notebook, in one invocation.

Usage: python benchmarks/bench_full_run.py --work DIR [--scale tiny|demo|full] [--seed S]
           [--reuse] [--engine local|spark] [--json FILE]

Generates the synthetic dataset of --scale into WORK/raw (`sessionlen synth`, timed), or with
--reuse keeps the one already there when its manifest says it has that scale and seed; then
runs `sessionlen run --scale S --raw WORK/raw --work WORK/run` (WORK/run emptied first) as one
child process, and measures each notebook the runner executes:

    wall     from the runner's `running <notebook> ...` line to its `done in` (or `skipped`)
             line, as this script reads them from the runner's output;
    CPU      user + system time of the notebook's kernel and of every process under it, read
             from /proc every 0.2 s, the last reading before each process exits (so up to
             0.2 s of a process's last CPU can be missed);
    peak     the sum of the high-water marks (VmHWM) of the kernel and of each process under
             it that runs its own program (the Spark JVM), as bench_pipeline.py counts a step.

Papermill starts one kernel per notebook, a child of the runner: the n-th kernel seen is the
n-th notebook started. The runner itself (papermill, outside the kernels) is one more row; the
whole run's CPU is the child's rusage, which includes every kernel it waited for. Peaks of
notebooks are not summed (they run one after another): the whole run's peak is the largest
notebook's plus the runner's own. Exit status: 0 when the run finished, 1 when it or the data
generation failed, 2 for a bad argument.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench_pipeline import (
    GIB,
    OneLineParser,
    Sampler,
    child_env,
    child_pids,
    cli,
    command_line,
    descendant_pids,
    format_machine,
    machine_facts,
    run_child,
    synthetic_scale,
    vm_hwm_bytes,
)

from utils.core.columns import PLAYS_FILE
from utils.core.config import SCALES
from utils.core.errors import SessionlenError
from utils.core.stage_io import MANIFEST

KERNEL_MARK = b"ipykernel_launcher"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
NOTEBOOK_START = re.compile(r"^running (\S+) \.\.\.$")
NOTEBOOK_DONE = re.compile(r"^  done in [\d.]+ s$")
NOTEBOOK_SKIPPED = re.compile(r"^  skipped: ")


# ---------------------------------------------------------------------------------------------
# Reading /proc
# ---------------------------------------------------------------------------------------------

def parse_cpu_ticks(stat: str) -> int:
    """utime + stime (clock ticks) from the text of /proc/PID/stat.

    The command name (field 2) is in parentheses and may hold spaces, so fields are counted
    from the last ')': utime and stime are fields 14 and 15.
    """
    rest = stat[stat.rindex(")") + 2:].split()
    return int(rest[11]) + int(rest[12])


def cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) a live process has used so far; None once it is gone."""
    try:
        return parse_cpu_ticks(Path(f"/proc/{pid}/stat").read_text()) / CLOCK_TICKS
    except (OSError, ValueError, IndexError):
        return None


def all_descendants(pid: int) -> list[int]:
    """Every live descendant of a process, forked copies included (their CPU is their own)."""
    found, queue = [], child_pids(pid)
    while queue:
        kid = queue.pop()
        found.append(kid)
        queue += child_pids(kid)
    return found


@dataclass
class KernelUsage:
    """One notebook kernel's tree: the last CPU reading and the peak of each process."""

    pid: int
    first_seen_s: float
    cpu_s: dict[int, float] = field(default_factory=dict)
    peaks: dict[int, int] = field(default_factory=dict)

    @property
    def cpu_total_s(self) -> float:
        return sum(self.cpu_s.values())

    @property
    def peak_bytes(self) -> int:
        return sum(self.peaks.values())

    def sample(self) -> None:
        """Read CPU of the kernel and all it started, peaks of those running their own program."""
        for pid in [self.pid, *all_descendants(self.pid)]:
            seconds = cpu_seconds(pid)
            if seconds is not None:
                self.cpu_s[pid] = max(self.cpu_s.get(pid, 0.0), seconds)
        for pid in [self.pid, *descendant_pids(self.pid)]:
            self.peaks[pid] = max(self.peaks.get(pid, 0), vm_hwm_bytes(pid))


class KernelSampler(Sampler):
    """Finds each kernel the runner starts and samples its tree until stopped."""

    def __init__(self, runner_pid: int, started: float) -> None:
        super().__init__()
        self.runner_pid = runner_pid
        self.started = started
        self.runner_peak = 0
        self.kernels: list[KernelUsage] = []
        self._known: dict[int, KernelUsage] = {}

    def sample(self) -> None:
        self.runner_peak = max(self.runner_peak, vm_hwm_bytes(self.runner_pid))
        for kid in child_pids(self.runner_pid):
            if kid not in self._known and KERNEL_MARK in command_line(kid):
                usage = KernelUsage(kid, time.perf_counter() - self.started)
                self._known[kid] = usage
                self.kernels.append(usage)
        for usage in self.kernels:
            usage.sample()


# ---------------------------------------------------------------------------------------------
# Following the runner's output
# ---------------------------------------------------------------------------------------------

@dataclass
class NotebookTimes:
    """One notebook as the runner reported it: name, when it started and ended, how."""

    name: str
    start_s: float
    end_s: float | None = None
    status: str = "running"
    load_before: float = 0.0
    load_after: float = 0.0


def follow_line(line: str, notebooks: list[NotebookTimes], now_s: float) -> None:
    """Update the notebook list from one line of the runner's output (other lines pass)."""
    text = line.rstrip("\n")
    started = NOTEBOOK_START.match(text)
    if started:
        notebooks.append(NotebookTimes(started.group(1), now_s, load_before=os.getloadavg()[0]))
        return
    if not notebooks or notebooks[-1].end_s is not None:
        return
    for pattern, status in ((NOTEBOOK_DONE, "done"), (NOTEBOOK_SKIPPED, "skipped")):
        if pattern.match(text):
            notebooks[-1].end_s, notebooks[-1].status = now_s, status
            notebooks[-1].load_after = os.getloadavg()[0]


@dataclass
class RunMeasure:
    """The measured run: every notebook with its kernel's usage, and the whole child."""

    wall_s: float
    cpu_s: float
    runner_peak_bytes: int
    notebooks: list[dict[str, Any]]
    load_before: float
    load_after: float


def notebook_rows(notebooks: list[NotebookTimes], kernels: list[KernelUsage]
                  ) -> list[dict[str, Any]]:
    """One record per notebook: its times, and the usage of the kernel started for it."""
    rows = []
    for index, notebook in enumerate(notebooks):
        kernel = kernels[index] if index < len(kernels) else None
        wall = None if notebook.end_s is None else notebook.end_s - notebook.start_s
        rows.append({
            "notebook": notebook.name, "status": notebook.status, "wall_s": wall,
            "cpu_s": kernel.cpu_total_s if kernel else None,
            "peak_bytes": kernel.peak_bytes if kernel else None,
            "load_before": notebook.load_before, "load_after": notebook.load_after,
        })
    return rows


def measure_run(command: Sequence[str], log: Path, env: dict[str, str]) -> RunMeasure:
    """Run the pipeline, following its output; one-line error naming the log if it fails."""
    log.parent.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]
    notebooks: list[NotebookTimes] = []
    started = time.perf_counter()
    with open(log.with_suffix(".out"), "w") as out, open(log.with_suffix(".err"), "w") as err:
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, env=env,
                                 text=True, bufsize=1)
        try:
            with KernelSampler(child.pid, started) as sampler:
                assert child.stdout is not None
                for line in child.stdout:
                    out.write(line)
                    follow_line(line, notebooks, time.perf_counter() - started)
                    if NOTEBOOK_START.match(line.rstrip("\n")) or line.startswith("  "):
                        print(f"  {line.rstrip()}", flush=True)
                _, status, usage = os.wait4(child.pid, 0)
        except BaseException:
            child.kill()  # interrupted: leave no run behind us
            child.wait()
            raise
    wall = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        lines = log.with_suffix(".err").read_text(errors="replace").strip().splitlines()
        raise SessionlenError(f"sessionlen run failed with exit status {child.returncode}; "
                              f"{log.with_suffix('.err')}: {lines[-1] if lines else '(empty)'}")
    return RunMeasure(
        wall_s=wall, cpu_s=usage.ru_utime + usage.ru_stime, runner_peak_bytes=sampler.runner_peak,
        notebooks=notebook_rows(notebooks, sampler.kernels), load_before=load_before,
        load_after=os.getloadavg()[0])


# ---------------------------------------------------------------------------------------------
# The data
# ---------------------------------------------------------------------------------------------

def synthetic_seed(raw: Path) -> int | None:
    """The seed a synthetic raw dir was generated with (its manifest), None for other data."""
    manifest = raw / MANIFEST
    if not manifest.is_file():
        return None
    return json.loads(manifest.read_text()).get("synth", {}).get("parameters", {}).get("seed")


def check_reusable(raw: Path, scale: str, seed: int) -> None:
    """Fail with one line unless `raw` holds a synthetic dataset of this scale and seed."""
    if not (raw / PLAYS_FILE).is_file():
        raise SessionlenError(f"--reuse: {raw} holds no dataset; run once without --reuse")
    found = (synthetic_scale(raw), synthetic_seed(raw))
    if found != (scale, seed):
        raise SessionlenError(
            f"--reuse: {raw} holds scale {found[0]} seed {found[1]}, not scale {scale} seed "
            f"{seed}; run without --reuse to generate it")


def prepare_data(work: Path, scale: str, seed: int, reuse: bool, env: dict[str, str]
                 ) -> dict[str, Any] | None:
    """WORK/raw ready for the run; the generation's figures, None when reused."""
    raw = work / "raw"
    if reuse:
        check_reusable(raw, scale, seed)
        print(f"reusing the {scale} dataset (seed {seed}) in {raw}", flush=True)
        return None
    if raw.exists():
        shutil.rmtree(raw)
    print(f"generating the {scale} dataset (seed {seed}) in {raw}", flush=True)
    run = run_child(cli("synth", "--out", raw, "--scale", scale, "--seed", seed),
                    work / "logs" / "synth", env)
    return {"wall_s": run.seconds, "peak_bytes": run.peak_bytes,
            "load_before": run.load_before, "load_after": run.load_after}


# ---------------------------------------------------------------------------------------------
# The printout
# ---------------------------------------------------------------------------------------------

def _cell(value: float | None, scale: float = 1.0, digits: int = 1) -> str:
    """A number for the table, '-' when not measured."""
    return "-" if value is None else f"{value / scale:,.{digits}f}"


def format_table(measure: RunMeasure, synth: dict[str, Any] | None) -> str:
    """Per notebook: status, wall, CPU, CPU/wall, peak, load; then the runner and the totals."""
    header = (f"{'notebook':<44} {'status':<8} {'wall s':>8} {'CPU s':>8} {'CPU/wall':>8} "
              f"{'peak GiB':>9} {'load':>11}")
    lines = [header, "-" * len(header)]
    kernels_cpu = 0.0
    for row in measure.notebooks:
        wall, cpu = row["wall_s"], row["cpu_s"]
        kernels_cpu += cpu or 0.0
        ratio = cpu / wall if wall and cpu is not None else None
        lines.append(
            f"{row['notebook']:<44} {row['status']:<8} {_cell(wall):>8} {_cell(cpu):>8} "
            f"{_cell(ratio, digits=2):>8} {_cell(row['peak_bytes'], GIB, 2):>9} "
            f"{row['load_before']:>5.2f}->{row['load_after']:<5.2f}")
    notebooks_wall = sum(r["wall_s"] or 0.0 for r in measure.notebooks)
    lines += [
        f"{'runner (papermill, outside the kernels)':<44} {'':<8} "
        f"{_cell(measure.wall_s - notebooks_wall):>8} {_cell(measure.cpu_s - kernels_cpu):>8} "
        f"{'':>8} {_cell(measure.runner_peak_bytes, GIB, 2):>9}",
        "-" * len(header),
        f"{'whole run (sessionlen run)':<44} {'':<8} {_cell(measure.wall_s):>8} "
        f"{_cell(measure.cpu_s):>8} {_cell(measure.cpu_s / measure.wall_s, digits=2):>8} "
        f"{_cell(whole_run_peak(measure), GIB, 2):>9} "
        f"{measure.load_before:>5.2f}->{measure.load_after:<5.2f}",
    ]
    if synth:
        lines.append(
            f"{'data generation (sessionlen synth, apart)':<44} {'':<8} "
            f"{_cell(synth['wall_s']):>8} {'':>8} {'':>8} {_cell(synth['peak_bytes'], GIB, 2):>9} "
            f"{synth['load_before']:>5.2f}->{synth['load_after']:<5.2f}")
    return "\n".join(lines)


def format_facts(facts: dict[str, Any], raw: dict[str, Any]) -> str:
    """Machine, versions, load averages and the data."""
    return (format_machine(facts)
            + f"raw: {raw['path']} (synthetic, scale {raw['scale']}, seed {raw['seed']}, "
            f"{raw['plays_file_bytes'] / GIB:.2f} GiB plays file)")


def whole_run_peak(measure: RunMeasure) -> int:
    """The largest notebook's peak plus the runner's own (notebooks run one at a time)."""
    peaks = [r["peak_bytes"] or 0 for r in measure.notebooks]
    return max(peaks, default=0) + measure.runner_peak_bytes


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The benchmark's options; a bad one is a one-line error and exit status 2."""
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True,
                        help="scratch dir: raw/ (the data), run/ (emptied), logs/")
    parser.add_argument("--scale", choices=list(SCALES), default="full")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--reuse", action="store_true",
                        help="keep WORK/raw when it holds this scale and seed")
    parser.add_argument("--engine", choices=("local", "spark"), default="local")
    parser.add_argument("--json", type=Path, default=None, help="write every figure here")
    args = parser.parse_args(argv)
    if args.work.exists() and not args.work.is_dir():
        parser.error(f"--work {args.work}: not a directory")
    return args


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    """Prepare the data, run the pipeline, print and return every figure."""
    facts = machine_facts()
    work = args.work.resolve()
    env = child_env()
    synth = prepare_data(work, args.scale, args.seed, args.reuse, env)
    run_dir = work / "run"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    print(f"sessionlen run --scale {args.scale} --engine {args.engine}", flush=True)
    measure = measure_run(
        cli("run", "--scale", args.scale, "--seed", args.seed, "--engine", args.engine,
            "--raw", work / "raw", "--work", run_dir), work / "logs" / "run", env)
    facts["load_average_end"] = os.getloadavg()
    raw = work / "raw"
    raw_facts = {"path": str(raw), "scale": args.scale, "seed": args.seed,
                 "plays_file_bytes": (raw / PLAYS_FILE).stat().st_size}
    print()
    print(format_facts(facts, raw_facts))
    print(format_table(measure, synth))
    return {"machine": facts, "raw": raw_facts, "engine": args.engine, "synth": synth,
            "run": asdict(measure), "whole_run_peak_bytes": whole_run_peak(measure)}


def main(argv: Sequence[str] | None = None) -> int:
    """The whole benchmark."""
    args = parse_args(argv)
    try:
        figures = run_all(args)
    except SessionlenError as exc:
        print(f"bench_full_run: error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
