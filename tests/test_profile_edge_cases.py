"""Profile edge cases, from the profile reader through the stages to the summary encodings.

A raw folder holds real plays (the excerpt's first listener, cut into blocks, one per profile)
and a profile file of edge values: every field empty, ages 0 / 120 / 150 / -3 / huge / not
numbers, unparseable registration dates, unknown genders, countries with commas, quotes and
non-ASCII text, and values a CSV reader would take for missing ("NA"). The real stages run on
it (tracks, offline metadata, denormalize, summarize); each summary row must carry the encodings
of DESIGN.md: gender 1 m / 0 f / -1 otherwise, age -1 when unknown, country code 0 when unknown,
registered in ms since epoch or -1.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from utils.baseline.summaries import summarize
from utils.baseline.summary_dir import load_country_vocab, load_summaries, load_user_ids
from utils.core import columns as C
from utils.core.config import CrawlParams, SessionParams, WorkLayout
from utils.core.stage_io import MANIFEST
from utils.data_processing.denormalize import denormalize
from utils.data_processing.denormalize_fields import USER_FILE
from utils.data_processing.profile_reader import read_profiles
from utils.data_processing.track_metadata import build_track_metadata
from utils.data_processing.tracks import build_unique_tracks

PROFILE_HEADER = "#id\tgender\tage\tcountry\tregistered"
UNKNOWN = -1
OFFLINE_API_URL = "http://localhost:1/"


@dataclass(frozen=True)
class Edge:
    """One profile line and what the pipeline must make of it (None = unknown)."""

    user: str
    gender: str
    age: str
    country: str
    registered: str
    gender_code: int
    age_at_registration: int | None
    country_text: str | None
    registered_date: dt.date | None

    def line(self) -> str:
        return "\t".join([self.user, self.gender, self.age, self.country, self.registered])

    def nullified(self) -> dict[str, int]:
        """Which non-empty values the reader must set missing (invalid, not absent)."""
        return {
            C.GENDER: int(self.gender != "" and self.gender_code == UNKNOWN),
            C.AGE: int(self.age != "" and self.age_at_registration is None),
            C.REGISTERED: int(self.registered != "" and self.registered_date is None),
        }


EDGES = [
    Edge("user_000101", "", "", "", "", UNKNOWN, None, None, None),
    Edge("user_000102", "m", "0", "Japan", "Aug 13, 2006", 1, 0, "Japan", dt.date(2006, 8, 13)),
    Edge("user_000103", "f", "150", "Korea, Republic of", "Feb 29, 2008", 0, None,
         "Korea, Republic of", dt.date(2008, 2, 29)),
    Edge("user_000104", "M", "-3", 'The "Quoted" Land', "Feb 30, 2007", UNKNOWN, None,
         'The "Quoted" Land', None),
    Edge("user_000105", "male", "abc", "C\u00f4te d'Ivoire", "2006-08-13", UNKNOWN, None,
         "C\u00f4te d'Ivoire", None),
    Edge("user_000106", "x", "99999999999999999999", "\u00c5land Islands", "aug 13, 2006",
         UNKNOWN, None, "\u00c5land Islands", None),
    Edge("user_000107", "f", "120", "\u4e2d\u56fd", "Dec 31, 1969", 0, 120, "\u4e2d\u56fd",
         dt.date(1969, 12, 31)),
    Edge("user_000108", "m", "121", '"', "Aug 13, 2006 ", 1, None, '"', None),
    Edge("user_000109", " m", "22.0", "Congo, the Democratic Republic of the", "Foo 1, 2006",
         UNKNOWN, None, "Congo, the Democratic Republic of the", None),
    Edge("user_000110", "f", " 22", "NA", "Jan 1, 1970", 0, None, "NA", dt.date(1970, 1, 1)),
    Edge("user_000111", "m", "\uff12\uff12", ",", "Aug 13, 0001", 1, None, ",",
         dt.date(1, 8, 13)),
    Edge("user_000112", "", "", "", "Feb 29, 2008", UNKNOWN, None, None, dt.date(2008, 2, 29)),
    Edge("user_000113", "m", "22", "", "", 1, 22, None, None),
    Edge("user_000114", "Unknown", "3", " ", "Feb 29, 2009", UNKNOWN, 3, " ", None),
    Edge("user_000115", "f", "+22", "null", "Dec 31, 9999", 0, None, "null",
         dt.date(9999, 12, 31)),
    Edge("NA", "m", "045", "nan", "Sep 31, 2006", 1, 45, "nan", None),
]
# Lines the reader must reject outright: they are counted, never joined.
REJECTED_PROFILE_LINES = [
    "../evil\tm\t22\tJapan\tAug 13, 2006",
    "user_000102\tf\t30\tPeru\tAug 13, 2006",
    "user_000120\tm\t22\tJapan",
]


def profile_text() -> str:
    lines = [PROFILE_HEADER, *(e.line() for e in EDGES), *REJECTED_PROFILE_LINES]
    return "\n".join(lines) + "\n"


def expected_nullified() -> dict[str, int]:
    totals = {C.GENDER: 0, C.AGE: 0, C.REGISTERED: 0}
    for edge in EDGES:
        for key, value in edge.nullified().items():
            totals[key] += value
    return totals


def write_raw(raw: Path, real_lines: list[bytes]) -> dict[str, list[bytes]]:
    """The excerpt's first listener cut into one block of real plays per edge profile."""
    listener = [line for line in real_lines if line.startswith(b"user_000001\t")]
    size = len(listener) // len(EDGES)
    blocks = {}
    for index, edge in enumerate(EDGES):
        block = listener[index * size:(index + 1) * size]
        blocks[edge.user] = [edge.user.encode() + line[len(b"user_000001"):] for line in block]
    raw.mkdir(parents=True)
    (raw / C.PLAYS_FILE).write_bytes(b"".join(line + b"\n" for b in blocks.values() for line in b))
    (raw / C.PROFILE_FILE).write_text(profile_text(), encoding="utf-8")
    return blocks


