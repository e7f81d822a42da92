"""Every pipeline stage and its peers, timed on the same raw files in one invocation.

Usage: python benchmarks/bench_pipeline.py (--raw DIR | --synth [--scale S]) --work DIR
           [--runs N] [--skip-spark] [--spark-runs N] [--spark-master URL]
           [--row-loop-plays N] [--seed S] [--json FILE]

Each run of each step is a `sessionlen` command (or, for a peer, this script in peer mode) in
its own child process, so its wall time includes start-up and its peak memory is its own:
    synth (with --synth), tracks, metadata (offline: LASTFM_API_KEY is removed from the child's
    environment), denormalize, summarize, vocab, session-data, profiles, with the local engine;
    raw -> summary_dir: the sum of tracks, metadata, denormalize and summarize in each run;
and the peers, on the same files:
    floor     one pyarrow read of the raw plays file into strings (quoting off), nothing else;
    DuckDB    the session rule and per-session summaries as SQL window functions over the same
              user_dir files (no files written; benchmarks/peers.py);
    row loop  the original pipeline's per-row session loop (DataFrame.iterrows) writing one
              summary CSV per user, on a seeded subset of users holding >= --row-loop-plays
              plays, scaled per play to every play (its in-process time is scaled, so the
              interpreter's start-up is not multiplied);
    Spark     our own spark engine (`--engine spark --spark-master URL`) for every stage it
              has: tracks, denormalize, summarize, vocab, session-data and profiles (metadata
              runs locally between them), and the start-up of a Spark session alone.
Runs of a step are N (--runs; Spark: --spark-runs, default 1 at full size); the median wall
time is quoted with min and max. WORK is scratch: its subfolders local/, spark/, synth/,
row_loop/ are deleted before every run that writes them; logs/ keeps every child's stdout and
stderr.

Peak memory of a run is the sum of the peaks of the child and of each descendant (the Spark
JVM and Spark's Python workers, which the child's ru_maxrss does not count): their VmHWM (the
kernel's high-water mark of each process) is read from /proc every 0.2 s while the child runs,
the last reading before a process exits being its peak (the JSON lists descendants' peaks per
command name). The child's ru_maxrss from os.wait4 (what `/usr/bin/time -v` reports) is not
used when a reading exists: Linux carries the spawning process's own peak across exec into it.
The sum of per-process peaks can overstate the tree's peak: members may peak at different
times, and forked Python workers share pages. Ratios are of median wall times.

Targets (for full size: 19.2M plays, on 2 cores): raw -> summary_dir <= 180 s and <= 8 GB
peak; summarize <= 1.5 x DuckDB; denormalize + summarize (raw plays to sessions, run after
run) <= 1.0 x DuckDB's sessions of the user_dir files, a query that starts from files
denormalize wrote; >= 50 x faster than the row loop; Spark local[2] <= 3 x the
local engine for tracks, denormalize and summarize (vocab, session-data and profiles are
reported with their ratio, without a target). Exit status: 0 when every step ran (met or
missed), 1 when one failed, 2 for a bad argument.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NoReturn, Self

from utils.core.columns import PLAYS_FILE, PROFILE_FILE
from utils.core.config import API_KEY_ENV, SessionParams, get_scale
from utils.core.errors import SessionlenError
from utils.core.stage_io import MANIFEST, require_stage
from utils.models_with_clusters.final_dir import PROFILES_STAGE, SESSION_DATA_STAGE

LOCAL_STAGES = ("tracks", "metadata", "denormalize", "summarize", "vocab", "session-data",
                "profiles")
END_TO_END = ("tracks", "metadata", "denormalize", "summarize")
SPARK_STAGES = ("tracks", "denormalize", "summarize", "vocab", "session-data", "profiles")
SPARK_TARGET_STAGES = ("tracks", "denormalize", "summarize")
SCALE_NAMES = ("tiny", "demo", "full")
SAMPLE_SECONDS = 0.2
GIB = 2**30
TARGET_E2E_S = 180.0
TARGET_PEAK_BYTES = 8e9
TARGET_VS_DUCKDB = 1.5
TARGET_PAIR_VS_DUCKDB = 1.0
# Raw plays -> user_dir -> sessions, against DuckDB's sessions of user_dir alone.
PAIR_VS_DUCKDB = ("denormalize", "summarize")
DENORMALIZE_SUMMARIZE = "denormalize + summarize"
TARGET_VS_ROW_LOOP = 50.0
TARGET_SPARK_VS_LOCAL = 3.0


# ---------------------------------------------------------------------------------------------
# Peer mode: what a peer child process runs (this script with --peer NAME ARGS...)
# ---------------------------------------------------------------------------------------------

def peer_floor(plays: str) -> dict[str, Any]:
    """Read the raw plays file into Arrow strings and nothing else."""
    from peers import read_arrow_floor

    started = time.perf_counter()
    rows = read_arrow_floor(Path(plays))
    return {"rows": rows, "seconds": time.perf_counter() - started}


def peer_duckdb(user_dir: str) -> dict[str, Any]:
    """DuckDB's sessions of every user_dir file (the file listing is not timed)."""
    from peers import duckdb_sessions

    from utils.baseline.user_plays import user_files

    files = [p for paths in user_files(Path(user_dir)).values() for p in paths]
    started = time.perf_counter()
    table = duckdb_sessions(files, SessionParams().gap_minutes)
    return {"seconds": time.perf_counter() - started, "sessions": len(table),
            "plays": int(table["plays"].sum())}


