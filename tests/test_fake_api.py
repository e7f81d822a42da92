"""The loopback fake Last.fm API: real shape, key check, lookups, faults, and the CLI server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import requests

from utils.core.columns import GT_TRACKS_COLUMNS
from utils.core.config import PROJECT_ROOT
from utils.core.errors import SessionlenError
from utils.core.stage_io import Timer
from utils.synthetic.fake_api import FakeApi, FaultConfig, TrackRequest, start_server
from utils.synthetic.fake_api_catalog import load_catalog

KEY = "0123456789abcdef0123456789abcdef"
ROWS = [
    ["The Police", "Roxanne", "9e0e2b01-41db-4008-bd8b-988977d6019a", "", "89000",
     "rock|classic rock"],
    ["Björk", "Jóga", "", "b5a4f7a2-0000-4000-8000-000000000001", "305000", ""],
    ["Shadow", "Unknown Length", "", "", "0", "ambient"],
]


@pytest.fixture()
def catalog(tmp_path: Path) -> Path:
    path = tmp_path / "ground_truth" / "tracks.csv"
    path.parent.mkdir()
    pd.DataFrame(ROWS, columns=GT_TRACKS_COLUMNS).to_csv(path, index=False)
    return path


@pytest.fixture()
def api(catalog: Path) -> Iterator[FakeApi]:
    with start_server(catalog, api_key=KEY) as server:
        yield server


def _get(api: FakeApi, **params: str) -> requests.Response:
    query = {"method": "track.getInfo", "format": "json", "api_key": KEY, **params}
    return requests.get(api.url, params=query, timeout=5)


def test_serves_the_real_json_shape(api: FakeApi) -> None:
    response = _get(api, artist="The Police", track="Roxanne")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    track = response.json()["track"]
    assert track["duration"] == "89000"
    assert all(isinstance(track[k], str) for k in ("duration", "listeners", "playcount"))
    assert track["artist"] == {"name": "The Police",
                               "mbid": "9e0e2b01-41db-4008-bd8b-988977d6019a",
                               "url": "https://www.last.fm/music/The+Police"}
    assert [t["name"] for t in track["toptags"]["tag"]] == ["rock", "classic rock"]
    assert "mbid" not in track


def test_lookups_are_loose_on_case_and_spaces_and_work_by_mbid(api: FakeApi) -> None:
    by_name = _get(api, artist="  björk ", track="JÓGA").json()["track"]
    assert (by_name["name"], by_name["toptags"]) == ("Jóga", {"tag": []})
    by_mbid = _get(api, mbid="B5A4F7A2-0000-4000-8000-000000000001").json()["track"]
    assert by_mbid["duration"] == "305000"
    assert _get(api, artist="Shadow", track="unknown length").json()["track"]["duration"] == "0"


def test_errors_come_with_http_200_in_the_real_body(api: FakeApi) -> None:
    missing = _get(api, artist="The Police", track="Message in a Bottle")
    assert missing.status_code == 200
    assert missing.json() == {"error": 6, "message": "Track not found", "links": []}
    assert _get(api, method="track.getFoo", artist="a", track="b").json()["error"] == 3
    assert api.requests_served == 2


def test_the_key_is_checked(api: FakeApi) -> None:
    wrong = _get(api, artist="The Police", track="Roxanne", api_key="nope")
    assert wrong.json()["error"] == 10
    assert _get(api, artist="The Police", track="Roxanne", api_key="").json()["error"] == 10


def test_without_format_json_the_answer_is_xml(api: FakeApi) -> None:
    response = requests.get(api.url, params={"method": "track.getInfo", "api_key": KEY,
                                             "artist": "the police", "track": "roxanne"},
                            timeout=5)
    assert response.text.startswith("<?xml") and "<duration>89000</duration>" in response.text


@pytest.mark.parametrize(("field", "check"), [
    ("p_5xx", lambda r: r.status_code == 503),
    ("p_rate_limit", lambda r: r.json()["error"] == 29),
    ("p_temporary", lambda r: r.json()["error"] == 16),
    ("p_operation_failed", lambda r: r.json()["error"] == 8),
])
def test_each_answering_fault(catalog: Path, field: str, check) -> None:
    with start_server(catalog, faults=FaultConfig(**{field: 1.0})) as server:
        response = _get(server, artist="The Police", track="Roxanne")
        assert check(response)
        assert server.fault_counts[field.removeprefix("p_")] == 1


def test_truncated_slow_and_reset_faults(catalog: Path) -> None:
    with start_server(catalog, faults=FaultConfig(p_truncated=1.0)) as server:
        body = _get(server, artist="The Police", track="Roxanne").text
        with pytest.raises(json.JSONDecodeError):
            json.loads(body)
    with start_server(catalog, faults=FaultConfig(p_slow=1.0, slow_seconds=5)) as server, \
            pytest.raises(requests.Timeout):
        _get_with_timeout(server, 0.3)
    with start_server(catalog, faults=FaultConfig(p_reset=1.0)) as server, \
            pytest.raises(requests.ConnectionError):
        _get(server, artist="The Police", track="Roxanne")


def _get_with_timeout(api: FakeApi, timeout: float) -> requests.Response:
    return requests.get(api.url, params={"api_key": KEY, "format": "json"}, timeout=timeout)


def test_fault_mix_follows_the_probabilities_and_the_seed(catalog: Path) -> None:
    faults = FaultConfig(p_5xx=0.2, p_rate_limit=0.2, p_temporary=0.1, seed=7)
    counts = []
    for _ in range(2):
        with start_server(catalog, faults=faults) as server, requests.Session() as s:
            statuses = [s.get(server.url, params={"api_key": KEY, "format": "json",
                                                  "artist": "x", "track": "y"},
                              timeout=5).status_code for _ in range(200)]
            counts.append(server.fault_counts)
    assert counts[0] == counts[1]
    assert 20 <= counts[0]["5xx"] <= 60 and 20 <= counts[0]["rate_limit"] <= 60
    assert statuses.count(503) == counts[1]["5xx"]


def test_stop_abandons_slow_answers_promptly(catalog: Path) -> None:
    server = start_server(catalog, faults=FaultConfig(p_slow=1.0, slow_seconds=30))
    with pytest.raises(requests.Timeout):
        _get_with_timeout(server, 0.2)
    with Timer() as timer:
        server.stop()
    assert timer.seconds < 2.0


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"p_5xx": 1.5}, "p_5xx=1.5 is not in"),
    ({"p_5xx": 0.6, "p_reset": 0.6}, "sum to 1.2"),
    ({"slow_seconds": -1.0}, "slow_seconds"),
])
def test_fault_config_rejects_bad_values(kwargs: dict, message: str) -> None:
    with pytest.raises(SessionlenError, match=message):
        FaultConfig(**kwargs)


def test_catalog_errors_name_the_file_and_line(tmp_path: Path) -> None:
    with pytest.raises(SessionlenError, match="catalog not found"):
        load_catalog(tmp_path / "nope.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("artist_name,track_name\nA,B\n")
    with pytest.raises(SessionlenError, match="lacks column.*duration_ms"):
        load_catalog(bad)
    rows = [ROWS[0], ["A", "B", "", "", "three minutes", ""]]
    pd.DataFrame(rows, columns=GT_TRACKS_COLUMNS).to_csv(bad, index=False)
    with pytest.raises(SessionlenError, match=r"bad.csv: line 3: duration_ms 'three minutes'"):
        load_catalog(bad)


@pytest.mark.parametrize(("stop_signal", "fault_args", "status", "faults_line"), [
    (signal.SIGINT, [], 200, "(no faults)"),
    (signal.SIGTERM, ["--p-5xx", "1"], 503, "(5xx 1)"),
], ids=["SIGINT", "SIGTERM"])
def test_cli_server_serves_and_stops_cleanly_on_ctrl_c_and_sigterm(
        catalog: Path, stop_signal: signal.Signals, fault_args: list[str], status: int,
        faults_line: str) -> None:
    env = {**os.environ, "LASTFM_API_KEY": KEY}
    proc = subprocess.Popen(
        [sys.executable, "-m", "utils.cli", "fake-api", "--catalog", str(catalog), "--port", "0",
         *fault_args],
        cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()  # type: ignore[union-attr]
        url = first.split(" at ")[1].split(" ")[0]
        query = {"method": "track.getInfo", "format": "json", "api_key": KEY,
                 "artist": "The Police", "track": "Roxanne"}
        response = requests.get(url, params=query, timeout=5)
        proc.send_signal(stop_signal)
        out, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert "3 tracks at http://127.0.0.1:" in first
    assert response.status_code == status
    assert status != 200 or response.json()["track"]["duration"] == "89000"
    assert proc.returncode == 0 and err == ""
    assert f"stopped by {stop_signal.name} after 1 requests {faults_line}" in out
    assert KEY not in first + out + err


def test_requests_are_counted_per_track_without_the_key(api: FakeApi) -> None:
    _get(api, artist="The Police", track="Roxanne")
    _get(api, artist="The Police", track="Roxanne")
    _get(api, mbid="b5a4f7a2-0000-4000-8000-000000000001")
    assert api.requests_per_track == {
        TrackRequest("The Police", "Roxanne", ""): 2,
        TrackRequest("", "", "b5a4f7a2-0000-4000-8000-000000000001"): 1,
    }
    assert KEY not in repr(api.requests_per_track)


def test_pick_maps_a_uniform_draw_onto_the_fault_kinds() -> None:
    faults = FaultConfig(p_5xx=0.1, p_rate_limit=0.2, p_reset=0.3)
    assert [faults.pick(u) for u in (0.0, 0.09, 0.1, 0.29, 0.31, 0.59, 0.61, 0.99)] == [
        "5xx", "5xx", "rate_limit", "rate_limit", "reset", "reset", None, None]
    assert FaultConfig().pick(0.0) is None