def whole_years(registered: dt.date, when: dt.datetime) -> int:
    """Whole years from a registration date (UTC midnight) to an instant."""
    return when.year - registered.year - ((when.month, when.day) < (registered.month,
                                                                     registered.day))


def expected_age(edge: Edge, session_start_ms: int) -> int:
    if edge.age_at_registration is None:
        return UNKNOWN
    if edge.registered_date is None:
        return edge.age_at_registration
    start = dt.datetime.fromtimestamp(session_start_ms / 1000, tz=dt.UTC)
    return edge.age_at_registration + whole_years(edge.registered_date, start)


def expected_registered_ms(edge: Edge) -> int:
    if edge.registered_date is None:
        return UNKNOWN
    return (edge.registered_date - dt.date(1970, 1, 1)).days * 86_400_000


@pytest.fixture(scope="module")
def real_lines(sample_dir: Path) -> list[bytes]:
    return (sample_dir / "plays-excerpt.tsv").read_bytes().split(b"\n")[:-1]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory, real_lines: list[bytes]) -> Path:
    """WORK after tracks, offline metadata, denormalize and summarize on the edge raw folder."""
    root = tmp_path_factory.mktemp("edges")
    write_raw(root / "raw", real_lines)
    work = root / "work"
    build_unique_tracks(root / "raw", work)
    build_track_metadata(work, CrawlParams(), None, OFFLINE_API_URL, progress=False)
    denormalize(root / "raw", work)
    summarize(work, SessionParams())
    return work


def test_reader_nullifies_and_counts_exactly(tmp_path: Path) -> None:
    path = tmp_path / C.PROFILE_FILE
    path.write_text(profile_text(), encoding="utf-8")
    result = read_profiles(path, tmp_path)
    assert result.rows_in == len(EDGES) + len(REJECTED_PROFILE_LINES)
    assert result.rows_rejected == len(REJECTED_PROFILE_LINES)
    assert result.nullified == expected_nullified() == {C.GENDER: 5, C.AGE: 9, C.REGISTERED: 7}
    rejects = pd.read_csv(result.rejects_path, keep_default_na=False)
    assert rejects["line_number"].tolist() == [18, 19, 20]
    assert [r.split(" ")[0] for r in rejects["reason"]] == ["invalid", "duplicate", "expected"]
    frame = result.frame.set_index(C.USER_ID)
    assert list(frame.index) == [e.user for e in EDGES]
    for edge in EDGES:
        row = frame.loc[edge.user]
        gender = {1: "m", 0: "f"}.get(edge.gender_code)
        assert (None if pd.isna(row[C.GENDER]) else row[C.GENDER]) == gender, edge.user
        age = None if pd.isna(row[C.AGE]) else int(row[C.AGE])
        assert age == edge.age_at_registration, edge.user
        country = None if pd.isna(row[C.COUNTRY]) else row[C.COUNTRY]
        assert country == edge.country_text, edge.user
        registered = None if pd.isna(row[C.REGISTERED]) else row[C.REGISTERED].date()
        assert registered == edge.registered_date, edge.user


