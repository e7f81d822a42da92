"""CSV text built column-wise with Arrow: minimal quoting and fixed-point numbers, byte-exact.

Both engines format every field with the rules here (the Spark side mirrors them in SQL), so the
files they write are identical byte for byte. Quoting is the standard minimal one (Python's
`csv.QUOTE_MINIMAL`, pandas' default): a field is quoted only when it holds a comma, a quote or a
line break, and quotes inside are doubled.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# A field needs quoting when it holds the delimiter, the quote character or a line break.
NEEDS_QUOTING = r'[,"\r\n]'


def concat(*parts: pa.Array | pa.ChunkedArray | str, sep: str = "") -> pa.Array | pa.ChunkedArray:
    """Element-wise string concatenation of large-string columns and literals."""
    return pc.binary_join_element_wise(
        *[pa.scalar(p, pa.large_string()) if isinstance(p, str) else p for p in parts],
        pa.scalar(sep, pa.large_string()),
    )


def quote_minimal(values: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """CSV text of string values: nulls become empty, fields with , " CR LF are quoted."""
    text = pc.fill_null(values.cast(pa.large_string()), "")
    quoted = concat('"', pc.replace_substring(text, '"', '""'), '"')
    return pc.if_else(pc.match_substring_regex(text, NEEDS_QUOTING), quoted, text)


def format_fixed(values: np.ndarray, decimals: int) -> pa.Array:
    """Numbers as fixed-point text with exactly `decimals` decimals (half rounded up); NaN -> null.

    Rounding goes through integers (floor(x * 10^d + 0.5)) so that the Spark side, which does
    the same arithmetic on the same doubles, writes the same digits.
    """
    values = np.asarray(values, dtype=np.float64)
    missing = np.isnan(values)
    scaled = np.floor(np.where(missing, 0.0, values) * 10.0**decimals + 0.5).astype(np.int64)
    magnitude = np.abs(scaled)
    text = pa.array(magnitude // 10**decimals).cast(pa.large_string())
    if decimals > 0:
        frac = pa.array(magnitude % 10**decimals).cast(pa.large_string())
        text = concat(text, pc.utf8_lpad(frac, decimals, "0"), sep=".")
    text = concat(pa.array(np.where(scaled < 0, "-", ""), pa.large_string()), text)
    return pc.if_else(pa.array(missing), pa.scalar(None, pa.large_string()), text)


def format_int(values: np.ndarray) -> pa.Array:
    """Integers as text."""
    return pa.array(np.asarray(values, dtype=np.int64)).cast(pa.large_string())


def fixed_width_text(rows: np.ndarray) -> pa.Array:
    """The rows of a byte matrix as strings (zero-copy: offsets every row width)."""
    width = rows.shape[1]
    offsets = np.arange(len(rows) + 1, dtype=np.int64) * width
    return pa.Array.from_buffers(pa.large_string(), len(rows),
                                 [None, pa.py_buffer(offsets), pa.py_buffer(rows)])


def equal_width_rows(values: pa.Array) -> np.ndarray | None:
    """Strings of one byte length as the rows of a byte matrix (zero-copy); None otherwise."""
    values = values.cast(pa.large_string())
    if values.null_count or not len(values):
        return None
    offsets = np.frombuffer(values.buffers()[1], dtype=np.int64)[
        values.offset:values.offset + len(values) + 1]
    widths = np.diff(offsets)
    if widths.min() != widths.max() or widths[0] == 0:
        return None
    data = np.frombuffer(values.buffers()[2], dtype=np.uint8)
    return data[offsets[0]:offsets[-1]].reshape(len(values), int(widths[0]))


def join_lines(fields: Sequence[pa.Array | pa.ChunkedArray]) -> pa.Array:
    """One CSV line per row (terminated by LF) from already-formatted text columns."""
    text = [pc.fill_null(f.cast(pa.large_string()), "") for f in fields]
    # The terminator rides on the last field: one full-width concatenation instead of two.
    lines = concat(*text[:-1], concat(text[-1], "\n"), sep=",")
    if isinstance(lines, pa.ChunkedArray):
        lines = lines.combine_chunks()
    return lines


def header_line(columns: Sequence[str]) -> bytes:
    """The CSV header line for `columns`."""
    return (",".join(columns) + "\n").encode("utf-8")


def line_block(lines: pa.Array, start: int, stop: int) -> memoryview:
    """The bytes of lines[start:stop] as one zero-copy slice of the Arrow value buffer."""
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int64)[lines.offset:]
    data = lines.buffers()[2]
    if data is None:
        return memoryview(b"")
    return memoryview(data)[offsets[start]:offsets[stop]]


def write_lines(path: Path, columns: Sequence[str], lines: pa.Array) -> None:
    """Write a header and every line of `lines` to `path`."""
    with open(path, "wb") as fh:
        fh.write(header_line(columns))
        fh.write(line_block(lines, 0, len(lines)))
