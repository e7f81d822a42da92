"""The `sessionlen` console script: user mistakes are one line on stderr and a non-zero exit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def sessionlen(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the console script as a user would."""
    return subprocess.run([sys.executable, "-m", "utils.cli", *args], capture_output=True,
                          text=True, timeout=300, env=env)


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run", "--scale", "huge"], "invalid choice: 'huge'"),
        (["synth", "--out", "x", "--users", "0"], "--users"),
        (["metadata", "--work", "w", "--rate", "-1"], "--rate"),
        (["summarize", "--work", "w", "--split", "random"], "--split"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["tracks", "--raw", "r", "--work", "w", "--bogus", "1"], "unrecognized arguments"),
    ],
)
def test_usage_errors_are_one_line(args: list[str], needle: str) -> None:
    assert_one_line_error(sessionlen(*args), needle)


def test_run_with_a_missing_raw_dir_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    assert_one_line_error(sessionlen("run", "--raw", str(missing), "--work", str(tmp_path / "w"),
                                     "--scale", "tiny"), str(missing))