def test_denormalize_manifest_counts_and_profile_text(pipeline: Path) -> None:
    layout = WorkLayout(pipeline)
    entry = json.loads((layout.user_dir / MANIFEST).read_text())["denormalize"]
    parameters = entry["parameters"]
    assert parameters["profile_values_nullified"] == expected_nullified()
    assert parameters["profile_rows_rejected"] == len(REJECTED_PROFILE_LINES)
    assert parameters["join_counts"]["users_without_profile"] == 0
    assert entry["rows_rejected"] == 0 and entry["rows_in"] == entry["rows_out"]
    for edge in EDGES:
        text = (layout.user_dir / edge.user / USER_FILE).read_text(encoding="utf-8")
        rows = list(csv.DictReader(io.StringIO(text, newline="")))
        assert {r[C.USER_ID] for r in rows} == {edge.user}
        # Quotes and commas survive the CSV round trip; unknown values are empty fields.
        assert {r[C.COUNTRY] for r in rows} == {edge.country_text or ""}, edge.user
        assert {r[C.GENDER] for r in rows} == {{1: "m", 0: "f"}.get(edge.gender_code, "")}
        registered = edge.registered_date.isoformat() if edge.registered_date else ""
        assert {r[C.REGISTERED] for r in rows} == {registered}, edge.user


def test_summary_rows_carry_the_unknown_encodings(pipeline: Path) -> None:
    sessions = pd.concat(load_summaries(pipeline).values(), ignore_index=True)
    ids = load_user_ids(pipeline).set_index("source_id")[C.USER_ID]
    # One id is not user_<digits>: every user gets its rank among the sorted source ids.
    assert ids.to_dict() == {u: i for i, u in enumerate(sorted(e.user for e in EDGES), start=1)}
    vocab = load_country_vocab(pipeline).set_index(C.COUNTRY)["code"]
    known = sorted({e.country_text for e in EDGES if e.country_text is not None})
    assert vocab.to_dict() == {country: code for code, country in enumerate(known, start=1)}
    for edge in EDGES:
        rows = sessions[sessions[C.USER_ID] == ids[edge.user]]
        assert len(rows) >= 5, edge.user
        assert set(rows[C.GENDER]) == {edge.gender_code}, edge.user
        want_country = vocab[edge.country_text] if edge.country_text is not None else 0
        assert set(rows[C.COUNTRY]) == {want_country}, edge.user
        assert set(rows[C.REGISTERED]) == {expected_registered_ms(edge)}, edge.user
        ages = [expected_age(edge, ms) for ms in rows[C.TIMESTAMP]]
        assert rows[C.AGE].tolist() == ages, edge.user


@pytest.mark.spark
@pytest.mark.slow
def test_spark_summaries_of_the_edge_profiles_are_the_same_bytes(
    pipeline: Path, tmp_path: Path
) -> None:
    # The Spark engine reads the same user_dir; "NA" and "nan" must stay text on both engines.
    work = tmp_path / "work"
    for stage in ("tracks", "user_dir"):
        shutil.copytree(pipeline / stage, work / stage)
    summarize(work, SessionParams(), engine="spark", spark_master="local[2]")
    local, spark = WorkLayout(pipeline).summary_dir, WorkLayout(work).summary_dir

    def outputs(folder: Path) -> dict[str, bytes]:
        return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
                if p.is_file() and p.name != MANIFEST}

    want, got = outputs(local), outputs(spark)
    assert got.keys() == want.keys() and len(want) > len(EDGES)
    assert [name for name in want if got[name] != want[name]] == []
