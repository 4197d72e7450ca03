"""Cutting FASTA files into blocks of whole records.

Plain files are split into fixed byte ranges; a range owns the records whose '>' (at a line start)
lies inside it, and its block runs from the range start to the end of its last owned record (the
bytes before its first owned '>' belong to the previous range's last record and are skipped by
the parser). So ranges are read in parallel, every record is read exactly once, and the result does
not depend on how many workers there are. Gzip files cannot be split: one reader streams them in
chunks cut at record starts.
"""
from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import DataPrepError

GZIP_MAGIC = b"\x1f\x8b"
EXTEND_CHUNK = 1 << 20


@dataclass(frozen=True)
class ByteRange:
    """One unit of parallel work: [start, end) of a plain file, or a whole gzip file (end = -1)."""
    task: int
    source: str
    start: int
    end: int
    gzip: bool = False


def is_gzip(path: str | Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == GZIP_MAGIC


def plan_ranges(paths: list[str], block_size: int) -> list[ByteRange]:
    """Fixed-size byte ranges for every input (gzip files: one range each), in input order."""
    ranges: list[ByteRange] = []
    for path in paths:
        p = Path(path)
        if not p.is_file():
            raise DataPrepError(f"{path}: no such file")
        if is_gzip(p):
            ranges.append(ByteRange(len(ranges), str(path), 0, -1, gzip=True))
            continue
        size = p.stat().st_size
        for start in range(0, max(size, 1), block_size):
            ranges.append(ByteRange(len(ranges), str(path), start, min(start + block_size, size)))
    return ranges


def _has_record_start(data: bytes, at_line_start: bool) -> bool:
    return (at_line_start and data[:1] == b">") or data.find(b"\n>") >= 0


def read_range(path: str, start: int, end: int) -> tuple[bytes, bool, int, int]:
    """Bytes of the records owned by [start, end).

    Returns (block, file_start, skipped_newlines, owned_newlines): block[0] sits at a line start;
    skipped_newlines = newlines between `start` and the block start (0 or 1); owned_newlines =
    newlines in [start, end), which the caller sums to turn block-local into file line numbers.
    """
    with open(path, "rb") as f:
        if start > 0:
            f.seek(start - 1)
            at_line_start = f.read(1) == b"\n"
        else:
            at_line_start = True
        data = f.read(end - start)
        owned_newlines = data.count(b"\n")
        skipped = 0
        if not at_line_start:  # the first partial line is the tail of an earlier record
            cut = data.find(b"\n")
            data = data[cut + 1:] if cut >= 0 else b""
            skipped = 1 if cut >= 0 else 0
            cut_len = end - start - len(data)
        else:
            cut_len = 0
        if not data or not _has_record_start(data, True):
            # No record starts here: the range is all continuation (or a preamble at file start).
            return (data if start == 0 else b""), start == 0, skipped, owned_newlines
        # Extend to the next record start at or after `end` (a '>' right after a newline).
        own = end - start - cut_len
        search_from = max(own - 1, 0)
        while True:
            hit = data.find(b"\n>", search_from)
            if hit >= 0 and hit + 1 >= own:
                return data[:hit + 1], start == 0, skipped, owned_newlines
            more = f.read(EXTEND_CHUNK)
            if not more:
                return data, start == 0, skipped, owned_newlines
            search_from = max(len(data) - 1, search_from)
            data += more


def iter_gzip_blocks(path: str, chunk_size: int) -> Iterator[tuple[bytes, bool, int]]:
    """Decompress a gzip FASTA and yield (block, file_start, newlines_before_block) of whole records."""
    carry = b""
    newlines = 0
    first = True
    try:
        with gzip.open(path, "rb") as f:
            while True:
                chunk = f.read(chunk_size)
                if not chunk:
                    break
                buf = carry + chunk
                cut = buf.rfind(b"\n>")
                if cut < 0:
                    carry = buf
                    continue
                block, carry = buf[:cut + 1], buf[cut + 1:]
                yield block, first, newlines
                newlines += block.count(b"\n")
                first = False
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as err:
        raise DataPrepError(f"{path}: truncated or corrupt gzip ({err})") from None
    if carry or first:
        yield carry, first, newlines


def fasta_lengths(path: str | Path) -> np.ndarray:
    """Sequence lengths of a plain FASTA file, in file order (for batching studies and benches)."""
    lengths, n, seen = [], 0, False
    with open(path) as fh:
        for line in fh:
            if line.startswith(">"):
                if seen:
                    lengths.append(n)
                n, seen = 0, True
            else:
                n += len(line.strip())
    if seen:
        lengths.append(n)
    return np.asarray(lengths, dtype=np.int64)