def peer_row_loop(user_dir: str, out: str, min_plays: str, seed: str) -> dict[str, Any]:
    """The row loop on a seeded subset of users (choosing and counting them is not timed)."""
    from peers import choose_users, row_loop_summaries

    from utils.baseline.user_plays import user_files

    users, plays = choose_users(user_files(Path(user_dir)), int(min_plays), int(seed))
    started = time.perf_counter()
    result = row_loop_summaries(users, Path(out), SessionParams().gap_minutes)
    return {"seconds": time.perf_counter() - started, "plays": plays, **result}


def peer_spark_startup(master: str) -> dict[str, Any]:
    """Start the project's Spark session and stop it: the fixed cost of a Spark command."""
    from utils.data_processing.spark_stages import spark_session

    started = time.perf_counter()
    spark_session(master).stop()
    return {"seconds": time.perf_counter() - started}


PEERS: dict[str, Callable[..., dict[str, Any]]] = {
    "floor": peer_floor, "duckdb": peer_duckdb, "row-loop": peer_row_loop,
    "spark-startup": peer_spark_startup,
}


# ---------------------------------------------------------------------------------------------
# Measuring one child process
# ---------------------------------------------------------------------------------------------

def vm_hwm_bytes(pid: int) -> int:
    """Peak resident memory (VmHWM) of a live process, 0 once it is gone or a zombie."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    line = next((s for s in status.splitlines() if s.startswith("VmHWM:")), "VmHWM: 0 kB")
    return int(line.split()[1]) * 1024


def child_pids(pid: int) -> list[int]:
    """Live children of a process (each thread lists the children it started)."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return []
    kids: list[int] = []
    for task in tasks:
        try:
            kids += [int(k) for k in (task / "children").read_text().split()]
        except OSError:
            continue
    return kids


def command_line(pid: int) -> bytes:
    """The raw command line of a process, b'' once it is gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def descendant_pids(pid: int) -> list[int]:
    """Every live descendant of a process that runs a program of its own.

    A child that has not exec'd yet (a stage starting `git`, a worker PySpark's daemon forks)
    still shows its parent's memory and high-water mark: counting it would count the parent
    twice, so it is skipped while its command line is its parent's.
    """
    found, queue = [], [(kid, pid) for kid in child_pids(pid)]
    while queue:
        kid, parent = queue.pop()
        if command_line(kid) != command_line(parent):
            found.append(kid)
        queue += [(grandchild, kid) for grandchild in child_pids(kid)]
    return found


def process_name(pid: int) -> str:
    """The command name of a process (`java`, `python`), '?' once it is gone."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


