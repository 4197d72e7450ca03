"""Vectorised FASTA block parser: whole byte blocks -> Arrow columns, no per-residue Python.

A block is a bytes object holding whole records (the reader in `fasta_read` cuts blocks at
record starts). Everything is numpy over the whole block: find '>' and whitespace positions, mask
header lines and whitespace, compact, translate bytes to token ids with one 256-entry table, and
build Arrow string and list arrays straight from offsets. Python loops run only over the (rare)
rejected records.

Rejection reasons, first match wins (also documented in docs/data_prep.md):
  before_first_header   text before the first '>' line of a file (counted as one record)
  missing_id            header with no id ('>' followed by nothing or blanks)
  empty_sequence        no residues
  digits                a digit inside the sequence
  stop_inside           '*' that is not the last residue (one trailing '*' stop is stripped)
  gap                   '-' alignment gap
  invalid_character     any other byte not in the vocabulary (letters J, '.', non-ASCII, ...)
  too_short / too_long  length outside [min_length, max_length] (after stripping a trailing '*')
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .errors import DataPrepError
from .vocab import BYTE_TO_ID, RESIDUES, UNK_ID

# Byte classes, ordered by rejection priority (lower code wins inside one record).
OK, DIGIT, STAR, GAP, INVALID = 0, 1, 2, 3, 4
CLASS_REASON = {DIGIT: "digits", STAR: "stop_inside", GAP: "gap", INVALID: "invalid_character"}


def _tables():
    cls = np.full(256, INVALID, np.uint8)
    for ch in RESIDUES + RESIDUES.lower():
        cls[ord(ch)] = OK
    cls[np.frombuffer(b"0123456789", np.uint8)] = DIGIT
    cls[ord("*")] = STAR
    cls[ord("-")] = GAP
    upper = np.arange(256, dtype=np.uint8)
    upper[ord("a"):ord("z") + 1] -= 32
    white = np.zeros(256, bool)
    white[[9, 10, 11, 12, 13, 32]] = True
    # Control bytes other than whitespace never occur in a text FASTA: they mean binary data.
    control = np.zeros(256, bool)
    control[:32] = True
    control[[9, 10, 11, 12, 13]] = False
    control[127] = True
    return cls, upper, white, control


BYTE_CLASS, BYTE_UPPER, BYTE_WHITE, BYTE_CONTROL = _tables()
_TO_ID, _UPPER = BYTE_TO_ID.tobytes(), BYTE_UPPER.tobytes()  # bytes.translate tables

SEQUENCE_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("description", pa.string()),
    ("sequence", pa.string()),
    ("length", pa.int32()),
    ("tokens", pa.list_(pa.uint8())),
])


@dataclass
class ParsedBlock:
    """Records of one block: the written table plus everything needed for rejects/accounting."""
    table: pa.Table                      # SEQUENCE_SCHEMA rows that passed validation
    record_index: np.ndarray             # per written row: index of its record in the block
    line: np.ndarray                     # per written row: 0-based header line in the block
    n_records: int                       # records owned by the block (preamble counts as one)
    rejects: list[dict] = field(default_factory=list)  # {record_index, id, line (0-based), reason}
    stripped_stops: int = 0              # trailing '*' removed


def _gather_ranges(a: np.ndarray, starts: np.ndarray, ends: np.ndarray):
    """Concatenate a[starts[i]:ends[i]] for all i (vectorised); returns bytes and int32 offsets."""
    lens = np.maximum(ends - starts, 0)
    offsets = np.zeros(len(lens) + 1, np.int64)
    np.cumsum(lens, out=offsets[1:])
    idx = np.arange(offsets[-1], dtype=np.int64) + np.repeat(starts - offsets[:-1], lens)
    return a[idx], offsets


def _next_position(positions: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """For each i: the first value of sorted `positions` in [lo[i], hi[i]), else hi[i]."""
    if len(positions) == 0:
        return hi.copy()
    j = np.searchsorted(positions, lo)
    found = positions[np.minimum(j, len(positions) - 1)]
    return np.where((j < len(positions)) & (found < hi), found, hi)


def _string_array(data: np.ndarray, offsets: np.ndarray) -> pa.Array:
    arr = pa.StringArray.from_buffers(len(offsets) - 1, pa.py_buffer(offsets.astype(np.int32)),
                                      pa.py_buffer(np.ascontiguousarray(data)))
    try:
        arr.validate(full=True)
    except pa.ArrowInvalid:  # non-UTF-8 header text: decode leniently, one string at a time
        raw = data.tobytes()
        arr = pa.array([raw[offsets[i]:offsets[i + 1]].decode("utf-8", "replace")
                        for i in range(len(offsets) - 1)], pa.string())
    return arr


def parse_block(data: bytes, *, source: str = "<block>", file_start: bool = True,
                byte_offset: int = 0, min_length: int = 1, max_length: int | None = None) -> ParsedBlock:
    """Parse a block of whole FASTA records.

    file_start: the block begins at byte 0 of its file; text before the first header is then a
    `before_first_header` reject. Otherwise that prefix is the tail of a record owned by the
    previous block and is skipped. data[0] is assumed to sit at a line start.
    byte_offset: where the block sits in its file, only for error messages.
    """
    a = np.frombuffer(data, np.uint8)
    n = len(a)
    # Bytes <= 32 are few (newlines, blanks): find them once; control bytes among them = binary data.
    wpos = np.flatnonzero(a <= 32)
    bad = wpos[~BYTE_WHITE[a[wpos]]]
    if len(bad):
        raise DataPrepError(f"{source}: binary data (byte 0x{a[bad[0]]:02x}) at byte "
                            f"{byte_offset + int(bad[0])}; not a text FASTA file")
    nl = np.flatnonzero(a == 10)
    gt = np.flatnonzero(a == 62)
    if len(gt):
        at_line_start = np.ones(len(gt), bool)
        inner = gt > 0
        at_line_start[inner] = a[gt[inner] - 1] == 10
        hs = gt[at_line_start]                       # header starts ('>')
    else:
        hs = gt
    rejects: list[dict] = []
    n_pre = 0
    first = int(hs[0]) if len(hs) else n
    if file_start and first > 0 and not BYTE_WHITE[a[:first]].all():
        # Text before the first header: one reject record, at the first non-blank line.
        first_text = int(np.flatnonzero(~BYTE_WHITE[a[:first]])[0])
        rejects.append({"record_index": 0, "id": None, "reason": "before_first_header",
                        "line": int(np.searchsorted(nl, first_text))})
        n_pre = 1
    nrec = len(hs)
    if nrec == 0:
        return ParsedBlock(pa.Table.from_batches([], SEQUENCE_SCHEMA), np.zeros(0, np.int64),
                           np.zeros(0, np.int64), n_pre, rejects)

    # Header line ends and sequence regions [seq_start, seq_end).
    k = np.searchsorted(nl, hs)
    he = np.where(k < len(nl), nl[np.minimum(k, len(nl) - 1)], n)
    seq_start = np.minimum(he + 1, n)
    seq_end = np.append(hs[1:], n)
    header_line = k                                   # 0-based line number of each header

    # Residues: every byte inside a sequence region that is not whitespace. The region mask is
    # built by np.repeat over alternating (outside, inside) segment lengths, whitespace cleared
    # by scatter, then one compaction.
    bounds = np.empty(2 * nrec + 2, np.int64)
    bounds[0] = 0
    bounds[1:-1:2] = seq_start
    bounds[2:-1:2] = seq_end
    bounds[-1] = n
    inside = np.zeros(2 * nrec + 1, bool)
    inside[1::2] = True
    in_seq = np.repeat(inside, np.diff(bounds))
    in_seq[wpos] = False
    seq = a[in_seq]
    n_white = np.searchsorted(wpos, seq_end) - np.searchsorted(wpos, seq_start)
    lengths = (seq_end - seq_start) - n_white
    offsets = np.zeros(nrec + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])

    # Tokens by one table lookup (bytes.translate: a C loop); bytes outside the vocabulary come
    # out as <unk>, and only those (rare) positions are classified for the reject reason.
    tokens = np.frombuffer(seq.tobytes().translate(_TO_ID), np.uint8)
    badpos = np.flatnonzero(tokens == UNK_ID)
    cls = BYTE_CLASS[seq[badpos]]
    stripped = 0
    if len(badpos):
        is_stop = (cls == STAR) & (badpos == offsets[np.searchsorted(offsets, badpos, "right")] - 1)
        if is_stop.any():  # a trailing '*' is a stop codon mark: strip it, it is not a residue
            stops = badpos[is_stop]
            seq = np.delete(seq, stops)
            tokens = np.delete(tokens, stops)
            rec = np.searchsorted(offsets, stops, "right") - 1
            lengths = lengths - np.bincount(rec, minlength=nrec)
            np.cumsum(lengths, out=offsets[1:])
            badpos = np.flatnonzero(tokens == UNK_ID)
            cls = BYTE_CLASS[seq[badpos]]
            stripped = int(len(stops))
    code = np.full(nrec, 255, np.uint8)
    if len(badpos):
        np.minimum.at(code, np.searchsorted(offsets, badpos, "right") - 1, cls)
    if np.count_nonzero(seq >= 97):  # lower case present: upper-case the sequence column
        seq = np.frombuffer(seq.tobytes().translate(_UPPER), np.uint8)

    # Headers: id = first word, description = the rest (trailing '\r' and blanks dropped).
    hdr, hoff = _gather_ranges(a, hs + 1, he)
    hlen = np.diff(hoff)
    hwhite = BYTE_WHITE[hdr]
    # The id ends at the first blank; '> X' (blank right after '>') has no id.
    first_white = _next_position(np.flatnonzero(hwhite), hoff[:-1], hoff[1:])
    id_len = first_white - hoff[:-1]
    ids_bytes, id_off = _gather_ranges(hdr, hoff[:-1], first_white)
    # The description: from the first non-blank after the id to the last non-blank.
    nonwhite = np.flatnonzero(~hwhite)
    d_start = _next_position(nonwhite, first_white, hoff[1:])
    last = np.searchsorted(nonwhite, hoff[1:]) - 1
    d_end = np.maximum(np.where(last >= 0, nonwhite[np.maximum(last, 0)] + 1 if len(nonwhite) else 0, 0),
                       d_start)
    desc_bytes, desc_off = _gather_ranges(hdr, d_start, d_end)

    # Reasons per record (first match wins).
    reason = np.zeros(nrec, np.uint8)   # 0 = written
    REASONS = ["", "missing_id", "empty_sequence", "digits", "stop_inside", "gap",
               "invalid_character", "too_short", "too_long"]
    conds = [id_len == 0, lengths == 0, code == DIGIT, code == STAR, code == GAP, code == INVALID,
             lengths < min_length,
             lengths > (max_length if max_length is not None else np.iinfo(np.int64).max)]
    for r in range(len(conds), 0, -1):  # lowest index has priority: apply it last
        reason[conds[r - 1]] = r
    ok = reason == 0

    ids = _string_array(ids_bytes, id_off)
    table = pa.Table.from_arrays([
        ids,
        _string_array(desc_bytes, desc_off),
        _string_array(seq, offsets),
        pa.array(lengths.astype(np.int32)),
        pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(tokens)),
    ], schema=SEQUENCE_SCHEMA)
    rec_index = np.arange(nrec, dtype=np.int64) + n_pre
    if not ok.all():
        bad_rec = np.flatnonzero(~ok)
        bad_ids = ids.take(pa.array(bad_rec)).to_pylist()
        for i, rid in zip(bad_rec.tolist(), bad_ids):
            rejects.append({"record_index": int(rec_index[i]), "id": rid or None,
                            "line": int(header_line[i]), "reason": REASONS[reason[i]]})
        table = table.filter(pa.array(ok))
    return ParsedBlock(table, rec_index[ok], header_line[ok], nrec + n_pre, rejects, stripped)
