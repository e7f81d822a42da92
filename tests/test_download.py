"""`sessionlen download` against a real HTTP server on 127.0.0.1 serving a real-layout tarball."""

from __future__ import annotations

import hashlib
import io
import re
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from utils.core.columns import PLAYS_FILE, PROFILE_FILE
from utils.core.errors import SessionlenError
from utils.data_processing import download
from utils.data_processing.download import DATASET_DIR, PARTIAL, download_dataset
from utils.data_processing.plays_reader import read_plays
from utils.data_processing.profile_reader import read_profiles

TARBALL_PATH = "/lastfm-dataset-1K.tar.gz"


@dataclass
class Behaviour:
    """What the test server does: the body it serves and the faults it injects."""

    body: bytes = b""
    ignore_range: bool = False
    drops: int = 0
    failures: int = 0
    ranges: list[str | None] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        """Keep the test output quiet."""

    def do_GET(self) -> None:
        behaviour = self.server.behaviour
        behaviour.ranges.append(self.headers.get("Range"))
        if self.path != TARBALL_PATH:
            self.send_error(404)
            return
        if behaviour.failures:
            behaviour.failures -= 1
            self.send_error(503)
            return
        body, start = behaviour.body, 0
        wanted = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if wanted and not behaviour.ignore_range:
            start = int(wanted.group(1))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if behaviour.drops:
            # Promise the whole body, send half, hang up: the client sees a broken connection.
            behaviour.drops -= 1
            payload = payload[: len(payload) // 2]
            self.close_connection = True
        self.wfile.write(payload)


class _Server(ThreadingHTTPServer):
    behaviour: Behaviour


@pytest.fixture
def server() -> Iterator[tuple[str, Behaviour]]:
    """A real HTTP server on 127.0.0.1; the test sets its Behaviour."""
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.behaviour = Behaviour()
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}{TARBALL_PATH}", httpd.behaviour
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries wait milliseconds instead of seconds in tests."""
    monkeypatch.setattr(download, "FIRST_BACKOFF_S", 0.01)


def _tarball(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    """A .tar.gz with a directory entry for the top folder, the files, and optional symlinks."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        top = tarfile.TarInfo(DATASET_DIR)
        top.type = tarfile.DIRTYPE
        tar.addfile(top)
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def dataset_files(sample_dir: Path) -> dict[str, bytes]:
    """The real sample files under the names the real tarball uses."""
    return {
        PLAYS_FILE: (sample_dir / "plays-excerpt.tsv").read_bytes(),
        PROFILE_FILE: (sample_dir / "userid-profile.tsv").read_bytes(),
        "README.txt": (sample_dir / "README-dataset.txt").read_bytes(),
    }


@pytest.fixture(scope="module")
def tarball(dataset_files: dict[str, bytes]) -> bytes:
    return _tarball({f"{DATASET_DIR}/{name}": data for name, data in dataset_files.items()})


@pytest.fixture(scope="module")
def md5s(dataset_files: dict[str, bytes]) -> dict[str, str]:
    return {name: hashlib.md5(dataset_files[name]).hexdigest()
            for name in (PLAYS_FILE, PROFILE_FILE)}


def test_download_unpacks_verifies_and_is_idempotent(
    tmp_path: Path, server: tuple[str, Behaviour], tarball: bytes, md5s: dict[str, str],
    dataset_files: dict[str, bytes],
) -> None:
    url, behaviour = server
    behaviour.body = tarball
    folder = download_dataset(tmp_path, url=url, expected_md5=md5s)
    assert folder == tmp_path / DATASET_DIR
    assert sorted(p.name for p in tmp_path.iterdir()) == [DATASET_DIR]
    for name, data in dataset_files.items():
        assert (folder / name).read_bytes() == data
    # The two files are the real format: the readers take them as they are.
    assert read_plays(folder / PLAYS_FILE).rows_in == 5000
    assert len(read_profiles(folder / PROFILE_FILE).frame) == 992
    assert download_dataset(tmp_path, url=url, expected_md5=md5s) == folder
    assert behaviour.ranges == [None]


def test_official_md5s_are_the_readme_ones(sample_dir: Path) -> None:
    readme = (sample_dir / "README-dataset.txt").read_text(encoding="utf-8")
    for name, md5 in download.EXPECTED_MD5.items():
        assert re.search(rf"{re.escape(name)}\s+\(MD5: {md5}\)", readme), name
    assert hashlib.md5((sample_dir / PROFILE_FILE).read_bytes()).hexdigest() == (
        download.EXPECTED_MD5[PROFILE_FILE])


def test_dropped_connection_is_resumed_with_range(
    tmp_path: Path, server: tuple[str, Behaviour], tarball: bytes, md5s: dict[str, str]
) -> None:
    url, behaviour = server
    behaviour.body, behaviour.drops = tarball, 1
    folder = download_dataset(tmp_path, url=url, expected_md5=md5s)
    assert behaviour.ranges[0] is None and len(behaviour.ranges) == 2
    resumed_at = int(re.fullmatch(r"bytes=(\d+)-", behaviour.ranges[1]).group(1))
    assert 0 < resumed_at <= len(tarball) // 2
    assert download.is_verified(folder, md5s)
    assert not (tmp_path / PARTIAL).exists()