class Sampler:
    """Calls `sample` on a thread every SAMPLE_SECONDS while the `with` block runs."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def sample(self) -> None:
        raise NotImplementedError

    def _loop(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(SAMPLE_SECONDS):
                return

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class DescendantPeaks(Sampler):
    """Reads the VmHWM of `pid` and of its descendants from /proc until stopped; keeps peaks."""

    def __init__(self, pid: int) -> None:
        super().__init__()
        self.pid = pid
        self.own = 0
        self.peaks: dict[int, int] = {}
        self.names: dict[int, str] = {}

    def sample(self) -> None:
        self.own = max(self.own, vm_hwm_bytes(self.pid))
        for kid in descendant_pids(self.pid):
            # Read every time: Spark's launcher script becomes the JVM by exec.
            name = process_name(kid)
            if name != "?" or kid not in self.names:
                self.names[kid] = name
            self.peaks[kid] = max(self.peaks.get(kid, 0), vm_hwm_bytes(kid))

    def by_name(self) -> dict[str, int]:
        """Summed peaks per command name (the JVM apart from Python workers)."""
        totals: dict[str, int] = {}
        for kid, peak in self.peaks.items():
            if peak:
                totals[self.names[kid]] = totals.get(self.names[kid], 0) + peak
        return totals


@dataclass
class Run:
    """One measured child process; descendants: summed peak bytes per command name."""

    seconds: float
    peak_bytes: int
    own_peak_bytes: int
    descendants: dict[str, int]
    load_before: float
    load_after: float
    report: dict[str, Any] = field(default_factory=dict)


def run_child(command: Sequence[str], log: Path, env: dict[str, str]) -> Run:
    """Run `command`, stdout/stderr to log.out/.err; wall time, tree peak memory, load average."""
    log.parent.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]
    with open(log.with_suffix(".out"), "w") as out, open(log.with_suffix(".err"), "w") as err:
        started = time.perf_counter()
        child = subprocess.Popen(command, stdout=out, stderr=err, env=env)
        try:
            with DescendantPeaks(child.pid) as tree:
                _, status, usage = os.wait4(child.pid, 0)
        except BaseException:
            child.kill()  # interrupted: leave no step running behind us
            child.wait()
            raise
        seconds = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        lines = log.with_suffix(".err").read_text(errors="replace").strip().splitlines()
        raise SessionlenError(f"{log.name} failed with exit status {child.returncode}; "
                              f"{log.with_suffix('.err')}: {lines[-1] if lines else '(empty)'}")
    return Run(seconds=seconds, peak_bytes=tree_peak(usage.ru_maxrss * 1024, tree),
               own_peak_bytes=tree.own, descendants=tree.by_name(), load_before=load_before,
               load_after=os.getloadavg()[0], report=last_json_line(log.with_suffix(".out")))


def tree_peak(maxrss: int, tree: DescendantPeaks) -> int:
    """Peak bytes of a child and its descendants: the sum of their sampled high-water marks.

    The child's own mark comes from /proc, not ru_maxrss: Linux carries the spawning process's
    peak across exec into ru_maxrss, so a child of a large process would inherit its size.
    ru_maxrss is only the fallback for a child that exited before the first reading.
    """
    return (tree.own or maxrss) + sum(tree.peaks.values())


def last_json_line(path: Path) -> dict[str, Any]:
    """The JSON object a peer child prints last, {} for a stage's ordinary output."""
    lines = path.read_text(errors="replace").strip().splitlines()
    if not lines or not lines[-1].startswith("{"):
        return {}
    try:
        return json.loads(lines[-1])
    except json.JSONDecodeError:
        return {}


# ---------------------------------------------------------------------------------------------
# The steps
# ---------------------------------------------------------------------------------------------

@dataclass
class Step:
    """Every run of one step, with the figures the table quotes."""

    name: str
    engine: str
    runs: list[Run] = field(default_factory=list)

    @property
    def median_s(self) -> float:
        return statistics.median(r.seconds for r in self.runs)

    @property
    def peak_bytes(self) -> int:
        return max(r.peak_bytes for r in self.runs)

    def summary(self) -> dict[str, Any]:
        """The step as JSON: every run, then median, min, max and peak."""
        seconds = [r.seconds for r in self.runs]
        return {"name": self.name, "engine": self.engine, "runs": [asdict(r) for r in self.runs],
                "median_s": self.median_s, "min_s": min(seconds), "max_s": max(seconds),
                "peak_bytes": self.peak_bytes}


@dataclass
class Bench:
    """Where everything runs and what was measured."""

    raw: Path
    work: Path
    scale: str | None
    runs: int
    env: dict[str, str]
    steps: dict[str, Step] = field(default_factory=dict)

    def measure(self, key: str, name: str, engine: str, command: Sequence[str],
                run: int) -> Run:
        """Run one child for step `key`, record it, and say so on one line."""
        step = self.steps.setdefault(key, Step(name, engine))
        log = self.work / "logs" / f"{key.replace('/', '-')}-{run}"
        measured = run_child(command, log, self.env)
        step.runs.append(measured)
        print(f"  {key} run {run}: {measured.seconds:.2f} s, "
              f"peak {measured.peak_bytes / GIB:.2f} GiB, "
              f"load {measured.load_before:.2f} -> {measured.load_after:.2f}", flush=True)
        return measured


