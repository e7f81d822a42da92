"""The Spark engine on a real standalone cluster, and through a real Spark Connect server.

The fixtures start the Spark that PySpark ships, on loopback only: a master and two workers of
one core each, and a Spark Connect server whose jobs run on that cluster. Each is stopped by its
process id however the tests end. The pipeline runs as a user runs it, one `sessionlen` process
per stage, and every output file must be byte-identical to the local engine's.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from utils.core.stage_io import MANIFEST

pytestmark = [pytest.mark.slow, pytest.mark.spark]

LOOPBACK = "127.0.0.1"
SESSIONLEN = Path(sys.executable).with_name("sessionlen")
START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 20.0
WORKERS = 2
WORKER_MEMORY = "1g"
# The stages in pipeline order, with their arguments; metadata has no Spark engine.
STAGES = [
    ("tracks", ["--raw", "{raw}", "--work", "{work}"]),
    ("metadata", ["--work", "{work}"]),
    ("denormalize", ["--raw", "{raw}", "--work", "{work}"]),
    ("summarize", ["--work", "{work}"]),
    ("vocab", ["--work", "{work}"]),
    ("session-data", ["--work", "{work}"]),
    ("profiles", ["--work", "{work}", "--min-rows", "40", "--min-sessions", "3"]),
]
OUTPUT_FOLDERS = ("tracks", "rejects", "user_dir", "summary_dir", "final_dir")


def spark_home() -> Path:
    """The Spark distribution inside the PySpark package."""
    import pyspark

    return Path(pyspark.__file__).parent


def free_port() -> int:
    """A loopback port free right now."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def port_open(port: int) -> bool:
    """Whether something accepts connections on a loopback port."""
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((LOOPBACK, port)) == 0


class Daemons:
    """Spark processes started by a fixture, each with its log, stopped by process id."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.env = {k: v for k, v in os.environ.items() if k != "SPARK_REMOTE"} | {
            "SPARK_HOME": str(spark_home()), "SPARK_LOCAL_IP": LOOPBACK,
            "SPARK_LOG_DIR": str(folder), "PYSPARK_PYTHON": sys.executable, "TZ": "UTC",
        }
        self.started: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self, name: str, args: list[str]) -> None:
        """Start one process (spark-class and spark-submit exec the JVM: same process id)."""
        log = self.folder / f"{name}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                       env=self.env, cwd=self.folder)
        self.started.append((process, log))

    def wait_until(self, ready: Callable[[], bool], what: str) -> None:
        """Poll until `ready()`; fail with the logs if a process died or time ran out."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ready():
            dead = [log for process, log in self.started if process.poll() is not None]
            if dead or time.monotonic() > deadline:
                tails = "\n".join(f"--- {log.name}\n" + log.read_text(errors="replace")[-3000:]
                                  for _, log in self.started)
                pytest.fail(f"{what}: not ready ({'exited' if dead else 'timed out'})\n{tails}")
            time.sleep(0.5)

    def stop(self) -> None:
        """SIGTERM every process by its id, newest first; SIGKILL what is still up after a while."""
        for process, _ in reversed(self.started):
            if process.poll() is None:
                os.kill(process.pid, signal.SIGTERM)
        for process, _ in reversed(self.started):
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()


def alive_workers(ui_port: int) -> int:
    """Workers the master counts as alive, from its status page's JSON."""
    try:
        with urllib.request.urlopen(f"http://{LOOPBACK}:{ui_port}/json/", timeout=2) as page:
            return int(json.load(page).get("aliveworkers", 0))
    except OSError:
        return 0


@pytest.fixture(scope="module")
def standalone_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A standalone master and two one-core workers on loopback; its spark:// URL."""
    daemons = Daemons(tmp_path_factory.mktemp("cluster"))
    spark_class = str(spark_home() / "bin" / "spark-class")
    port, ui_port = free_port(), free_port()
    url = f"spark://{LOOPBACK}:{port}"
    try:
        daemons.start("master", [spark_class, "org.apache.spark.deploy.master.Master",
                                 "--host", LOOPBACK, "--port", str(port),
                                 "--webui-port", str(ui_port)])
        daemons.wait_until(lambda: port_open(port), "the Spark master")
        for index in range(WORKERS):
            daemons.start(f"worker-{index}", [
                spark_class, "org.apache.spark.deploy.worker.Worker", "--host", LOOPBACK,
                "--cores", "1", "--memory", WORKER_MEMORY, "--webui-port", str(free_port()),
                "--work-dir", str(daemons.folder / f"worker-{index}"), url])
        daemons.wait_until(lambda: alive_workers(ui_port) == WORKERS, "the Spark workers")
        yield url
    finally:
        daemons.stop()


