"""The track.getInfo client: real Last.fm bodies, and real HTTP against the loopback fake API."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import requests

from utils.core.columns import GT_TRACKS_COLUMNS
from utils.core.errors import SessionlenError
from utils.data_processing import lastfm_client as client
from utils.data_processing.track_rules import name_key
from utils.synthetic.fake_api import FakeApi, FaultConfig, start_server

KEY = "0123456789abcdef0123456789abcdef"
TRICKY = ("AC/DC & Friends", "Rock + Roll #1? 100% «Ça» \"live\"")


def _body(api_responses_dir: Path, name: str) -> bytes:
    return (api_responses_dir / name).read_bytes()


def test_real_roxanne_response(api_responses_dir: Path) -> None:
    info = client.parse_body(_body(api_responses_dir, "track.getInfo_The_Police_Roxanne.json"))
    assert info == client.TrackInfo(
        89.0, ("rock", "classic rock", "80s", "new wave", "The Police"))


@pytest.mark.parametrize("name", [
    "track.getInfo_lastfm-docs_linkin_park_one_step_closer.json",
    "track.getInfo_lastfm-docs_linkin_park_one_step_closer_with_username.json",
])
def test_real_one_step_closer_responses(api_responses_dir: Path, name: str) -> None:
    info = client.parse_body(_body(api_responses_dir, name))
    assert isinstance(info, client.TrackInfo)
    assert info.duration_s == 157.0
    assert info.genres[:2] == ("Nu Metal", "rock") and len(info.genres) == 5


def test_real_shadow_track_has_no_duration_and_no_genres(api_responses_dir: Path) -> None:
    name = "track.getInfo_lastfm-docs_fake_artist_fake_track_shadow.json"
    assert client.parse_body(_body(api_responses_dir, name)) == client.TrackInfo(None, ())
    outcome = client.classify_response(200, _body(api_responses_dir, name))
    assert outcome.outcome == client.OK and outcome.info is not None


@pytest.mark.parametrize(("name", "code", "outcome"), [
    ("error6_track_not_found__lastfm-docs_track.getTags.json", 6, client.NOT_FOUND_OUTCOME),
    ("error6_track_not_found__rweekers_test.json", 6, client.NOT_FOUND_OUTCOME),
    ("navidrome_lastfm.artist.error6.json", 6, client.NOT_FOUND_OUTCOME),
    ("navidrome_lastfm.artist.error3.json", 3, client.FAILED),
])
def test_real_error_bodies_map_to_codes(api_responses_dir: Path, name: str, code: int,
                                        outcome: str) -> None:
    body = _body(api_responses_dir, name)
    assert client.parse_body(body).code == code  # type: ignore[union-attr]
    attempt = client.classify_response(200, body)
    assert (attempt.outcome, attempt.code) == (outcome, code)
    assert attempt.reason.startswith(f"error {code}: ")


@pytest.mark.parametrize(("name", "duration", "genres"), [
    ("TestPyLastTrack.test_track_get_duration.xml", 232.0,
     ("electronic", "chillout", "poptron", "electronica", "Daft Punk")),
    ("TestPyLastTrack.test_track_with_no_mbid.xml", 235.0, ()),
    ("TestPyLastNetwork.test_track_mbid.xml", 238.0,
     ("pop", "dance", "90s", "female vocalists", "cher")),
])
def test_real_xml_cassettes(api_responses_dir: Path, name: str, duration: float,
                            genres: tuple[str, ...]) -> None:
    body = _body(api_responses_dir / "pylast_cassettes_xml", name)
    assert client.parse_body(body) == client.TrackInfo(duration, genres)


@pytest.mark.parametrize(("code", "outcome"), [
    (8, client.RETRY), (11, client.RETRY), (16, client.RETRY), (29, client.RETRY),
    (10, client.KEY_REJECTED), (26, client.KEY_REJECTED), (6, client.NOT_FOUND_OUTCOME),
    (27, client.FAILED),
])
def test_error_codes_decide_the_outcome(code: int, outcome: str) -> None:
    body = f'{{"error":{code},"message":"m","links":[]}}'.encode()
    assert client.classify_response(200, body).outcome == outcome


def test_http_status_only_matters_without_a_body() -> None:
    assert client.classify_response(503, b'{"error":6}').outcome == client.RETRY
    assert client.classify_response(200, b'{"track": {"dur').reason == "truncated or malformed body"
    assert client.classify_response(429, b"slow down").code == client.RATE_LIMITED
    assert client.classify_response(404, b"<html>gone").outcome == client.FAILED
    assert client.classify_response(403, b'{"error":10,"message":"x"}').outcome == \
        client.KEY_REJECTED


def test_shapes_seen_in_the_wild() -> None:
    one_tag = {"track": {"duration": 61000, "toptags": {"tag": {"name": "jazz"}}}}
    assert client.parse_json_body(one_tag) == client.TrackInfo(61.0, ("jazz",))
    no_tags = {"track": {"duration": "", "toptags": ""}}
    assert client.parse_json_body(no_tags) == client.TrackInfo(None, ())
    assert client.genre_list({"tag": [{"name": "a|b"}, {"name": "  "}]}) == ["a/b"]
    with pytest.raises(client.MalformedResponse):
        client.parse_json_body({"tracks": {}})


def test_request_params_prefer_names_and_carry_format_and_autocorrect() -> None:
    params = client.request_params("Cher", "Believe", KEY, mbid="m-1", autocorrect=0)
    assert params == {"method": "track.getInfo", "format": "json", "autocorrect": "0",
                      "api_key": KEY, "artist": "Cher", "track": "Believe"}
    by_mbid = client.request_params("", "", KEY, mbid=" m-1 ")
    assert by_mbid["mbid"] == "m-1" and "artist" not in by_mbid


def test_scrub_key_removes_the_key_everywhere() -> None:
    text = f"GET /2.0/?method=x&api_key={KEY}&format=json failed; key {KEY}"
    scrubbed = client.scrub_key(text, KEY)
    assert KEY not in scrubbed and "api_key=***&format=json" in scrubbed
    assert client.scrub_key("api_key=abc", None) == "api_key=***"


def test_normalize_names_matches_the_join_keys() -> None:
    names = pd.Series(["  The Police ", "BJÖRK", None])
    assert client.normalize_names(names).tolist() == ["the police", "björk", ""]
    assert name_key(" Roxanne\t") == "roxanne"


@pytest.fixture()
def catalog(tmp_path: Path) -> Path:
    path = tmp_path / "tracks.csv"
    pd.DataFrame([["The Police", "Roxanne", "", "", "192000", "rock|new wave"],
                  [*TRICKY, "", "mb-1", "61500", ""]],
                 columns=GT_TRACKS_COLUMNS).to_csv(path, index=False)
    return path


@pytest.fixture()
def api(catalog: Path) -> Iterator[FakeApi]:
    with start_server(catalog, api_key=KEY) as server:
        yield server


@pytest.fixture()
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


def test_fetch_over_http_encodes_names(api: FakeApi, session: requests.Session) -> None:
    found = client.fetch_once(session, api.url, client.request_params(*TRICKY, KEY), 5.0)
    assert found == client.Attempt(client.OK, info=client.TrackInfo(61.5, ()))
    loose = client.request_params(" the POLICE", "roxanne ", KEY)
    assert client.fetch_once(session, api.url, loose, 5.0).info == client.TrackInfo(
        192.0, ("rock", "new wave"))
    missing = client.fetch_once(session, api.url, client.request_params("a", "b", KEY), 5.0)
    assert (missing.outcome, missing.code) == (client.NOT_FOUND_OUTCOME, 6)
    assert api.requests_served == 3


def test_invalid_key_over_http_is_rejected_without_echoing_it(
        api: FakeApi, session: requests.Session) -> None:
    wrong = "ffffffffffffffffffffffffffffffff"
    attempt = client.fetch_once(session, api.url, client.request_params("a", "b", wrong), 5.0)
    assert (attempt.outcome, attempt.code) == (client.KEY_REJECTED, 10)
    assert wrong not in attempt.reason


def test_http_debug_logs_never_show_the_key(api: FakeApi, session: requests.Session,
                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    client.fetch_once(session, api.url, client.request_params("a", "b", KEY), 5.0)
    assert "api_key=***" in caplog.text
    assert KEY not in caplog.text


@pytest.mark.parametrize(("fault", "reason"), [
    ("p_5xx", "HTTP 503"), ("p_slow", "timeout after 0.3s"),
    ("p_truncated", "truncated or malformed body"), ("p_reset", "connection reset"),
    ("p_rate_limit", "error 29: Rate Limit Exceeded"),
])
def test_network_faults_become_retries_without_the_key(
        catalog: Path, session: requests.Session, fault: str, reason: str,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    faults = FaultConfig(**{fault: 1.0}, slow_seconds=2.0)
    with start_server(catalog, faults=faults) as server:
        attempt = client.fetch_once(session, server.url,
                                    client.request_params("The Police", "Roxanne", KEY), 0.3)
    assert attempt.outcome == client.RETRY
    assert attempt.reason.startswith(reason)
    assert KEY not in attempt.reason
    assert KEY not in caplog.text


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/2.0/"


def test_refused_connection_and_bad_url(session: requests.Session) -> None:
    url = _closed_port_url()
    attempt = client.fetch_once(session, url, client.request_params("a", "b", KEY), 2.0)
    assert (attempt.outcome, attempt.reason) == (client.RETRY, "connection refused")
    with pytest.raises(SessionlenError, match="not a usable http") as raised:
        client.fetch_once(session, "ftp://example.invalid/", {"api_key": KEY}, 1.0)
    assert KEY not in str(raised.value)


def test_xml_error_bodies() -> None:
    body = '<lfm status="failed"><error code="6">Track not found</error></lfm>'
    assert client.parse_body(body) == client.ApiError(6, "Track not found")
    with pytest.raises(client.MalformedResponse):
        client.parse_body('<lfm status="failed"><error code="x">?</error></lfm>')