def fresh(path: Path) -> Path:
    """An empty directory at `path` (a scratch folder of WORK)."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def cli(*args: object) -> list[str]:
    """A `sessionlen` command run by this interpreter."""
    return [sys.executable, "-m", "utils.cli", *map(str, args)]


def peer(name: str, *args: object) -> list[str]:
    """This script in peer mode."""
    return [sys.executable, str(Path(__file__).resolve()), "--peer", name, *map(str, args)]


def stage_command(stage: str, bench: Bench, work: Path,
                  engine: tuple[str, str] | None = None) -> list[str]:
    """The `sessionlen` command of one stage on `work`; engine = (name, master) for Spark."""
    args: list[object] = [stage, "--work", work]
    if stage in ("tracks", "denormalize"):
        args += ["--raw", bench.raw]
    if stage == "profiles" and bench.scale:
        # As `sessionlen run` does: the eligibility thresholds of the data's scale.
        scale = get_scale(bench.scale)
        args += ["--min-rows", scale.min_rows, "--min-sessions", scale.min_sessions]
    if engine:
        args += ["--engine", engine[0], "--spark-master", engine[1]]
    return cli(*args)


def run_synth(bench: Bench, scale: str, seed: int) -> None:
    """Generate the dataset N times into WORK/synth; the last one is the raw data."""
    print(f"synth --scale {scale} ({bench.runs} runs)", flush=True)
    for run in range(1, bench.runs + 1):
        fresh(bench.work / "synth")
        bench.measure("local/synth", "synth", "local",
                      cli("synth", "--out", bench.raw, "--scale", scale, "--seed", seed), run)


def run_local(bench: Bench) -> None:
    """Every stage with the local engine, N times, each run in a fresh WORK/local."""
    print(f"local engine ({bench.runs} runs)", flush=True)
    for run in range(1, bench.runs + 1):
        work = fresh(bench.work / "local")
        for stage in LOCAL_STAGES:
            measured = bench.measure(f"local/{stage}", stage, "local",
                                     stage_command(stage, bench, work), run)
            if stage == "summarize":
                # The stage's own clock for its compute, the part DuckDB's query also does.
                entry = stage_entry(work, "summary_dir", "summarize")
                measured.report = {"sessions_s": entry["timings_s"]["sessions"]}


def run_peers(bench: Bench, min_plays: int, seed: int) -> None:
    """The floor, DuckDB and the row loop, N times each, on the local run's files."""
    user_dir = bench.work / "local" / "user_dir"
    print(f"peers ({bench.runs} runs)", flush=True)
    for run in range(1, bench.runs + 1):
        bench.measure("peer/floor", "read raw plays into Arrow", "pyarrow",
                      peer("floor", bench.raw / PLAYS_FILE), run)
        bench.measure("peer/duckdb", "sessions + summaries in SQL", "DuckDB",
                      peer("duckdb", user_dir), run)
        out = fresh(bench.work / "row_loop")
        bench.measure("peer/row-loop", "row loop (subset)", "Python",
                      peer("row-loop", user_dir, out, min_plays, seed), run)


def run_spark(bench: Bench, master: str, runs: int) -> None:
    """Spark start-up, then every stage in a fresh WORK/spark: Spark's where it has one."""
    print(f"Spark {master} ({runs} runs)", flush=True)
    for run in range(1, runs + 1):
        bench.measure("spark/start-up", "Spark session start-up", "spark",
                      peer("spark-startup", master), run)
        work = fresh(bench.work / "spark")
        for stage in LOCAL_STAGES:
            engine = ("spark", master) if stage in SPARK_STAGES else None
            bench.measure(f"spark/{stage}", stage, "spark" if engine else "local",
                          stage_command(stage, bench, work, engine), run)


# ---------------------------------------------------------------------------------------------
# Figures: counts, ratios, targets
# ---------------------------------------------------------------------------------------------

def stage_entry(work: Path, folder: str, stage: str) -> dict[str, Any]:
    """The manifest entry of a stage in `work`."""
    return require_stage(work / folder, stage)


