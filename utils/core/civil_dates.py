"""UTC instants to calendar fields and ISO text with integer arithmetic on whole arrays.

numpy's datetime64 conversions (days -> months -> years) cost several passes each; the
days-to-civil-date algorithm below (proleptic Gregorian calendar, eras of 400 years) is a
dozen integer operations per array, exact for every day of years 0000-9999.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

SECONDS_PER_DAY = 86_400
DAYS_PER_ERA = 146_097
# Days from 0000-03-01 to 1970-01-01: years start on 1 March, so a leap day ends its year.
EPOCH_SHIFT = 719_468
ISO_WIDTH = 20
ISO_PATTERN = np.frombuffer(b"0000-00-00T00:00:00Z", dtype=np.uint8)
# Row k holds the two ASCII digits of k: one gather writes a two-digit field.
TWO_DIGITS = np.array([[48 + k // 10, 48 + k % 10] for k in range(100)], dtype=np.uint8)


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


def iso_utc_text(seconds: np.ndarray) -> pa.Array:
    """Seconds since the epoch as `2009-05-04T23:08:57Z` (years 0000-9999), fixed width.

    The text is written digit pair by digit pair into one byte matrix whose rows are the
    strings: the Arrow array is that matrix with offsets every 20 bytes, no per-value work.
    """
    seconds = np.asarray(seconds, dtype=np.int64)
    days, second_of_day = np.divmod(seconds, SECONDS_PER_DAY)
    year, month, day = civil_from_days(days)
    hour, minute_second = np.divmod(second_of_day, 3_600)
    minute, second = np.divmod(minute_second, 60)
    text = np.empty((len(seconds), ISO_WIDTH), dtype=np.uint8)
    text[:] = ISO_PATTERN
    for column, value in ((0, year // 100), (2, year % 100), (5, month), (8, day), (11, hour),
                          (14, minute), (17, second)):
        text[:, column:column + 2] = TWO_DIGITS[value]
    offsets = np.arange(len(seconds) + 1, dtype=np.int64) * ISO_WIDTH
    return pa.Array.from_buffers(pa.large_string(), len(seconds),
                                 [None, pa.py_buffer(offsets), pa.py_buffer(text)])
