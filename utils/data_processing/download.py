"""`sessionlen download`: fetch the official Last.fm 1K tarball, resumably, and verify it.

The tarball is streamed to `OUT/.partial` (resumed with an HTTP Range request after a dropped
connection or an interrupted run), unpacked member by member into a temporary folder while each
file's MD5 is computed, and only then renamed to `OUT/lastfm-dataset-1K/`.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import re
import shutil
import sys
import tarfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO
from urllib.parse import urlparse

import requests
from tqdm import tqdm

from utils.core.errors import SessionlenError

OFFICIAL_URL = "http://mtg.upf.edu/static/datasets/last.fm/lastfm-dataset-1K.tar.gz"
# From the README shipped in the tarball.
EXPECTED_MD5 = {
    "userid-timestamp-artid-artname-traid-traname.tsv": "64747b21563e3d2aa95751e0ddc46b68",
    "userid-profile.tsv": "c53608b6b445db201098c1489ea497df",
}
DATASET_DIR = "lastfm-dataset-1K"
PARTIAL = ".partial"

CONNECT_TIMEOUT_S = 15.0
READ_TIMEOUT_S = 60.0
MAX_ATTEMPTS = 8
FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0
BLOCK_BYTES = 1 << 20
# Small network reads: a dropped connection loses at most this much of the partial download.
NETWORK_BLOCK_BYTES = 1 << 14

# Failures worth another attempt: the connection, not the request, went wrong.
_TRANSIENT = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)


class _Retry(Exception):
    """A transient failure of one attempt (5xx, dropped connection, short body)."""


def md5_of(path: Path) -> str:
    """Hex MD5 of a file, read in blocks."""
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        while block := fh.read(BLOCK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def is_verified(folder: Path, expected_md5: dict[str, str]) -> bool:
    """Whether `folder` holds every expected file with its expected MD5."""
    return folder.is_dir() and all(
        (folder / name).is_file() and md5_of(folder / name) == md5
        for name, md5 in expected_md5.items()
    )


def _total_size(response: requests.Response, start: int) -> int | None:
    """The full size of the resource from Content-Range or Content-Length, when the server says."""
    match = re.match(r"bytes \d+-\d+/(\d+)", response.headers.get("Content-Range", ""))
    if match:
        return int(match.group(1))
    length = response.headers.get("Content-Length")
    return start + int(length) if length and length.isdigit() else None


def _start_request(url: str, partial: Path) -> tuple[requests.Response | None, int]:
    """GET the tarball from the partial file's end: (response, or None if complete; offset)."""
    have = partial.stat().st_size if partial.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    response = requests.get(url, headers=headers, stream=True,
                            timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S))
    if response.status_code in (200, 206):
        # 200 to a Range request: the server ignored Range, so the download starts over.
        start = _range_start(response, have) if response.status_code == 206 else 0
        return response, start
    response.close()
    if response.status_code == 416:
        # Nothing after `have`: the partial file is the whole tarball, or a stale longer one.
        match = re.match(r"bytes \*/(\d+)", response.headers.get("Content-Range", ""))
        if match and int(match.group(1)) == have:
            return None, have
        partial.unlink()
        raise _Retry("the partial file does not match the server's tarball; restarting")
    if response.status_code >= 500:
        raise _Retry(f"HTTP {response.status_code}")
    raise SessionlenError(f"{url}: HTTP {response.status_code} {response.reason}")


def _range_start(response: requests.Response, have: int) -> int:
    """Where a 206 body starts; a body starting after the partial file's end would leave a gap."""
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    start = int(match.group(1)) if match else have
    if start > have:
        response.close()
        raise _Retry(f"server resumed at byte {start:,}, after the {have:,} bytes on disk")
    return start


def _stream_to(response: requests.Response, partial: Path, start: int, label: str) -> None:
    """Write the response body to `partial` from byte `start`, with a progress bar."""
    total = _total_size(response, start)
    with open(partial, "r+b" if start else "wb") as fh, tqdm(
        total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
        desc=label, file=sys.stderr, mininterval=0.5,
    ) as bar:
        fh.seek(start)
        fh.truncate()
        for block in response.iter_content(NETWORK_BLOCK_BYTES):
            fh.write(block)
            bar.update(len(block))
        size = fh.tell()
    if total is not None and size < total:
        raise _Retry(f"connection closed at {size:,} of {total:,} bytes")


