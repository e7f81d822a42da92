"""Shared fixtures: paths to the real reference data kept in `tests/data/`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from utils.core.config import API_KEY_ENV, API_URL_ENV

REFERENCE_DATA = Path(__file__).resolve().parent / "data"
SAMPLE_DIR = REFERENCE_DATA / "lastfm-1k-sample"
API_RESPONSES_DIR = REFERENCE_DATA / "lastfm-api-responses"


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    """The real Last.fm 1K excerpt and profile file."""
    assert SAMPLE_DIR.is_dir(), f"real reference data missing: {SAMPLE_DIR}"
    return SAMPLE_DIR


@pytest.fixture(scope="session")
def api_responses_dir() -> Path:
    """Real Last.fm API response bodies."""
    assert API_RESPONSES_DIR.is_dir(), f"real reference data missing: {API_RESPONSES_DIR}"
    return API_RESPONSES_DIR


@pytest.fixture(scope="session", autouse=True)
def no_real_api() -> Iterator[None]:
    """No test may reach the real Last.fm API with a key from the caller's environment.

    Stages, notebooks and children inherit the environment; tests that crawl set the key and
    a loopback LASTFM_API_URL themselves. Session scope: module fixtures run stages too.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv(API_KEY_ENV, raising=False)
        patch.delenv(API_URL_ENV, raising=False)
        yield
