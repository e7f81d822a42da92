"""Vocabularies: fit on train plays only, ids by frequency then name, unknown = 0."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from test_session_data import HOUR_MS, T0, make_work, session_plays, small_corpus

from utils.baseline.summary_dir import load_country_vocab
from utils.core import columns as C
from utils.core.config import WorkLayout
from utils.core.errors import SessionlenError, StageIncompleteError
from utils.core.stage_io import require_stage
from utils.models_with_clusters.final_dir import open_play_source
from utils.models_with_clusters.split_plays import iter_split_plays
from utils.models_with_clusters.vocab import (
    COUNT,
    ID,
    UNKNOWN_ID,
    Vocabulary,
    build_vocab,
    fit_vocab,
    named,
    read_vocab,
    read_vocabularies,
    vocab_overview,
    write_vocab,
)


def count_names(plays: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """How many plays each distinct, known key has (the counts the vocabulary is fit on)."""
    counts = named(plays, keys).groupby(keys, sort=False, observed=True).size()
    return counts.rename(COUNT).reset_index()


def test_ids_by_descending_count_then_name() -> None:
    counts = pd.DataFrame({C.ARTIST_NAME: ["b", "a", "c", "a", "d"], COUNT: [2, 1, 5, 1, 2]})
    table = fit_vocab(counts, [C.ARTIST_NAME])
    assert table[C.ARTIST_NAME].tolist() == ["c", "a", "b", "d"]
    assert table[ID].tolist() == [1, 2, 3, 4]
    assert table[COUNT].tolist() == [5, 2, 2, 2]


def test_encode_maps_unseen_and_empty_names_to_unknown() -> None:
    plays = pd.DataFrame({C.ARTIST_NAME: ["x", "y", "x", ""], C.TRACK_NAME: ["1", "1", "2", "3"]})
    tracks = Vocabulary(fit_vocab(count_names(plays, [C.ARTIST_NAME, C.TRACK_NAME]),
                                  [C.ARTIST_NAME, C.TRACK_NAME]), [C.ARTIST_NAME, C.TRACK_NAME])
    assert len(tracks) == 4  # three known pairs + the unknown id; ("", "3") is unknown
    query = pd.DataFrame({C.ARTIST_NAME: ["x", "y", "z", "y", ""],
                          C.TRACK_NAME: ["2", "1", "1", "2", "3"]})
    ids = tracks.encode(query)
    assert ids[2] == ids[3] == ids[4] == UNKNOWN_ID
    assert ids[0] != ids[1] and min(ids[0], ids[1]) >= 1


def test_names_round_trip_through_the_file(tmp_path: Path) -> None:
    names = ['Quote "Band", The', "NA", "null", "Ünïcode ☃", "multi\nline"]
    table = fit_vocab(pd.DataFrame({C.ARTIST_NAME: names, COUNT: [5, 4, 3, 2, 1]}),
                      [C.ARTIST_NAME])
    write_vocab(table, tmp_path / "artists.csv")
    back = read_vocab(tmp_path / "artists.csv", [C.ARTIST_NAME])
    assert back.table[C.ARTIST_NAME].tolist() == names
    assert back.encode(pd.DataFrame({C.ARTIST_NAME: ["NA", "nope"]})).tolist() == [2, 0]


def test_read_vocab_errors(tmp_path: Path) -> None:
    with pytest.raises(SessionlenError, match="not found"):
        read_vocab(tmp_path / "missing.csv", [C.ARTIST_NAME])
    (tmp_path / "bad.csv").write_text("foo,bar\n1,2\n")
    with pytest.raises(SessionlenError, match="bad.csv: not a vocabulary"):
        read_vocab(tmp_path / "bad.csv", [C.ARTIST_NAME])


def test_build_vocab_fits_on_train_plays_only(tmp_path: Path) -> None:
    early = [session_plays("u1", T0 + i * 4 * HOUR_MS, [("old", "a"), ("old", "a"), ("two", "b")])
             for i in range(8)]
    late = [session_plays("u1", T0 + i * 4 * HOUR_MS, [("test only", "c")] * 5)
            for i in range(8, 10)]
    work = make_work(tmp_path, pd.concat(early + late))
    result = build_vocab(work)
    artists = read_vocabularies(work)["artists"].table
    assert artists[C.ARTIST_NAME].tolist() == ["old", "two"]
    assert artists[COUNT].tolist() == [14, 7]  # 7 train sessions at the default 70/10/20
    assert result["train_plays"] == 21 and result["plays"] == 34
    entry = require_stage(WorkLayout(work).final_dir, "vocab")
    assert entry["rows_in"] == 34


def test_vocab_counts_match_the_train_split(tmp_path: Path) -> None:
    work = make_work(tmp_path)
    build_vocab(work)
    users = list(iter_split_plays(open_play_source(WorkLayout(work))))
    train = pd.concat(
        u.tracks.iloc[u.rows.loc[u.in_split("train"), C.TRACK_NAME]] for u in users)
    vocabs = read_vocabularies(work)
    tracks = vocabs["tracks"].table
    named = train[train[C.TRACK_NAME] != ""]
    assert tracks[COUNT].sum() == len(named)
    assert tracks[COUNT].is_monotonic_decreasing
    countries = vocabs["countries"].table
    codes = load_country_vocab(work)
    assert countries[ID].tolist() == codes["code"].tolist()
    assert countries[COUNT].sum() == len(train)
    overview = vocab_overview(work, top=2)
    assert set(overview["vocabulary"]) == {"artists", "tracks", "countries"}


def test_build_vocab_needs_summarize(tmp_path: Path) -> None:
    with pytest.raises(StageIncompleteError, match="denormalize"):
        build_vocab(tmp_path)
    work = make_work(tmp_path, small_corpus(users=1))
    (WorkLayout(work).summary_dir / "_manifest.json").unlink()
    with pytest.raises(StageIncompleteError, match="sessionlen summarize"):
        build_vocab(work)