def stage_counts(work: Path) -> dict[str, int]:
    """Tracks, plays, sessions, final_dir rows and eligible profiles written by one WORK's
    stages."""
    summary = stage_entry(work, "summary_dir", "summarize")
    return {
        "tracks": stage_entry(work, "tracks", "metadata")["rows_out"],
        "plays": stage_entry(work, "user_dir", "denormalize")["rows_out"],
        "sessions": sum(summary["parameters"]["sessions_per_split"].values()),
        "final_rows": stage_entry(work, "final_dir", SESSION_DATA_STAGE)["rows_out"],
        "profiles": stage_entry(work, "final_dir", PROFILES_STAGE)["rows_out"],
    }


def end_to_end(bench: Bench) -> Step:
    """raw -> summary_dir per run: summed times, the largest peak, load from first to last."""
    return summed_step(bench, "raw -> summary_dir", END_TO_END)


def summed_step(bench: Bench, name: str, stages: Sequence[str]) -> Step:
    """Local `stages` run after run: summed times, the largest peak, load first to last."""
    parts = [bench.steps[f"local/{stage}"].runs for stage in stages]
    step = Step(name, "local")
    for runs in zip(*parts, strict=True):
        step.runs.append(Run(
            seconds=sum(r.seconds for r in runs), peak_bytes=max(r.peak_bytes for r in runs),
            own_peak_bytes=max(r.own_peak_bytes for r in runs),
            descendants={},
            load_before=runs[0].load_before, load_after=runs[-1].load_after))
    return step


def row_loop_figures(bench: Bench, plays: int) -> dict[str, Any]:
    """The row loop's subset, its in-process time, and that time scaled per play to `plays`."""
    runs = bench.steps["peer/row-loop"].runs
    loop_s = statistics.median(r.report["seconds"] for r in runs)
    subset = runs[0].report
    return {"subset_plays": subset["plays"], "subset_users": subset["users"],
            "subset_sessions": subset["sessions"], "median_loop_s": loop_s,
            "all_plays": plays, "scaled_s": loop_s / subset["plays"] * plays,
            "scaled": subset["plays"] < plays}


def ratio_figures(bench: Bench, counts: dict[str, int], spark: bool) -> dict[str, Any]:
    """Every ratio the table and the targets quote (medians of wall times)."""
    s = {key: step.median_s for key, step in bench.steps.items()}
    summarize_compute = statistics.median(
        r.report["sessions_s"] for r in bench.steps["local/summarize"].runs)
    duck_query = statistics.median(r.report["seconds"] for r in bench.steps["peer/duckdb"].runs)
    ratios: dict[str, Any] = {
        "tracks_vs_floor": s["local/tracks"] / s["peer/floor"],
        "denormalize_vs_floor": s["local/denormalize"] / s["peer/floor"],
        "summarize_vs_duckdb": s["local/summarize"] / s["peer/duckdb"],
        "denormalize_plus_summarize_vs_duckdb":
            summed_step(bench, DENORMALIZE_SUMMARIZE, PAIR_VS_DUCKDB).median_s
            / s["peer/duckdb"],
        "summarize_compute_vs_duckdb_query": summarize_compute / duck_query,
    }
    loop = row_loop_figures(bench, counts["plays"])
    ratios["row_loop_vs_summarize"] = loop["scaled_s"] / s["local/summarize"]
    if spark:
        for stage in SPARK_STAGES:
            ratios[f"spark_{stage}_vs_local"] = s[f"spark/{stage}"] / s[f"local/{stage}"]
            ratios[f"spark_{stage}_less_start_up_vs_local"] = (
                (s[f"spark/{stage}"] - s["spark/start-up"]) / s[f"local/{stage}"])
    return {"ratios": ratios, "row_loop": loop}


