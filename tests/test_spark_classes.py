"""The Spark driver's class archive: built whole, used when present, ignored when absent."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from utils.core.spark import ARCHIVE_SUFFIX, archive_path, driver_java_options

# A session whose JVM must map the archive (-Xshare:on refuses to start otherwise) runs a job.
USES_ARCHIVE = """
import sys
from utils.core.spark import classic_session
options = f"-XX:SharedArchiveFile={sys.argv[1]} -Xshare:on"
spark = classic_session("local[1]", "archive-check", options)
print("rows", spark.range(5).count())
"""


def test_no_option_without_an_archive(tmp_path: Path) -> None:
    assert driver_java_options(tmp_path) == ""
    archive_path(tmp_path).write_bytes(b"x")
    assert driver_java_options(tmp_path) == f"-XX:SharedArchiveFile={archive_path(tmp_path)}"


def test_built_archive_is_whole_and_maps(tmp_path: Path) -> None:
    stale = tmp_path / f"spark-0.0.0{ARCHIVE_SUFFIX}"
    stale.write_bytes(b"an archive of another PySpark")
    built = subprocess.run([sys.executable, "-m", "utils.core.spark_classes", str(tmp_path)],
                           capture_output=True, text=True, check=False)
    assert built.returncode == 0, built.stderr[-2000:]
    assert f"Spark class archive: {archive_path(tmp_path)}" in built.stdout
    # Only the archive of the installed PySpark is left: no partial file, no stale one.
    assert [path.name for path in tmp_path.iterdir()] == [archive_path(tmp_path).name]
    used = subprocess.run([sys.executable, "-c", USES_ARCHIVE, str(archive_path(tmp_path))],
                          capture_output=True, text=True, check=False)
    assert used.returncode == 0, used.stderr[-2000:]
    assert "rows 5" in used.stdout


def test_damaged_archive_fails_the_check(tmp_path: Path) -> None:
    """The check above can fail: -Xshare:on refuses an archive the JVM cannot map."""
    damaged = archive_path(tmp_path)
    damaged.write_bytes(b"not an archive" * 1000)
    used = subprocess.run([sys.executable, "-c", USES_ARCHIVE, str(damaged)],
                          capture_output=True, text=True, check=False)
    assert used.returncode != 0
    assert "shared archive file" in used.stderr
