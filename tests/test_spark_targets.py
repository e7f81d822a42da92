"""Where the Spark engine runs: master and Spark Connect URLs, and unreachable ones refused fast."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from utils.cli import main
from utils.core.errors import SessionlenError
from utils.core.spark import check_reachable, endpoints, spark_url

SESSIONLEN = Path(sys.executable).with_name("sessionlen")
# Every stage with a Spark engine, with the arguments it needs besides the engine.
SPARK_STAGES = {
    "tracks": ["--raw", "{raw}", "--work", "{work}"],
    "denormalize": ["--raw", "{raw}", "--work", "{work}"],
    "summarize": ["--work", "{work}"],
    "vocab": ["--work", "{work}"],
    "session-data": ["--work", "{work}"],
    "profiles": ["--work", "{work}"],
}
# Well under Spark's own retries (minutes); a process start and a refused connection fit in it.
FAIL_FAST_S = 20.0


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_endpoints_of_each_kind_of_url() -> None:
    assert endpoints("sc://10.0.0.5:15010/;token=abc") == [("10.0.0.5", 15010)]
    assert endpoints("sc://spark.example") == [("spark.example", 15002)]
    assert endpoints("spark://a:7000,b") == [("a", 7000), ("b", 7077)]
    assert endpoints("local[2]") == endpoints("yarn") == []


def test_url_from_argument_then_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SPARK_REMOTE", raising=False)
    assert spark_url(None) == "local[*]"
    monkeypatch.setenv("SPARK_REMOTE", "sc://h:1")
    assert spark_url(None) == "sc://h:1"
    assert spark_url("spark://m:7077") == "spark://m:7077"


def test_unreachable_and_invalid_urls_are_named() -> None:
    port = closed_port()
    with pytest.raises(SessionlenError, match=rf"^sc://127.0.0.1:{port}: cannot reach the "
                                              r"Spark Connect server \(.*refused"):
        check_reachable(f"sc://127.0.0.1:{port}")
    with pytest.raises(SessionlenError, match=r"^spark://127.0.0.1:99999: not a valid Spark URL"):
        check_reachable("spark://127.0.0.1:99999")


def stage_args(stage: str, flag: list[str], tmp_path: Path) -> list[str]:
    """The command line of a stage on the Spark engine."""
    args = [a.format(raw=tmp_path / "raw", work=tmp_path / "work") for a in SPARK_STAGES[stage]]
    return [stage, *args, "--engine", "spark", *flag]


def run_stage(stage: str, flag: list[str], tmp_path: Path, env: dict[str, str] | None = None
              ) -> subprocess.CompletedProcess[str]:
    """Run a stage with the Spark engine as its own process."""
    return subprocess.run([str(SESSIONLEN), *stage_args(stage, flag, tmp_path)],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


@pytest.mark.parametrize("kind", ["--spark-master", "--spark-remote"])
@pytest.mark.parametrize("stage", list(SPARK_STAGES))
def test_stage_fails_fast_in_one_line_on_an_unreachable_url(
        stage: str, kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scheme = "spark" if kind == "--spark-master" else "sc"
    url = f"{scheme}://127.0.0.1:{closed_port()}"
    started = time.monotonic()
    status = main(stage_args(stage, [kind, url], tmp_path))
    assert time.monotonic() - started < FAIL_FAST_S
    err = capsys.readouterr().err
    assert status == 2
    assert err.count("\n") == 1
    assert err.startswith(f"sessionlen {stage}: error: {url}: cannot reach the Spark")
    # Nothing of the stage is written: at most the folder of WORK's stage locks.
    assert not [p for p in (tmp_path / "work").rglob("*") if ".locks" not in p.parts]


def test_spark_remote_from_the_environment(tmp_path: Path) -> None:
    url = f"sc://127.0.0.1:{closed_port()}"
    started = time.monotonic()
    done = run_stage("vocab", [], tmp_path, env={"SPARK_REMOTE": url})
    assert time.monotonic() - started < FAIL_FAST_S
    assert done.returncode == 2
    assert done.stderr == f"sessionlen vocab: error: {url}: cannot reach the Spark Connect " \
                          f"server (127.0.0.1:{url.rsplit(':', 1)[1]}: Connection refused)\n"


def test_remote_url_must_be_spark_connect(tmp_path: Path) -> None:
    done = run_stage("vocab", ["--spark-remote", "http://127.0.0.1:1"], tmp_path)
    assert done.returncode == 2
    assert "--spark-remote: must start with sc://" in done.stderr
    done = run_stage("vocab", ["--spark-remote", "sc://a:1", "--spark-master", "local[1]"],
                     tmp_path)
    assert done.returncode == 2 and "not allowed with argument" in done.stderr


def answer_like_http(server: socket.socket) -> None:
    """Answer every connection as a web server would, whatever it was sent."""
    while True:
        try:
            conn, _ = server.accept()
        except OSError:
            return
        with conn:
            conn.recv(4096)
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")


@pytest.mark.slow
def test_a_port_that_is_no_spark_master_fails_in_one_line() -> None:
    """A port that accepts connections but is no Spark master (a typo'd port, a proxy) passes
    the reachability check; Spark gives up after its registration retries (about a minute),
    and the session fails with one line naming the URL instead of a Java stack trace."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        url = f"spark://127.0.0.1:{server.getsockname()[1]}"
        threading.Thread(target=answer_like_http, args=(server,), daemon=True).start()
        done = subprocess.run(
            [sys.executable, "-c", "import sys; from utils.core.spark import get_spark; "
             "get_spark(sys.argv[1])", url],
            capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"utils.core.errors.SessionlenError: {url}: Spark could not start "
                           "a session ("), last