def test_interrupted_run_resumes_on_the_next_call(
    tmp_path: Path, server: tuple[str, Behaviour], tarball: bytes, md5s: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, behaviour = server
    behaviour.body, behaviour.drops = tarball, 5
    monkeypatch.setattr(download, "MAX_ATTEMPTS", 2)
    with pytest.raises(SessionlenError, match="after 2 attempts.*run again to resume"):
        download_dataset(tmp_path, url=url, expected_md5=md5s)
    kept = (tmp_path / PARTIAL).stat().st_size
    assert 0 < kept < len(tarball)
    assert not (tmp_path / DATASET_DIR).exists()
    behaviour.drops = 0
    download_dataset(tmp_path, url=url, expected_md5=md5s)
    assert behaviour.ranges[-1] == f"bytes={kept}-"
    assert download.is_verified(tmp_path / DATASET_DIR, md5s)


def test_server_ignoring_range_restarts_from_zero(
    tmp_path: Path, server: tuple[str, Behaviour], tarball: bytes, md5s: dict[str, str]
) -> None:
    url, behaviour = server
    behaviour.body, behaviour.ignore_range, behaviour.drops = tarball, True, 1
    # A stale partial file that would corrupt the archive if the 200 body were appended to it.
    (tmp_path / PARTIAL).write_bytes(b"\0" * 1000)
    folder = download_dataset(tmp_path, url=url, expected_md5=md5s)
    assert behaviour.ranges[0] == "bytes=1000-"
    assert len(behaviour.ranges) == 2
    assert download.is_verified(folder, md5s)


def test_complete_partial_file_is_used_as_is(
    tmp_path: Path, server: tuple[str, Behaviour], tarball: bytes, md5s: dict[str, str]
) -> None:
    url, behaviour = server
    behaviour.body = tarball
    (tmp_path / PARTIAL).write_bytes(tarball)
    download_dataset(tmp_path, url=url, expected_md5=md5s)
    assert behaviour.ranges == [f"bytes={len(tarball)}-"]
    assert download.is_verified(tmp_path / DATASET_DIR, md5s)


def test_server_errors_are_retried_and_404_is_not(
    tmp_path: Path, server: tuple[str, Behaviour], tarball: bytes, md5s: dict[str, str]
) -> None:
    url, behaviour = server
    behaviour.body, behaviour.failures = tarball, 2
    download_dataset(tmp_path / "a", url=url, expected_md5=md5s)
    assert len(behaviour.ranges) == 3
    with pytest.raises(SessionlenError, match="HTTP 404"):
        download_dataset(tmp_path / "b", url=url.replace(".tar.gz", ".zip"), expected_md5=md5s)


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupted_tarball_leaves_nothing(
    tmp_path: Path, server: tuple[str, Behaviour], tarball: bytes, md5s: dict[str, str],
    damage: str,
) -> None:
    url, behaviour = server
    behaviour.body = tarball[: len(tarball) // 2] if damage == "truncated" else b"<html>" * 999
    with pytest.raises(SessionlenError, match="corrupted download.*removed"):
        download_dataset(tmp_path, url=url, expected_md5=md5s)
    assert list(tmp_path.iterdir()) == []


def test_md5_mismatch_names_the_file(
    tmp_path: Path, server: tuple[str, Behaviour], tarball: bytes, md5s: dict[str, str]
) -> None:
    url, behaviour = server
    behaviour.body = tarball
    wrong = {**md5s, PROFILE_FILE: "0" * 32}
    message = f"MD5 mismatch for {PROFILE_FILE}: expected {'0' * 32}, got {md5s[PROFILE_FILE]}"
    with pytest.raises(SessionlenError, match=re.escape(message)):
        download_dataset(tmp_path, url=url, expected_md5=wrong)
    assert list(tmp_path.iterdir()) == []


def test_unverified_existing_folder_is_replaced(
    tmp_path: Path, server: tuple[str, Behaviour], tarball: bytes, md5s: dict[str, str]
) -> None:
    url, behaviour = server
    behaviour.body = tarball
    stale = tmp_path / DATASET_DIR
    stale.mkdir()
    (stale / PROFILE_FILE).write_text("edited\n")
    download_dataset(tmp_path, url=url, expected_md5=md5s)
    assert download.is_verified(stale, md5s)
    assert sorted(p.name for p in tmp_path.iterdir()) == [DATASET_DIR]


@pytest.mark.parametrize(
    ("members", "links"),
    [
        ({f"{DATASET_DIR}/../../evil.txt": b"pwned"}, None),
        ({"/tmp/evil.txt": b"pwned"}, None),
        ({}, {f"{DATASET_DIR}/{PROFILE_FILE}": "/etc/passwd"}),
    ],
    ids=["dotdot", "absolute", "symlink"],
)
def test_unsafe_members_are_refused(
    tmp_path: Path, server: tuple[str, Behaviour], md5s: dict[str, str],
    members: dict[str, bytes], links: dict[str, str] | None,
) -> None:
    url, behaviour = server
    behaviour.body = _tarball(members, links)
    out = tmp_path / "deep" / "out"
    with pytest.raises(SessionlenError, match="refusing unsafe archive member"):
        download_dataset(out, url=url, expected_md5=md5s)
    assert list(out.iterdir()) == []
    assert not list(tmp_path.rglob("evil.txt"))
