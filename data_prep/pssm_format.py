"""PSI-BLAST ASCII PSSM (`psiblast -out_ascii_pssm`) parsing, vectorised over the whole file text.

Layout of the files:

    <blank>
    Last position-specific scoring matrix computed, weighted observed percentages rounded down, ...
               A  R  N  D ... V   A   R   N ... V        <- 20 log-odds + 20 percentage columns
        1 M   -3 -3 -4 ...    0   0   0 ...  1.47 0.34   <- pos, residue, 20 + 20 ints, 2 floats
    ...
    <blank>
                          K         Lambda                <- statistics footer (marks a complete file)

Field widths differ between BLAST versions (log-odds in 3 or 4 columns) but within a file every
number is right-aligned in a fixed column. So the first row gives the end column of each
percentage field, and the 20 percentages of every row are read with one numpy gather of a
4-character word per field (a blank separator + 3 digits) decoded by a lookup table, with no
per-line Python; the decoding checks the alignment on every row. Each row is also checked to have
exactly 44 whitespace-separated tokens (the column count) and only numeric characters outside
the residue column.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# PSI-BLAST column order; kept in the shards. Loaders remap to the vocabulary's STANDARD order.
PSSM_ORDER = "ARNDCQEGHILKMFPSTWYV"
_STANDARD = "ACDEFGHIKLMNPQRSTVWY"
PSSM_TO_STANDARD = np.array([PSSM_ORDER.index(c) for c in _STANDARD])  # pssm[:, PSSM_TO_STANDARD]
MAX_ROW_CHARS = 4000  # far above any real row; keeps the int16 column count exact
TOKENS_PER_ROW = 44  # position, residue, 20 log-odds, 20 percentages, information, relative weight
HEADER_MARK = b"Last position-specific scoring matrix computed"


class PssmFormatError(ValueError):
    """The file is not a valid ASCII PSSM; `reason` is the reject reason, str() the detail."""

    def __init__(self, reason: str, detail: str, line: int | None = None):
        super().__init__(detail)
        self.reason, self.line = reason, line


@dataclass
class Pssm:
    sequence: str
    percent: np.ndarray   # (L, 20) uint8, PSI-BLAST column order
    zero_row: np.ndarray  # (L,) bool: no information at that position


_DIGIT = np.zeros(256, bool)
_DIGIT[np.frombuffer(b"0123456789", np.uint8)] = True
_BLANK = np.zeros(256, bool)
_BLANK[[9, 10, 13, 32]] = True
_SIGN = np.zeros(256, bool)
_SIGN[np.frombuffer(b"+-.", np.uint8)] = True
_LETTER = np.zeros(256, bool)
_LETTER[np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz", np.uint8)] = True


def parse_pssm(text: bytes) -> Pssm:
    """Parse one ASCII PSSM; raises PssmFormatError(reason, detail, line) on a bad file."""
    mark = text.find(HEADER_MARK)
    if mark < 0:
        raise PssmFormatError("not_a_pssm", "no 'Last position-specific scoring matrix' line", None)
    head_start = text.find(b"\n", mark) + 1
    head_end = text.find(b"\n", head_start)
    if head_start == 0 or head_end < 0:
        raise PssmFormatError("truncated", "file ends inside the header", None)
    header = np.frombuffer(text[head_start:head_end], np.uint8)
    letters = np.flatnonzero(_LETTER[header])
    if header[letters].tobytes() != PSSM_ORDER.encode() * 2:
        raise PssmFormatError("bad_header", "column header is not 2 x ARNDCQEGHILKMFPSTWYV", 3)
    body_start = head_end + 1
    footer = text.rfind(b"Lambda")
    body_end = text.rfind(b"\n\n", body_start, footer) if footer > 0 else -1
    if body_end < 0:
        raise PssmFormatError("truncated", "no end of matrix / statistics footer (file cut short?)", None)
    first_line = text.count(b"\n", 0, body_start) + 1  # 1-based line number of the first row
    b = np.frombuffer(text, np.uint8, count=body_end - body_start, offset=body_start)
    if len(b) == 0:
        raise PssmFormatError("empty", "matrix has no rows", first_line)

    # Rows and their column counts: a token starts where a non-blank follows a blank.
    nl = np.flatnonzero(b == 10)
    starts = np.concatenate(([0], nl + 1))
    ends = np.concatenate((nl, [len(b)]))
    n = len(starts)
    if (ends - starts > MAX_ROW_CHARS).any():
        i = int(np.flatnonzero(ends - starts > MAX_ROW_CHARS)[0])
        raise PssmFormatError("wrong_column_count", "row too long", first_line + i)
    filled = b > 32
    tok_start = np.empty(len(b), bool)
    tok_start[0] = filled[0]
    np.greater(filled[1:], filled[:-1], out=tok_start[1:])
    per_line = np.add.reduceat(tok_start.view(np.uint8), starts, dtype=np.int16)
    if (per_line != TOKENS_PER_ROW).any():
        i = int(np.flatnonzero(per_line != TOKENS_PER_ROW)[0])
        raise PssmFormatError("wrong_column_count", f"{per_line[i]} columns instead of {TOKENS_PER_ROW}",
                              first_line + i)

    # The residue (second token, one letter) must be the only byte above '9' in its row, and
    # below '0' only blanks and '+-.' may occur: everything else is a non-numeric entry.
    first_starts = np.flatnonzero(tok_start[:ends[0]])
    res = starts + int(first_starts[1])
    residues = b[res]
    punct = np.flatnonzero((b < 48) & filled)
    if (np.count_nonzero(b > 57) != n or not _LETTER[residues].all() or filled[res + 1].any()
            or not _SIGN[b[punct]].all()):
        bad = b > 57
        bad[res] = ~_LETTER[residues]
        bad[punct] |= ~_SIGN[b[punct]]
        pos = int(np.flatnonzero(bad)[0]) if bad.any() else int(res[np.flatnonzero(filled[res + 1])[0]])
        line = int(np.searchsorted(starts, pos, "right") - 1)
        raise PssmFormatError("non_numeric", f"non-numeric entry near {chr(b[pos])!r}", first_line + line)

    # Percentages: right-aligned 4-character fields (a blank + up to 3 digits) whose last columns
    # are taken from the first row (header letters sit one column left of them in some BLAST
    # versions). Each field is read as one little-endian uint32 and decoded by a table of the
    # 101 valid patterns "   0" .. " 100"; anything else (misaligned, not a number, > 100) is -1.
    row0 = filled[:ends[0]]
    first_ends = np.flatnonzero(row0 & ~np.append(row0[1:], False))
    field_start = first_ends[22:42] - 3
    if (ends - starts <= first_ends[41]).any():
        i = int(np.flatnonzero(ends - starts <= first_ends[41])[0])
        raise PssmFormatError("wrong_column_count", "row shorter than the first row", first_line + i)
    words = np.ndarray((len(b) - 3,), dtype="<u4", buffer=b, strides=(1,))
    fields = words[starts[:, None] + field_start[None, :]]
    percent = _percent_table()[fields >> 8]
    percent[(fields & 0xFF) != 32] = -1
    if (percent < 0).any():
        i = int(np.flatnonzero((percent < 0).any(axis=1))[0])
        raise PssmFormatError("bad_percentage", "percentage is not an aligned integer 0..100", first_line + i)
    percent = percent.astype(np.uint8)
    return Pssm(residues.tobytes().decode().upper(), percent, ~percent.any(axis=1))


_PERCENT_TABLE = None


def _percent_table() -> np.ndarray:
    """int8 table over 24-bit keys (3 characters, little-endian): value of "  7", " 42", "100"; else -1."""
    global _PERCENT_TABLE
    if _PERCENT_TABLE is None:
        table = np.full(1 << 24, -1, np.int8)
        for v in range(101):
            key = f"{v:>3d}".encode()
            table[key[0] | key[1] << 8 | key[2] << 16] = v
        _PERCENT_TABLE = table
    return _PERCENT_TABLE


def parse_pssm_lines(text: str) -> Pssm:
    """Reference parser, one str.split() per line (used to check and benchmark `parse_pssm`)."""
    lines = text.split("\n")
    i = next(k for k, line in enumerate(lines) if line.startswith("Last position-specific")) + 2
    seq, rows = [], []
    while i < len(lines) and lines[i].strip():
        parts = lines[i].split()
        if len(parts) != TOKENS_PER_ROW:
            raise PssmFormatError("wrong_column_count", f"{len(parts)} columns", i + 1)
        seq.append(parts[1])
        rows.append([int(x) for x in parts[22:42]])
        i += 1
    percent = np.array(rows, dtype=np.uint8).reshape(-1, 20)
    return Pssm("".join(seq).upper(), percent, ~percent.any(axis=1))
