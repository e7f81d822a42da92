"""The reader of the raw profile file: one typed row per user, invalid values set missing.

A line with a bad user id, or a user id an earlier line has, is rejected; a gender, age or
registration date that does not parse is set missing and counted. Splitting and reject
accounting are `utils.data_processing.raw_lines`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from utils.core.civil_dates import civil_days
from utils.core.columns import (
    AGE,
    COUNTRY,
    GENDER,
    PROFILE_COLUMNS,
    PROFILE_HEADER,
    REGISTERED,
    USER_ID,
)
from utils.core.errors import SessionlenError
from utils.core.stage_io import require_file
from utils.data_processing.raw_lines import (
    BAD_USER_ID,
    DUPLICATE_USER,
    OK,
    STRING,
    LineSplit,
    ReadResult,
    check_mostly_valid,
    split_lines,
    string_types,
    valid_user_ids,
    write_rejects,
)

MAX_AGE = 120
PROFILE_EXPECTED = (
    "a header line '#id<TAB>gender<TAB>age<TAB>country<TAB>registered' then 5 tab-separated "
    "fields per line, UTF-8"
)

_MONTHS = {m: i for i, m in enumerate(
    ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"], start=1)}
_UTC_MS = "datetime64[ms, UTC]"


def _split_profile_header(path: Path, raw: bytes) -> bytes:
    """The body of a profile file after checking its header line; one-line error otherwise."""
    header, _, body = raw.partition(b"\n")
    if header.split(b"\t") != [name.encode() for name in PROFILE_HEADER]:
        shown = header[:80].decode("utf-8", errors="replace")
        raise SessionlenError(
            f"{path}: not a Last.fm 1K profile file: line 1 is {shown!r}; "
            f"expected {PROFILE_EXPECTED}"
        )
    return body if not body or body.endswith(b"\n") else body + b"\n"


def _gender(raw: pd.Series) -> tuple[pd.Series, int]:
    """`m`/`f` kept, anything else missing; count of non-empty values that were invalid."""
    valid = raw.isin(["m", "f"])
    return raw.where(valid).astype(STRING), int((~valid & (raw != "")).sum())


def _age(raw: pd.Series) -> tuple[pd.Series, int]:
    """Whole ages 0..MAX_AGE as Int64, anything else missing; count of invalid non-empty values."""
    digits = raw.str.fullmatch(r"\d{1,3}").fillna(False).astype(bool)
    age = pd.to_numeric(raw.where(digits), errors="coerce").astype("Int64")
    age = age.where(age <= MAX_AGE)
    return age, int((age.isna() & (raw != "")).sum())


def _registered(raw: pd.Series) -> tuple[pd.Series, int]:
    """`Aug 13, 2006` dates as UTC midnight (locale-independent); count of unparseable values."""
    parts = raw.str.extract(r"^([A-Z][a-z]{2}) (\d{1,2}), (\d{4})$")
    month = parts[0].map(_MONTHS).astype("Int64")
    found = (parts[1].notna() & month.notna()).to_numpy(dtype=bool)
    numbers = [pd.to_numeric(p).fillna(0).to_numpy(dtype=np.int64)
               for p in (parts[2], month, parts[1])]
    days, ok = civil_days(*numbers)
    ok &= found
    ms = np.where(ok, days * 86_400_000, 0)
    dates = pd.Series(pd.to_datetime(ms, unit="ms", utc=True), index=raw.index).where(ok)
    return dates.astype(_UTC_MS), int((~ok & (raw != "").to_numpy(dtype=bool)).sum())


def _profile_values(split: LineSplit) -> tuple[pd.DataFrame, dict[str, int]]:
    """Typed profile columns of the kept lines, invalid values set missing and counted."""
    user, gender, age, country, registered = (
        pd.Series(split.field(j).to_pandas(types_mapper=string_types), dtype=STRING)
        for j in range(len(PROFILE_COLUMNS)))
    genders, bad_gender = _gender(gender)
    ages, bad_age = _age(age)
    dates, bad_date = _registered(registered)
    frame = pd.DataFrame({
        USER_ID: user, GENDER: genders, AGE: ages,
        COUNTRY: country.where(country != "").astype(STRING), REGISTERED: dates,
    })
    return frame, {GENDER: bad_gender, AGE: bad_age, REGISTERED: bad_date}


def read_profiles(path: Path, rejects_dir: Path | None = None) -> ReadResult:
    """Read the profile file: one typed row per user; invalid values missing and counted."""
    path = require_file(Path(path), "profile file")
    body = _split_profile_header(path, path.read_bytes())
    split = split_lines(np.frombuffer(body, dtype=np.uint8), len(PROFILE_COLUMNS))
    split.reject(np.where(valid_user_ids(split.field(0)), OK, BAD_USER_ID).astype(np.int8))
    # A second profile for a user would duplicate that user's plays in the join.
    duplicated = split.field(0).to_pandas().duplicated().to_numpy()
    split.reject(np.where(duplicated, DUPLICATE_USER, OK).astype(np.int8))
    rejects = split.rejects(len(PROFILE_COLUMNS), with_text=True)
    # Line 1 is the header, so the first user is on line 2.
    rejects.line_numbers += 1
    rows_in = len(split.ends)
    check_mostly_valid(path, "profile", PROFILE_EXPECTED, rows_in, rejects)
    frame, nullified = _profile_values(split)
    target = write_rejects(path, rejects_dir, rejects)
    return ReadResult(frame, rows_in, len(rejects.line_numbers), target, nullified)
