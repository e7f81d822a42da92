"""bench_full_run.py's logic apart from timing: reading the runner's lines and /proc, the table,
the reuse check and its argument errors."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from utils.core.config import PROJECT_ROOT
from utils.core.errors import SessionlenError

GIB = 2**30


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    """benchmarks/bench_full_run.py as a module (it imports bench_pipeline beside it)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(PROJECT_ROOT / "benchmarks"))
        spec = importlib.util.spec_from_file_location(
            "bench_full_run", PROJECT_ROOT / "benchmarks" / "bench_full_run.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules["bench_full_run"] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    return module


def test_cpu_ticks_are_counted_after_a_command_name_with_spaces(bench: ModuleType) -> None:
    stat = "4242 (python3 -m x) S 1 2 3 4 5 6 7 8 9 10 150 25 0 0 20 0 1 0 100 0 0"
    assert bench.parse_cpu_ticks(stat) == 175


def test_this_process_has_used_cpu(bench: ModuleType) -> None:
    assert bench.cpu_seconds(os.getpid()) > 0
    assert bench.cpu_seconds(2**22 + 1) is None  # above the largest pid Linux hands out


def test_runner_lines_mark_each_notebook_start_and_end(bench: ModuleType) -> None:
    notebooks: list = []
    lines = [
        "raw data: /data\n",
        "running data_processing/1_get_unique_tracks ...\n",
        "[data_processing/1_get_unique_tracks] reading plays\n",
        "  done in 5.5 s\n",
        "running models_with_clusters/4_cluster_analysis ...\n",
        "  skipped: clustering needs at least 4 eligible users\n",
        "running models_with_clusters/5_train_and_test_model ...\n",
    ]
    for second, line in enumerate(lines):
        bench.follow_line(line, notebooks, float(second))
    assert [(n.name, n.status, n.start_s, n.end_s) for n in notebooks] == [
        ("data_processing/1_get_unique_tracks", "done", 1.0, 3.0),
        ("models_with_clusters/4_cluster_analysis", "skipped", 4.0, 5.0),
        ("models_with_clusters/5_train_and_test_model", "running", 6.0, None),
    ]
    kernel = bench.KernelUsage(pid=1, first_seen_s=1.1, cpu_s={1: 3.0, 7: 1.5},
                               peaks={1: GIB, 7: GIB // 2})
    rows = bench.notebook_rows(notebooks, [kernel])
    assert (rows[0]["wall_s"], rows[0]["cpu_s"], rows[0]["peak_bytes"]) == (2.0, 4.5, 1.5 * GIB)
    # A notebook whose kernel was never seen has no usage, and an unfinished one no wall time.
    assert (rows[1]["cpu_s"], rows[2]["wall_s"]) == (None, None)


def test_table_has_every_notebook_the_runner_and_the_totals(bench: ModuleType) -> None:
    row = {"notebook": "baseline/2_train_and_test_model", "status": "done", "wall_s": 100.0,
           "cpu_s": 150.0, "peak_bytes": 2 * GIB, "load_before": 2.0, "load_after": 3.0}
    skipped = {**row, "notebook": "models_with_clusters/5_train_and_test_model",
               "status": "skipped", "wall_s": 4.0, "cpu_s": None, "peak_bytes": None}
    measure = bench.RunMeasure(wall_s=110.0, cpu_s=160.0, runner_peak_bytes=GIB // 4,
                               notebooks=[row, skipped], load_before=2.0, load_after=3.0)
    table = bench.format_table(measure, {"wall_s": 9.0, "peak_bytes": GIB, "load_before": 1.0,
                                         "load_after": 1.5})
    lines = table.splitlines()
    assert lines[2].split() == ["baseline/2_train_and_test_model", "done", "100.0", "150.0",
                                "1.50", "2.00", "2.00->3.00"]
    assert lines[3].split()[1:5] == ["skipped", "4.0", "-", "-"]
    assert "6.0" in lines[4] and "10.0" in lines[4]  # the runner: wall and CPU left over
    assert lines[6].split()[4:8] == ["110.0", "160.0", "1.45", "2.25"]
    assert lines[7].startswith("data generation")
    assert bench.whole_run_peak(measure) == 2 * GIB + GIB // 4


def test_reuse_needs_the_same_scale_and_seed(bench: ModuleType, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    with pytest.raises(SessionlenError, match="holds no dataset"):
        bench.check_reusable(raw, "demo", 1)
    raw.mkdir()
    (raw / "userid-timestamp-artid-artname-traid-traname.tsv").write_text("")
    (raw / "_manifest.json").write_text(json.dumps(
        {"synth": {"parameters": {"scale": "tiny", "seed": 2}}}))
    with pytest.raises(SessionlenError, match="holds scale tiny seed 2, not scale demo seed 1"):
        bench.check_reusable(raw, "demo", 1)
    bench.check_reusable(raw, "tiny", 2)


def test_bad_arguments_are_one_line_errors(bench: ModuleType, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("")
    for argv in (["--work", str(a_file)], ["--work", str(tmp_path), "--scale", "huge"], []):
        with pytest.raises(SystemExit) as exit_info:
            bench.parse_args(argv)
        assert exit_info.value.code == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_the_sampler_finds_each_kernel_the_runner_starts(bench: ModuleType) -> None:
    # A stand-in runner: its child's command line carries the kernel launcher's name.
    script = ("import subprocess, sys; subprocess.run([sys.executable, '-c', "
              "'import time; time.sleep(1.5)', 'ipykernel_launcher'])")
    runner = subprocess.Popen([sys.executable, "-c", script])
    with bench.KernelSampler(runner.pid, started=0.0) as sampler:
        runner.wait(timeout=30)
    assert len(sampler.kernels) == 1
    kernel = sampler.kernels[0]
    assert kernel.peaks and max(kernel.peaks.values()) > 0 and sampler.runner_peak > 0
