"""Byte ranges of whole users for the Spark tasks: cuts, line accounting, per-range counts."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from utils.data_processing.plays_ranges import numbered_rejects, owned_start
from utils.data_processing.plays_reader import read_plays_arrow, read_plays_range

# Lines as the plays file may hold them: user fields repeated in blocks, lines without a tab,
# empty lines, and long fields (the look-back for a line's start crosses several steps).
LINE = st.tuples(st.sampled_from(["u1", "u2", "u3", "", "u1 x"]),
                 st.sampled_from(["\tA", "\tB\tC", "", "\t" + "x" * 70_000]))


def user_field(line: bytes) -> bytes:
    return line.split(b"\t", 1)[0]


@given(st.lists(st.tuples(LINE, st.integers(1, 4)), max_size=30), st.booleans(),
       st.lists(st.floats(0, 1), max_size=6))
def test_cuts_fall_between_blocks_and_every_line_is_in_one_range(
        blocks: list, terminated: bool, cuts: list[float]) -> None:
    lines = [(user + rest).encode() for (user, rest), count in blocks for _ in range(count)]
    data = b"\n".join(lines) + (b"\n" if terminated and lines else b"")
    fh = io.BytesIO(data)
    positions = sorted({0, len(data), *(int(c * len(data)) for c in cuts)})
    starts = [owned_start(fh, p) for p in positions]
    assert starts[0] == 0 and starts[-1] == len(data)
    assert starts == sorted(starts)
    for start in starts[1:-1]:
        if start < len(data):
            # A line starts here, and its user field differs from the line before.
            assert data[start - 1:start] == b"\n"
            before = data[:start - 1].rsplit(b"\n", 1)[-1]
            after = data[start:].split(b"\n", 1)[0]
            assert user_field(before) != user_field(after)


def test_ranges_read_the_lines_and_rejects_of_the_whole_file(tmp_path: Path) -> None:
    lines = [f"user_{u:06d}\t2009-01-01T00:{59 - i % 60:02d}:00Z\t\tA{i}\t\tT{i}"
             for u in range(1, 6) for i in range(200)]
    lines[10], lines[500] = "user_000001\tnot a time\t\tA\t\tB", ""
    path = tmp_path / "plays.tsv"
    path.write_text("\n".join(lines) + "\n")
    size = path.stat().st_size
    with open(path, "rb") as fh:
        bounds = [owned_start(fh, size * k // 7) for k in range(8)]
    parts = [read_plays_range(path, a, b, ["user_id", "timestamp"], ())
             for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    results = [{"lines": lines, "reject_lines": r.line_numbers.tolist(),
                "reject_reasons": r.reasons, "reject_texts": r.lines}
               for _, r, lines in (p for p in parts if p is not None)]
    rejects = numbered_rejects(results)
    whole = read_plays_arrow(path, tmp_path / "rejects", columns=["user_id", "timestamp"])
    assert sum(r["lines"] for r in results) == int(whole.schema.metadata[b"rows_in"]) == 1000
    assert rejects.line_numbers.tolist() == [11, 501]
    assert rejects.lines == [lines[10], ""]
    kept = [p[0] for p in parts if p is not None]
    assert sum(t.num_rows for t in kept) == whole.num_rows
    assert np.array_equal(
        np.concatenate([t["timestamp"].cast("int64").to_numpy() for t in kept]),
        whole["timestamp"].cast("int64").to_numpy())


def test_range_counts_count_spellings_and_in_session_gaps(tmp_path: Path) -> None:
    from utils.data_processing.tracks_spark import range_counts

    # Newest first per user, as Last.fm writes them; gaps of 60 s, 3,600 s (not in session)
    # and a tie (0 s, no gap).
    lines = [
        "u1\t2009-01-01T02:01:00Z\tm1\tA\t\tT",
        "u1\t2009-01-01T01:00:00Z\t\tA\t\tT",
        "u1\t2009-01-01T00:59:00Z\tm1\tA\t\tT",
        "u2\t2009-01-01T00:00:00Z\t\tB\t\tT",
        "u2\t2009-01-01T00:00:00Z\t\tA\t\tT",
    ]
    path = tmp_path / "plays.tsv"
    path.write_text("\n".join(lines) + "\n")
    plays, _, _ = read_plays_range(path, 0, path.stat().st_size,
                                   ["user_id", "timestamp", "artist_mbid", "artist_name",
                                    "track_mbid", "track_name"], ())
    got = sorted((tuple(row.values()) for row in range_counts(plays).to_pylist()), key=repr)
    assert got == sorted([
        ("A", "T", "m1", None, None, 2), ("A", "T", None, None, None, 2),
        ("B", "T", None, None, None, 1), ("A", "T", None, None, 60, 1)], key=repr)