@pytest.fixture(scope="module")
def connect_server(standalone_cluster: str, tmp_path_factory: pytest.TempPathFactory
                   ) -> Iterator[str]:
    """The Spark Connect server PySpark ships, on loopback, running its jobs on the cluster;
    its sc:// URL."""
    daemons = Daemons(tmp_path_factory.mktemp("connect"))
    port = free_port()
    try:
        daemons.start("connect-server", [
            str(spark_home() / "bin" / "spark-submit"),
            "--class", "org.apache.spark.sql.connect.service.SparkConnectServer",
            "--master", standalone_cluster, "--executor-memory", "768m",
            "--conf", f"spark.connect.grpc.binding.address={LOOPBACK}",
            "--conf", f"spark.connect.grpc.binding.port={port}",
            "--conf", "spark.ui.enabled=false",
            "--conf", "spark.driver.extraJavaOptions=-Duser.timezone=UTC",
            "--conf", "spark.executor.extraJavaOptions=-Duser.timezone=UTC",
        ])
        daemons.wait_until(lambda: port_open(port), "the Spark Connect server")
        yield f"sc://{LOOPBACK}:{port}"
    finally:
        daemons.stop()


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic dataset in the real format."""
    from utils.synthetic.generate import generate_dataset

    folder = tmp_path_factory.mktemp("raw")
    generate_dataset(folder, scale="tiny", users=10, seed=5)
    return folder


def run_stages(raw: Path, work: Path, spark: list[str]) -> dict[str, float]:
    """Every stage as its own `sessionlen` process; Spark stages get `spark` arguments.

    Returns each stage's wall time in seconds.
    """
    seconds = {}
    for stage, args in STAGES:
        command = [str(SESSIONLEN), stage, *[a.format(raw=raw, work=work) for a in args]]
        if spark and stage != "metadata":
            command += ["--engine", "spark", *spark]
        started = time.monotonic()
        done = subprocess.run(command, capture_output=True, text=True, timeout=900)
        seconds[stage] = round(time.monotonic() - started, 1)
        assert done.returncode == 0, f"{stage} failed:\n{done.stderr[-3000:]}"
    return seconds


@pytest.fixture(scope="module")
def local_outputs(raw: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Every output file of the local engine's run."""
    work = tmp_path_factory.mktemp("local") / "work"
    run_stages(raw, work, [])
    return output_files(work)


def output_files(work: Path) -> dict[str, bytes]:
    """Every stage output file under WORK, manifests aside (they hold engines and clocks)."""
    return {str(p.relative_to(work)): p.read_bytes()
            for folder in OUTPUT_FOLDERS if (work / folder).is_dir()
            for p in sorted((work / folder).rglob("*")) if p.is_file() and p.name != MANIFEST}


def assert_same_outputs(work: Path, expected: dict[str, bytes]) -> None:
    """The Spark run's files are the local run's, byte for byte."""
    actual = output_files(work)
    assert actual.keys() == expected.keys()
    assert [name for name in expected if actual[name] != expected[name]] == []
    assert any(name.startswith("final_dir/train/") for name in actual)


def test_cluster_master_same_files_as_local(standalone_cluster: str, raw: Path,
                                            local_outputs: dict[str, bytes],
                                            tmp_path: Path) -> None:
    work = tmp_path / "work"
    seconds = run_stages(raw, work, ["--spark-master", standalone_cluster])
    print(f"stage seconds on {standalone_cluster}: {seconds}")
    assert_same_outputs(work, local_outputs)


def test_cluster_spark_connect_same_files_as_local(connect_server: str, raw: Path,
                                                   local_outputs: dict[str, bytes],
                                                   tmp_path: Path) -> None:
    work = tmp_path / "work"
    seconds = run_stages(raw, work, ["--spark-remote", connect_server])
    print(f"stage seconds through {connect_server}: {seconds}")
    assert_same_outputs(work, local_outputs)
