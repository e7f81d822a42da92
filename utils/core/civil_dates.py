"""UTC instants to calendar fields and ISO text with integer arithmetic on whole arrays.

numpy's datetime64 conversions (days -> months -> years) cost several passes each; the
days-to-civil-date algorithm below (proleptic Gregorian calendar, eras of 400 years) is a
dozen integer operations per array, exact for every day of years 0000-9999. Plays crowd onto
few days, so `Days` works the calendar out once per day and per second of the day, and each
instant only looks its day and second up.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from utils.core.csv_text import fixed_width_text

SECONDS_PER_DAY = 86_400
DAYS_PER_ERA = 146_097
# Days from 0000-03-01 to 1970-01-01: years start on 1 March, so a leap day ends its year.
EPOCH_SHIFT = 719_468
ISO_WIDTH = 20
LAST_YEAR = 9999
# Row k holds the two ASCII digits of k: one gather writes a two-digit field.
TWO_DIGITS = np.array([[48 + k // 10, 48 + k % 10] for k in range(100)], dtype=np.uint8)
# A day table spanning more days than this beyond the instants' count is built per instant.
SPAN_SLACK_DAYS = 366


def civil_from_days(days: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(year, month 1-12, day 1-31) of each day counted from 1970-01-01."""
    shifted = np.asarray(days, dtype=np.int64) + EPOCH_SHIFT
    era = np.floor_divide(shifted, DAYS_PER_ERA)
    day_of_era = shifted - era * DAYS_PER_ERA
    year_of_era = (day_of_era - day_of_era // 1460 + day_of_era // 36_524
                   - day_of_era // 146_096) // 365
    day_of_year = day_of_era - (365 * year_of_era + year_of_era // 4 - year_of_era // 100)
    month_from_march = (5 * day_of_year + 2) // 153
    day = day_of_year - (153 * month_from_march + 2) // 5 + 1
    month = np.where(month_from_march < 10, month_from_march + 3, month_from_march - 9)
    return year_of_era + era * 400 + (month <= 2), month, day


def _month_starts() -> tuple[np.ndarray, np.ndarray]:
    """(days since 1970-01-01 of the first day, length in days) of every month of years
    0000-9999, by months counted from January 0000: the inverse of `civil_from_days`."""
    year, month_index = np.divmod(np.arange((LAST_YEAR + 1) * 12 + 1), 12)
    # Years counted from March, so a leap day ends its year.
    march_year = year - (month_index < 2)
    era = np.floor_divide(march_year, 400)
    year_of_era = march_year - era * 400
    day_of_year = (153 * ((month_index + 10) % 12) + 2) // 5
    first = (era * DAYS_PER_ERA + year_of_era * 365 + year_of_era // 4 - year_of_era // 100
             + day_of_year - EPOCH_SHIFT)
    return first[:-1], np.diff(first)


MONTH_FIRST_DAY, MONTH_LENGTH = _month_starts()


def civil_days(year: np.ndarray, month: np.ndarray, day: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """Days since 1970-01-01 of calendar dates of years 0000-9999, and a mask of the dates
    that exist: two lookups in a table of every month, no calendar arithmetic per date."""
    year, month, day = (np.asarray(a, dtype=np.int64) for a in (year, month, day))
    index = np.clip(year, 0, LAST_YEAR) * 12 + np.clip(month, 1, 12) - 1
    exists = ((year >= 0) & (year <= LAST_YEAR) & (month >= 1) & (month <= 12) & (day >= 1)
              & (day <= MONTH_LENGTH[index]))
    return MONTH_FIRST_DAY[index] + day - 1, exists


def _text_rows(*fields: tuple[np.ndarray, bytes]) -> np.ndarray:
    """A byte matrix, one row per value: each field's two-digit pairs, then its literal bytes.

    A field is (values, literal): values 0-99 become two ASCII digits.
    """
    width = sum(2 + len(literal) for _, literal in fields)
    rows = np.empty((len(fields[0][0]), width), dtype=np.uint8)
    column = 0
    for values, literal in fields:
        rows[:, column:column + 2] = TWO_DIGITS[values]
        rows[:, column + 2:column + 2 + len(literal)] = np.frombuffer(literal, dtype=np.uint8)
        column += 2 + len(literal)
    return rows


def _clock_text() -> np.ndarray:
    """`HH:MM:SS` of every second of a day, each as the 8 bytes of one uint64."""
    second = np.arange(SECONDS_PER_DAY)
    hour, minute_second = np.divmod(second, 3_600)
    minute, second = np.divmod(minute_second, 60)
    return _text_rows((hour, b":"), (minute, b":"), (second, b"")).view("<u8").ravel()


CLOCK_TEXT = _clock_text()


def _column(matrix: np.ndarray, offset: int, dtype: str) -> np.ndarray:
    """Bytes `offset` onwards of every row of a byte matrix, seen as one `dtype` value per row
    (unaligned), so whole fields are stored with one assignment."""
    return np.ndarray((len(matrix),), dtype, matrix, offset, (matrix.strides[0],))


@dataclass(frozen=True)
class Days:
    """UTC instants split into a day and a second of that day, with each day's date worked out
    once: `year`, `month` and `day` are per day, `row` is each instant's day."""

    row: np.ndarray
    second_of_day: np.ndarray
    year: np.ndarray
    month: np.ndarray
    day: np.ndarray

    @classmethod
    def of(cls, seconds: np.ndarray) -> Days:
        """The days of `seconds` since the epoch."""
        days, second_of_day = np.divmod(np.asarray(seconds, dtype=np.int64), SECONDS_PER_DAY)
        first, last = (int(days.min()), int(days.max())) if len(days) else (0, -1)
        if last - first < len(days) + SPAN_SLACK_DAYS:
            # One table row per day of the span: an instant's row is its day's distance in.
            row, table_days = days - first, np.arange(first, last + 1)
        else:
            # Far-apart dates: a row per instant costs less than one per day between them.
            row, table_days = np.arange(len(days)), days
        return cls(row, second_of_day, *civil_from_days(table_days))

    def calendar_key(self) -> np.ndarray:
        """Per instant, (month * 32 + day) * 86400 + second of day: compares like the date and
        time within a year."""
        return (self.month * 32 + self.day)[self.row] * SECONDS_PER_DAY + self.second_of_day

    def write_iso(self, text: np.ndarray, column: int) -> None:
        """Write each instant as `2009-05-04T23:08:57Z` (years 0000-9999) into bytes
        column..column + 19 of its row of the byte matrix `text`.

        Field by field for all rows at once: a whole date or clock time is one unaligned
        8-byte store, gathered from text made once per day and per second of the day.
        """
        if not len(self.row):
            return
        # "YYYY-MM-" as 8 bytes and "DD" as 2, per day.
        year_month = _text_rows((self.year // 100, b""), (self.year % 100, b"-"),
                                (self.month, b"-")).view("<u8").ravel()
        day = TWO_DIGITS[self.day].view("<u2").ravel()
        _column(text, column, "<u8")[:] = year_month[self.row]
        _column(text, column + 8, "<u2")[:] = day[self.row]
        text[:, column + 10] = ord("T")
        _column(text, column + 11, "<u8")[:] = CLOCK_TEXT[self.second_of_day]
        text[:, column + 19] = ord("Z")

    def iso_text(self) -> pa.Array:
        """Each instant as `2009-05-04T23:08:57Z`: one fixed-width byte matrix, no per-value
        work."""
        text = np.empty((len(self.row), ISO_WIDTH), dtype=np.uint8)
        self.write_iso(text, 0)
        return fixed_width_text(text)

