"""One way to get a SparkSession: UTC, local[*] by default, any master URL or a Spark Connect
server (sc://host:port), nothing downloaded."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from utils.core.errors import SessionlenError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

DEFAULT_MASTER = "local[*]"
REMOTE_ENV = "SPARK_REMOTE"
CONNECT_SCHEME = "sc://"
DEFAULT_CONNECT_PORT = 15002
DEFAULT_STANDALONE_PORT = 7077
# About this many bytes of input per task for the engines that run local code in Spark tasks,
# as Spark's own file splits (spark.sql.files.maxPartitionBytes); at least this many tasks, so
# that one large task does not leave the other cores idle at the end of the job.
TASK_BYTES = 128 << 20
MIN_TASKS = 16
# Spark's own clients retry an absent master or server for minutes; a refused or silent port
# is known to be wrong after this long.
REACH_TIMEOUT_S = 5.0
# Settings a Spark Connect client may set: the server owns the JVM, the UI and the memory.
SQL_SETTINGS = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.shuffle.partitions": "8",
    "spark.sql.ansi.enabled": "false",
    # Summarize reads one file per user: listing ~1,000 local files on the driver takes
    # milliseconds, a Spark job to list them in parallel takes seconds.
    "spark.sql.sources.parallelPartitionDiscovery.threshold": "100000",
}
UTC_OPTION = "-Duser.timezone=UTC"
# The driver's Java options are set per session (classic_session).
CLASSIC_SETTINGS = {
    "spark.executor.extraJavaOptions": UTC_OPTION,
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.driver.memory": "4g",
}


def task_count(total_bytes: int) -> int:
    """How many tasks an engine that runs local code in Spark tasks cuts `total_bytes` of
    input into: one per TASK_BYTES, at least MIN_TASKS."""
    return max(MIN_TASKS, -(-total_bytes // TASK_BYTES))


# The driver JVM's class archive (utils.core.spark_classes builds it).
ARCHIVE_DIR = Path(sys.prefix) / "share" / "sessionlen"
ARCHIVE_SUFFIX = "-classes.jsa"


def archive_path(directory: Path = ARCHIVE_DIR) -> Path:
    """Where the class archive of the installed PySpark lives (its jars are the class path)."""
    return directory / f"spark-{version('pyspark')}{ARCHIVE_SUFFIX}"


def driver_java_options(directory: Path = ARCHIVE_DIR) -> str:
    """The driver JVM option that maps the class archive, or nothing when none was built."""
    path = archive_path(directory)
    return f"-XX:SharedArchiveFile={path}" if path.is_file() else ""


def spark_url(url: str | None = None) -> str:
    """Where Spark runs: `url`, else the SPARK_REMOTE environment variable, else local[*]."""
    return url or os.environ.get(REMOTE_ENV) or DEFAULT_MASTER


def is_remote(url: str) -> bool:
    """Whether `url` names a Spark Connect server rather than a master."""
    return url.startswith(CONNECT_SCHEME)


def endpoints(url: str) -> list[tuple[str, int]]:
    """The (host, port) pairs a spark:// or sc:// URL names; none for local, yarn, k8s."""
    if is_remote(url):
        # sc://host:port/;param=value: the parameters follow the address.
        hosts, default = [url.removeprefix(CONNECT_SCHEME).split("/")[0].split(";")[0]], \
            DEFAULT_CONNECT_PORT
    elif url.startswith("spark://"):
        # A standalone URL may list several masters: spark://h1:7077,h2:7077.
        hosts, default = url.removeprefix("spark://").split(","), DEFAULT_STANDALONE_PORT
    else:
        return []
    pairs = []
    for host in hosts:
        try:
            parsed = urlparse("//" + host)
            pairs.append((parsed.hostname or "", parsed.port or default))
        except ValueError as exc:
            raise SessionlenError(f"{url}: not a valid Spark URL ({exc})") from None
    return pairs


def check_reachable(url: str, timeout_s: float = REACH_TIMEOUT_S) -> None:
    """Fail in one line naming `url` unless one of its hosts accepts a TCP connection."""
    pairs = endpoints(url)
    what = "Spark Connect server" if is_remote(url) else "Spark master"
    reasons = []
    for host, port in pairs:
        if not host:
            raise SessionlenError(f"{url}: not a valid Spark URL (no host)")
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                return
        except OSError as exc:
            reasons.append(f"{host}:{port}: {exc.strerror or exc}")
    if pairs:
        raise SessionlenError(f"{url}: cannot reach the {what} ({'; '.join(reasons)})")


ENGINES = ("local", "spark")


def check_engine(engine: str) -> None:
    """Fail with a one-line error naming the valid engines."""
    if engine not in ENGINES:
        raise SessionlenError(f"unknown engine {engine!r}; valid engines: {', '.join(ENGINES)}")


def check_engine_target(engine: str, master: str | None) -> None:
    """Fail before any output is touched on an unknown engine, or on a Spark that cannot be
    reached."""
    check_engine(engine)
    if engine == "spark":
        check_reachable(spark_url(master))


@contextlib.contextmanager
def _without_remote_env() -> Iterator[None]:
    """Hide SPARK_REMOTE while a master session is built: PySpark would pick Connect."""
    saved = os.environ.pop(REMOTE_ENV, None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ[REMOTE_ENV] = saved


def get_spark(master: str | None = None, app_name: str = "sessionlen") -> SparkSession:
    """A SparkSession on `master` (a master URL or sc://host:port; default SPARK_REMOTE, else
    local[*]) with the session time zone UTC."""
    from pyspark.sql import SparkSession

    url = spark_url(master)
    check_reachable(url)
    if is_remote(url):
        return SparkSession.builder.remote(url).config(map=SQL_SETTINGS).getOrCreate()
    return classic_session(url, app_name, driver_java_options())


def classic_session(url: str, app_name: str, driver_options: str) -> SparkSession:
    """A SparkSession whose driver runs in a JVM of ours, started with `driver_options`
    besides the UTC time zone (they apply only if no session is running yet)."""
    from py4j.protocol import Py4JError
    from pyspark.errors import PySparkException
    from pyspark.sql import SparkSession

    # Spark's Python workers must run the interpreter that runs us, with our packages.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    settings = {**SQL_SETTINGS, **CLASSIC_SETTINGS,
                "spark.driver.extraJavaOptions": f"{UTC_OPTION} {driver_options}".strip()}
    builder = SparkSession.builder.master(url).appName(app_name)
    with _without_remote_env():
        try:
            return builder.config(map=settings).getOrCreate()
        except (Py4JError, PySparkException) as exc:
            # A port that answers but is no Spark master (a typo'd port, a proxy) passes
            # check_reachable; Spark gives up after its registration retries (about a minute)
            # and the stage would end in a Java stack trace.
            hint = "; is a Spark master listening there?" if url.startswith("spark://") else ""
            raise SessionlenError(f"{url}: Spark could not start a session "
                                  f"({_first_line(exc)}){hint}") from None


def _first_line(exc: Exception) -> str:
    """The first line of an exception's message, the Java one when it comes from the JVM."""
    from py4j.protocol import Py4JError

    java = getattr(exc, "java_exception", None)
    try:
        text = str(java.getMessage()) if java is not None else str(exc)
    except Py4JError:
        text = str(exc)
    return (text.strip().splitlines() or [type(exc).__name__])[0]