def _one_line(exc: Exception, limit: int = 160) -> str:
    """A short one-line description of a failure (requests' messages nest whole reprs)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:limit]}{'...' if len(text) > limit else ''}"


def fetch_resumable(url: str, partial: Path) -> Path:
    """Download `url` into `partial`, resuming and retrying with backoff on transient failures."""
    label = PurePosixPath(urlparse(url).path).name or "download"
    attempt, backoff = 1, FIRST_BACKOFF_S
    while True:
        try:
            response, start = _start_request(url, partial)
            if response is not None:
                with contextlib.closing(response):
                    _stream_to(response, partial, start, label)
            return partial
        except (_Retry, *_TRANSIENT) as exc:
            cause = _one_line(exc)
            if attempt >= MAX_ATTEMPTS:
                raise SessionlenError(
                    f"{url}: download failed after {MAX_ATTEMPTS} attempts ({cause}); "
                    f"run again to resume from {partial}"
                ) from exc
            print(f"download: {cause}; retrying in {backoff:.1f} s", file=sys.stderr)
            time.sleep(backoff)
            attempt, backoff = attempt + 1, min(2 * backoff, MAX_BACKOFF_S)


def _safe_target(root: Path, member: tarfile.TarInfo) -> Path:
    """Where a member may be written under `root`; links, devices and escaping paths refused."""
    name = PurePosixPath(member.name)
    escapes = name.is_absolute() or ".." in name.parts
    if escapes or not (member.isfile() or member.isdir()):
        kind = "path outside the folder" if escapes else "link or special file"
        raise SessionlenError(f"refusing unsafe archive member {member.name!r} ({kind})")
    target = (root / name).resolve()
    if not target.is_relative_to(root.resolve()):
        raise SessionlenError(f"refusing unsafe archive member {member.name!r} (escapes)")
    return target


def extract_with_md5(archive: Path, dest: Path) -> dict[str, str]:
    """Unpack a tar(.gz) into `dest` in one streaming pass; MD5 of every file by member name."""
    digests: dict[str, str] = {}
    try:
        with tarfile.open(archive, "r|*") as tar:
            for member in tar:
                target = _safe_target(dest, member)
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                # Keyed by the normalized name: `./lastfm-dataset-1K/x` is `lastfm-dataset-1K/x`.
                name = PurePosixPath(member.name).as_posix()
                digests[name] = _copy_with_md5(tar.extractfile(member), target)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise SessionlenError(f"{archive}: corrupted download ({exc})") from exc
    return digests


def _copy_with_md5(source: IO[bytes] | None, target: Path) -> str:
    """Copy a file object to `target` block by block, returning the MD5 of what was copied."""
    digest = hashlib.md5()
    with open(target, "wb") as fh:
        while source is not None and (block := source.read(BLOCK_BYTES)):
            digest.update(block)
            fh.write(block)
    return digest.hexdigest()


def _check_md5(digests: dict[str, str], expected_md5: dict[str, str]) -> None:
    """Fail on the first expected file that is missing or has another MD5."""
    for name, md5 in expected_md5.items():
        got = digests.get(f"{DATASET_DIR}/{name}")
        if got is None:
            raise SessionlenError(f"{DATASET_DIR}/{name} is missing from the downloaded archive")
        if got != md5:
            raise SessionlenError(f"MD5 mismatch for {name}: expected {md5}, got {got}")


@contextlib.contextmanager
def _scratch_dir(out: Path) -> Iterator[Path]:
    """A temporary folder inside `out` (same filesystem: the final rename is atomic), removed."""
    scratch = out / f".unpack-{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _replace_dir(new: Path, final: Path) -> None:
    """Put `new` at `final`, replacing an existing (unverified) folder only once `new` is ready."""
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    if final.exists():
        os.replace(final, old)
    os.replace(new, final)
    shutil.rmtree(old, ignore_errors=True)


def unpack_verified(archive: Path, out: Path, expected_md5: dict[str, str]) -> Path:
    """Unpack the tarball, check the MD5s, then move `lastfm-dataset-1K/` into `out`."""
    with _scratch_dir(out) as scratch:
        _check_md5(extract_with_md5(archive, scratch), expected_md5)
        if not (scratch / DATASET_DIR).is_dir():
            raise SessionlenError(f"{archive}: no top folder {DATASET_DIR}/ in the archive")
        _replace_dir(scratch / DATASET_DIR, out / DATASET_DIR)
    return out / DATASET_DIR


def download_dataset(
    out: Path, url: str = OFFICIAL_URL, expected_md5: dict[str, str] | None = None
) -> Path:
    """Download, verify and unpack the Last.fm 1K dataset into `out/lastfm-dataset-1K/`.

    Does nothing when the folder is already there and verified. A download cut short is resumed
    by the next call; a corrupted one or an MD5 mismatch removes the partial file and leaves
    nothing unpacked.
    """
    expected = EXPECTED_MD5 if expected_md5 is None else expected_md5
    out = Path(out)
    final = out / DATASET_DIR
    if is_verified(final, expected):
        print(f"{final}: already downloaded and verified", file=sys.stderr)
        return final
    out.mkdir(parents=True, exist_ok=True)
    partial = fetch_resumable(url, out / PARTIAL)
    try:
        unpack_verified(partial, out, expected)
    except SessionlenError as exc:
        partial.unlink(missing_ok=True)
        raise SessionlenError(f"{exc}; the download was removed, run again") from exc
    partial.unlink()
    return final