def targets(e2e: Step, ratios: dict[str, Any], spark: bool) -> list[dict[str, Any]]:
    """Each target: the figure, the limit, met or not (None when not measured)."""
    rows = [
        ("raw -> summary_dir wall (s)", e2e.median_s, f"<= {TARGET_E2E_S:.0f}",
         e2e.median_s <= TARGET_E2E_S),
        ("raw -> summary_dir peak (GB)", e2e.peak_bytes / 1e9, f"<= {TARGET_PEAK_BYTES / 1e9:.0f}",
         e2e.peak_bytes <= TARGET_PEAK_BYTES),
        ("summarize / DuckDB", ratios["summarize_vs_duckdb"], f"<= {TARGET_VS_DUCKDB}",
         ratios["summarize_vs_duckdb"] <= TARGET_VS_DUCKDB),
        ("denormalize+summarize / DuckDB", ratios["denormalize_plus_summarize_vs_duckdb"],
         f"<= {TARGET_PAIR_VS_DUCKDB}",
         ratios["denormalize_plus_summarize_vs_duckdb"] <= TARGET_PAIR_VS_DUCKDB),
        ("row loop (scaled) / summarize", ratios["row_loop_vs_summarize"],
         f">= {TARGET_VS_ROW_LOOP:.0f}", ratios["row_loop_vs_summarize"] >= TARGET_VS_ROW_LOOP),
    ]
    for stage in SPARK_TARGET_STAGES:
        value = ratios.get(f"spark_{stage}_vs_local")
        rows.append((f"Spark / local, {stage}", value, f"<= {TARGET_SPARK_VS_LOCAL:.0f}",
                     None if not spark else value <= TARGET_SPARK_VS_LOCAL))
    return [{"target": t, "value": v, "limit": lim, "met": met} for t, v, lim, met in rows]


# ---------------------------------------------------------------------------------------------
# Machine facts and the printout
# ---------------------------------------------------------------------------------------------

def java_version() -> str:
    """First line of `java -version`, or why there is none."""
    try:
        done = subprocess.run(["java", "-version"], capture_output=True, text=True, check=False)
    except OSError:
        return "not found"
    return (done.stderr or done.stdout).strip().splitlines()[0] if done.returncode == 0 else "?"


def machine_facts() -> dict[str, Any]:
    """Cores, CPU, RAM, Python, Java and library versions, load average now."""
    from importlib.metadata import PackageNotFoundError, version

    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
                  if line.startswith("model name")), platform.processor())
    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else ""
    ram_kib = next((int(line.split()[1]) for line in meminfo.splitlines()
                    if line.startswith("MemTotal:")), 0)
    libraries = {}
    for name in ("pandas", "pyarrow", "numpy", "duckdb", "pyspark"):
        try:
            libraries[name] = version(name)
        except PackageNotFoundError:
            libraries[name] = "not installed"
    return {"cores": os.cpu_count(), "cpu": model, "ram_gib": round(ram_kib / 2**20, 1),
            "python": platform.python_version(), "java": java_version(),
            "platform": platform.platform(), "libraries": libraries,
            "load_average_start": os.getloadavg()}


def compared_with(key: str, figures: dict[str, Any]) -> str:
    """The 'compared with' cell of one table row."""
    r, loop = figures["ratios"], figures["row_loop"]
    cells = {
        "local/tracks": f"{r['tracks_vs_floor']:.1f}x floor",
        "local/denormalize": f"{r['denormalize_vs_floor']:.1f}x floor",
        "local/summarize": (f"{r['summarize_vs_duckdb']:.2f}x DuckDB; row loop "
                            f"{r['row_loop_vs_summarize']:.0f}x slower"),
        "peer/row-loop": (f"{loop['subset_plays']:,} plays of {loop['subset_users']} users; "
                          f"scaled: {loop['scaled_s']:,.0f} s"),
    }
    if "spark_tracks_vs_local" in r:
        for stage in SPARK_STAGES:
            cells[f"spark/{stage}"] = (
                f"{r[f'spark_{stage}_vs_local']:.1f}x local "
                f"({r[f'spark_{stage}_less_start_up_vs_local']:.1f}x less start-up)"
                + ("" if stage in SPARK_TARGET_STAGES else "; no target"))
    return cells.get(key, "")


def format_row(label: str, step: Step, note: str) -> str:
    """One line of the table."""
    seconds = [r.seconds for r in step.runs]
    load = f"{step.runs[0].load_before:.2f}->{step.runs[-1].load_after:.2f}"
    return (f"{label:<34} {step.engine:<8} {len(step.runs):>4} {step.median_s:>9.2f} "
            f"{min(seconds):>8.2f} {max(seconds):>8.2f} {step.peak_bytes / GIB:>9.2f} "
            f"{load:>11}  {note}")


