"""Vectorised FASTA block parser: whole byte blocks -> Arrow columns, no per-residue Python.

A block is a bytes object holding whole records (the reader in `fasta_read` cuts blocks at
record starts). Every step runs in C over the whole block, touching each byte a few times:
  1. numpy finds the bytes <= 32 (newlines, blanks: about 1 in 60) and from them the header
     starts ('>' after a newline) and header ends;
  2. Arrow's `take` over cells laid on the block concatenates the sequence regions (one memcpy
     per record) and the headers;
  3. `bytes.translate` with the vocabulary's 256-entry table deletes whitespace and turns
     letters into token ids in one pass, and a second table turns ids back into upper-case
     letters for the `sequence` column;
  4. the binary `tokens` and string `sequence` columns are made from these buffers plus offsets.
A byte outside the vocabulary comes out as <unk>; only then (memchr finds one) are the bad bytes
classified for the reject reason. Python loops run only over the (rare) rejected records.

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

from .errors import DataPrepError
from .shards import binary_array
from .vocab import BYTE_TO_ID, ID_TO_BYTE, RESIDUES, UNK_ID

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
    white = np.zeros(256, bool)
    white[[9, 10, 11, 12, 13, 32]] = True
    # Control bytes other than whitespace never occur in a text FASTA: they mean binary data.
    control = np.zeros(256, bool)
    control[:32] = True
    control[[9, 10, 11, 12, 13]] = False
    control[127] = True
    return cls, white, control


BYTE_CLASS, BYTE_WHITE, BYTE_CONTROL = _tables()
# bytes.translate tables (one C pass each): bytes -> token ids, token ids -> letters
_TO_ID, _TO_LETTER = BYTE_TO_ID.tobytes(), ID_TO_BYTE.tobytes()
_WHITE = bytes(np.flatnonzero(BYTE_WHITE).astype(np.uint8))  # deleted inside sequences
_UNK = bytes([UNK_ID])

SEQUENCE_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("description", pa.string()),
    ("sequence", pa.string()),
    ("length", pa.int32()),
    ("tokens", pa.binary()),    # one uint8 residue id per residue (docs/contracts.md)
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


def _concat_ranges(data: bytes | pa.Buffer, starts: np.ndarray, ends: np.ndarray) -> tuple[bytes, np.ndarray]:
    """data[starts[i]:ends[i]] for all i, concatenated; ranges sorted and disjoint.

    Arrow's `take` over cells laid on `data` copies each range with one memcpy (a numpy gather
    would need an 8-byte index per byte). Returns the bytes and int64 offsets [len(starts)+1]."""
    k = len(starts)
    bounds = np.empty(2 * k + 2, np.int64)   # cells: [0, s0), [s0, e0), [e0, s1), ..., [e_k-1, end)
    bounds[0], bounds[-1] = 0, len(data)
    bounds[1:-1:2], bounds[2:-1:2] = starts, ends
    cells = pa.Array.from_buffers(pa.large_binary(), 2 * k + 1, [None, pa.py_buffer(bounds), pa.py_buffer(data)])
    picked = cells.take(pa.array(np.arange(1, 2 * k, 2)))
    _, off_buf, data_buf = picked.buffers()
    offsets = np.frombuffer(off_buf, np.int64)[:k + 1]
    out = data_buf[offsets[0]:offsets[-1]].to_pybytes() if data_buf is not None and k else b""
    return out, offsets - offsets[0]


def _next_position(positions: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """For each i: the first value of sorted `positions` in [lo[i], hi[i]), else hi[i]."""
    if len(positions) == 0:
        return hi.copy()
    j = np.searchsorted(positions, lo)
    found = positions[np.minimum(j, len(positions) - 1)]
    return np.where((j < len(positions)) & (found < hi), found, hi)


def _string_array(data: bytes, offsets: np.ndarray) -> pa.Array:
    arr = binary_array(np.frombuffer(data, np.uint8), offsets, arrow_type=pa.string())
    try:
        arr.validate(full=True)
    except pa.ArrowInvalid:  # non-UTF-8 header text: decode leniently, one string at a time
        arr = pa.array([data[offsets[i]:offsets[i + 1]].decode("utf-8", "replace")
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
    wbytes = a[wpos]
    bad = wpos[~BYTE_WHITE[wbytes]]
    if len(bad):
        raise DataPrepError(f"{source}: binary data (byte 0x{a[bad[0]]:02x}) at byte "
                            f"{byte_offset + int(bad[0])}; not a text FASTA file")
    nl = wpos[wbytes == 10]
    after_nl = nl[nl + 1 < n] + 1
    hs = after_nl[a[after_nl] == 62]                 # header starts: '>' at a line start
    if n and a[0] == 62:
        hs = np.concatenate([[0], hs])
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
        return ParsedBlock(SEQUENCE_SCHEMA.empty_table(), np.zeros(0, np.int64), np.zeros(0, np.int64),
                           n_pre, rejects)

    # Header line ends (their newline, or the block end); record i's sequence region is
    # [he[i], hs[i+1]): its residues plus whitespace, which the translate deletes.
    k = np.searchsorted(nl, hs)
    he = np.where(k < len(nl), nl[np.minimum(k, len(nl) - 1)], n)
    seq_end = np.append(hs[1:], n)
    header_line = k                                   # 0-based line number of each header
    buf = pa.py_buffer(data)
    raw, _ = _concat_ranges(buf, he, seq_end)
    tokens = raw.translate(_TO_ID, _WHITE)
    lengths = (seq_end - he) - (np.searchsorted(wpos, seq_end) - np.searchsorted(wpos, he))
    offsets = np.zeros(nrec + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])

    # Bytes outside the vocabulary came out as <unk>: classify only those (rare).
    code = np.full(nrec, 255, np.uint8)
    stripped = 0
    if tokens.find(_UNK) >= 0:
        tok = np.frombuffer(tokens, np.uint8)
        orig = np.frombuffer(raw.translate(None, _WHITE), np.uint8)   # same positions as tok
        badpos = np.flatnonzero(tok == UNK_ID)
        cls = BYTE_CLASS[orig[badpos]]
        is_stop = (cls == STAR) & (badpos == offsets[np.searchsorted(offsets, badpos, "right")] - 1)
        if is_stop.any():  # a trailing '*' is a stop codon mark: strip it, it is not a residue
            stops = badpos[is_stop]
            tok, orig = np.delete(tok, stops), np.delete(orig, stops)
            lengths = lengths - np.bincount(np.searchsorted(offsets, stops, "right") - 1, minlength=nrec)
            np.cumsum(lengths, out=offsets[1:])
            tokens = tok.tobytes()
            badpos = np.flatnonzero(tok == UNK_ID)
            cls = BYTE_CLASS[orig[badpos]]
            stripped = int(len(stops))
        np.minimum.at(code, np.searchsorted(offsets, badpos, "right") - 1, cls)
    # The sequence column from the ids: upper case for free (rows with <unk> are rejected).
    letters = tokens.translate(_TO_LETTER)

    # Headers: id = first word, description = the rest (trailing '\r' and blanks dropped).
    hdr_bytes, hoff = _concat_ranges(buf, hs + 1, he)
    hdr = np.frombuffer(hdr_bytes, np.uint8)
    hwhite = BYTE_WHITE[hdr]
    # The id ends at the first blank; '> X' (blank right after '>') has no id.
    first_white = _next_position(np.flatnonzero(hwhite), hoff[:-1], hoff[1:])
    id_len = first_white - hoff[:-1]
    ids_bytes, id_off = _concat_ranges(hdr_bytes, hoff[:-1], first_white)
    # The description: from the first non-blank after the id to the last non-blank.
    nonwhite = np.flatnonzero(~hwhite)
    d_start = _next_position(nonwhite, first_white, hoff[1:])
    last = np.searchsorted(nonwhite, hoff[1:]) - 1
    d_end = np.maximum(np.where(last >= 0, nonwhite[np.maximum(last, 0)] + 1 if len(nonwhite) else 0, 0),
                       d_start)
    desc_bytes, desc_off = _concat_ranges(hdr_bytes, d_start, d_end)

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
        binary_array(np.frombuffer(letters, np.uint8), offsets, arrow_type=pa.string()),
        pa.array(lengths.astype(np.int32)),
        binary_array(np.frombuffer(tokens, np.uint8), offsets),
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