def format_table(bench: Bench, e2e: Step, figures: dict[str, Any]) -> str:
    """Every step: runs, median/min/max seconds, peak GiB, load, comparison with peers."""
    lines = [f"{'step':<34} {'engine':<8} {'runs':>4} {'median s':>9} {'min s':>8} "
             f"{'max s':>8} {'peak GiB':>9} {'load':>11}  compared with", "-" * 118]
    for key, step in bench.steps.items():
        group = key.split("/")[0]
        label = f"{group}: {step.name}" if group != "local" else step.name
        lines.append(format_row(label, step, compared_with(key, figures)))
        if key == "local/profiles":
            lines.append(format_row(e2e.name, e2e, "tracks + metadata + denormalize + "
                                                   "summarize, per run"))
            pair = summed_step(bench, DENORMALIZE_SUMMARIZE, PAIR_VS_DUCKDB)
            lines.append(format_row(pair.name, pair, (
                f"{figures['ratios']['denormalize_plus_summarize_vs_duckdb']:.2f}x DuckDB "
                "(which reads user_dir: no raw read, join or writes)")))
    return "\n".join(lines)


def format_targets(rows: list[dict[str, Any]], full_size: bool) -> str:
    """The targets with met / missed."""
    lines = ["targets" + ("" if full_size else " (set for full size; this is a smaller run)")]
    for row in rows:
        value = "not measured" if row["value"] is None else f"{row['value']:,.2f}"
        verdict = {True: "met", False: "MISSED", None: "not measured"}[row["met"]]
        lines.append(f"  {row['target']:<32} {value:>14} {row['limit']:>8}  {verdict}")
    return "\n".join(lines)


def format_machine(facts: dict[str, Any]) -> str:
    """Hardware, versions and load averages, ending with a newline."""
    libs = ", ".join(f"{k} {v}" for k, v in facts["libraries"].items())
    loads = [", ".join(f"{x:.2f}" for x in facts[k])
             for k in ("load_average_start", "load_average_end")]
    return (f"machine: {facts['cores']} cores ({facts['cpu']}), {facts['ram_gib']} GiB RAM, "
            f"Python {facts['python']}, Java: {facts['java']}\n  {libs}\n"
            f"  load average (1, 5, 15 min): {loads[0]} at the start, {loads[1]} at the end\n")


def format_facts(facts: dict[str, Any], raw: dict[str, Any]) -> str:
    """Machine and data facts: hardware, versions, load averages, the data."""
    return (format_machine(facts) + f"raw: {raw['path']} (scale {raw['scale'] or 'not synthetic'}, "
            f"{raw['plays_file_bytes'] / GIB:.2f} GiB plays file), "
            f"{raw['plays']:,} plays, {raw['tracks']:,} tracks, {raw['sessions']:,} sessions")


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------

def synthetic_scale(raw: Path) -> str | None:
    """The scale a synthetic raw dir was generated at (its manifest), None for other data."""
    manifest = raw / MANIFEST
    if not manifest.is_file():
        return None
    return json.loads(manifest.read_text()).get("synth", {}).get("parameters", {}).get("scale")


def child_env() -> dict[str, str]:
    """This environment without the API key, so metadata runs offline in every run."""
    env = dict(os.environ)
    env.pop(API_KEY_ENV, None)
    return env


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line (the usage is one `--help` away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The benchmark's options; a bad one is a one-line error and exit status 2."""
    parser = OneLineParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--raw", type=Path, help="raw dir in the Last.fm 1K format")
    source.add_argument("--synth", action="store_true",
                        help="generate the raw data into WORK/synth, timing it")
    parser.add_argument("--scale", choices=SCALE_NAMES, default="full", help="with --synth")
    parser.add_argument("--work", type=Path, required=True, help="scratch dir, reused per run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--skip-spark", action="store_true")
    parser.add_argument("--spark-runs", type=int, default=None,
                        help="default: 1 at full size, else --runs")
    parser.add_argument("--spark-master", default="local[2]")
    parser.add_argument("--row-loop-plays", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=1, help="synth seed and row-loop subset")
    parser.add_argument("--json", type=Path, default=None, help="write every figure here")
    args = parser.parse_args(argv)
    for name in ("runs", "spark_runs", "row_loop_plays"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if args.raw is not None:
        for name in (PLAYS_FILE, PROFILE_FILE):
            if not (args.raw / name).is_file():
                parser.error(f"--raw {args.raw}: no {name} in it")
    return args


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    """Run every step, then compute, print and return every figure."""
    facts = machine_facts()
    work = args.work.resolve()
    raw = (work / "synth") if args.synth else args.raw.resolve()
    scale = args.scale if args.synth else synthetic_scale(raw)
    bench = Bench(raw=raw, work=work, scale=scale, runs=args.runs, env=child_env())
    full_size = scale in ("full", None)
    if args.synth:
        run_synth(bench, args.scale, args.seed)
    run_local(bench)
    run_peers(bench, args.row_loop_plays, args.seed)
    counts = stage_counts(work / "local")
    spark_runs = args.spark_runs or (1 if full_size else args.runs)
    spark_error = None
    if not args.skip_spark:
        try:
            run_spark(bench, args.spark_master, spark_runs)
        except SessionlenError as exc:
            # The local figures stand without Spark: report them, and the failure.
            spark_error = str(exc)
    spark = not args.skip_spark and spark_error is None
    facts["load_average_end"] = os.getloadavg()
    e2e = end_to_end(bench)
    figures = ratio_figures(bench, counts, spark)
    checks = same_work(bench, counts, spark)
    checks["spark_error"] = spark_error
    goals = targets(e2e, figures["ratios"], spark)
    raw_facts = {"path": str(raw), "scale": scale, **counts,
                 "plays_file_bytes": (raw / PLAYS_FILE).stat().st_size}
    print()
    print(format_facts(facts, raw_facts))
    print(format_table(bench, e2e, figures))
    print(format_notes(figures, checks, args.spark_master))
    print(format_targets(goals, full_size))
    return {"machine": facts, "raw": raw_facts, "runs": args.runs,
            "spark_runs": None if args.skip_spark else spark_runs,
            "spark_master": args.spark_master,
            "steps": {key: step.summary() for key, step in bench.steps.items()},
            "end_to_end": e2e.summary(), **figures, "checks": checks, "targets": goals}


def same_work(bench: Bench, counts: dict[str, int], spark: bool) -> dict[str, Any]:
    """Whether the peers and Spark saw the plays and found the sessions the local engine did."""
    duck = bench.steps["peer/duckdb"].runs[0].report
    floor = bench.steps["peer/floor"].runs[0].report
    checks: dict[str, Any] = {
        "floor_rows": floor["rows"],
        "duckdb_same_sessions": duck["sessions"] == counts["sessions"]
        and duck["plays"] == counts["plays"],
    }
    if spark:
        checks["spark_same_counts"] = stage_counts(bench.work / "spark") == counts
    return checks


def format_notes(figures: dict[str, Any], checks: dict[str, Any], master: str) -> str:
    """What the table's peers did and whether they did the same work."""
    loop, r = figures["row_loop"], figures["ratios"]
    lines = [
        f"floor read {checks['floor_rows']:,} raw lines.",
        f"DuckDB found the same sessions and plays as summarize: "
        f"{'yes' if checks['duckdb_same_sessions'] else 'NO'}; summarize's in-process "
        f"sessions compute / DuckDB's query: {r['summarize_compute_vs_duckdb_query']:.2f}x.",
        (f"row loop: {loop['subset_plays']:,} plays of {loop['subset_users']} users "
         f"({loop['subset_sessions']:,} sessions) in {loop['median_loop_s']:.2f} s in-process "
         + (f"(median); SCALED per play to {loop['all_plays']:,} plays: "
            f"{loop['scaled_s']:,.1f} s." if loop["scaled"] else "(all users; not scaled).")),
    ]
    if "spark_same_counts" in checks:
        lines.append(f"Spark {master} wrote the same tracks, plays, sessions, final_dir rows "
                     f"and profiles counts as the local engine: "
                     f"{'yes' if checks['spark_same_counts'] else 'NO'}.")
    if checks["spark_error"]:
        lines.append(f"Spark {master} FAILED, its ratios are not measured: "
                     f"{checks['spark_error']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Peer mode (a child), or the whole benchmark."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--peer"]:
        print(json.dumps(PEERS[argv[1]](*argv[2:])), flush=True)
        # Leave without interpreter teardown: Arrow's thread pool can abort the process there
        # after the work is done (apache/arrow#34314), which would fail a finished run.
        os._exit(0)
    args = parse_args(argv)
    try:
        figures = run_all(args)
    except SessionlenError as exc:
        print(f"bench_pipeline: error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")
        print(f"figures written to {args.json}")
    return 1 if figures["checks"]["spark_error"] else 0


if __name__ == "__main__":
    sys.exit(main())
