"""Labelled sets -> shards: DeepLoc (per protein) and secondary structure (per residue).

Schemas are in docs/contracts.md (kind "deeploc" and kind "ss"). Sequences are validated by the
same parser as `fasta`; label problems are rejects with a reason, and labels outside the known
sets are kept explicitly (location_id -1) and counted in the manifest.
"""
from __future__ import annotations

import csv
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa

from . import shards
from .errors import DataPrepError
from .fasta_parse import parse_block

LOCATIONS = ("Cell.membrane", "Cytoplasm", "Endoplasmic.reticulum", "Golgi.apparatus", "Lysosome/Vacuole",
             "Mitochondrion", "Nucleus", "Peroxisome", "Plastid", "Extracellular")
MEMBRANE = {"M": 1, "S": 0, "U": -1}
SS3 = "HEC"        # H=0 E=1 C=2
SS8 = "HGIEBTSC"   # DSSP order, 0..7
ROWS_PER_SHARD = 50_000

DEEPLOC_SCHEMA = pa.schema([
    ("id", pa.string()), ("sequence", pa.string()), ("length", pa.int32()), ("tokens", pa.binary()),
    ("location", pa.string()), ("location_id", pa.int8()), ("membrane", pa.string()),
    ("membrane_id", pa.int8()), ("split", pa.string()), ("description", pa.string()),
])
SPLIT_TAGS = ("train", "valid", "test")  # a set tag that is one of these is the split itself
# Per-residue columns are binary (docs/contracts.md): tokens uint8, labels int8 (-1 = unknown).
SS_SCHEMA = pa.schema([
    ("id", pa.string()), ("sequence", pa.string()), ("length", pa.int32()), ("tokens", pa.binary()),
    ("dataset", pa.string()), ("split", pa.string()), ("ss3", pa.binary()), ("ss8", pa.binary()),
    ("disorder", pa.binary()), ("eval_mask", pa.binary()),
])
SS_LABELS = ("ss3", "ss8", "disorder", "eval_mask")


def _read_bytes(path: str | Path) -> bytes:
    p = Path(path)
    if not p.is_file():
        raise DataPrepError(f"{path}: no such file")
    return p.read_bytes()


def _sequences(path: str | Path):
    """Validated sequence records of a FASTA file: (table of good rows, line per row, rejects)."""
    block = parse_block(_read_bytes(path), source=str(path))
    rejects = [{"source": str(path), **r, "line": r["line"] + 1} for r in block.rejects]
    return block, rejects


def _label_records(path: str | Path) -> dict[str, tuple[str, str]]:
    """Small label FASTA (FLIP sampled/mask): id -> (description, label string)."""
    records: dict[str, tuple[str, str]] = {}
    rid, desc, parts = None, "", []
    for line in _read_bytes(path).decode("utf-8", "replace").splitlines():
        if line.startswith(">"):
            if rid is not None:
                records[rid] = (desc, "".join(parts))
            head = line[1:].split(None, 1)
            rid, desc, parts = (head[0] if head else ""), (head[1] if len(head) > 1 else ""), []
        elif line.strip():
            parts.append(line.strip())
    if rid is not None:
        records[rid] = (desc, "".join(parts))
    return records


def _write(out, table: pa.Table, rejects: list[dict], *, kind: str, sources: list[str], **extra) -> dict:
    shards.write_table_shards(table, shards.data_dir(out), ROWS_PER_SHARD)
    shards.write_rejects(rejects, out)
    return shards.write_manifest(
        out, kind=kind, rows=table.num_rows, residues=int(np.sum(table["length"].to_numpy())) if table.num_rows else 0,
        sources=sources, rejected=Counter(r["reason"] for r in rejects),
        input_records=table.num_rows + len(rejects), **extra)


# ---------------------------------------------------------------- DeepLoc

def deeploc_header(description: str) -> dict | None:
    """The labels of a DeepLoc-style header after the id, `Location-M|S|U [settag] [more tokens...]`;
    None when the location or membrane label itself is malformed.

    The word after the label is the set tag. `train`, `valid` and `test` are the split; any other
    tag names an evaluation set of its own (published files tag e.g. a new test set so), which is
    kept evaluation-only: split "test", the tag first in `description`. Further words go to
    `description` verbatim; no tag at all means a training protein."""
    words = description.split()
    label = words[0] if words else ""
    location, _, membrane = label.rpartition("-")
    if not location or membrane not in MEMBRANE:
        return None
    tag, rest = (words[1], words[2:]) if len(words) > 1 else ("train", [])
    if tag not in SPLIT_TAGS:
        tag, rest = "test", words[1:]
    return {"location": location, "location_id": LOCATIONS.index(location) if location in LOCATIONS else -1,
            "membrane": membrane, "membrane_id": MEMBRANE[membrane], "split": tag,
            "description": " ".join(rest) or None}


def labels_deeploc(inputs: list[str], out: str | Path) -> dict:
    """DeepLoc FASTA (`>ACC Location-M|S|U [settag] [more...]`, see deeploc_header) -> kind "deeploc"."""
    tables, rejects, unknown, tags = [], [], Counter(), Counter()
    for path in inputs:
        block, rej = _sequences(path)
        rejects += rej
        t = block.table
        rows = {k: [] for k in ("location", "location_id", "membrane", "membrane_id", "split", "description")}
        keep = []
        for i, desc in enumerate(t["description"].to_pylist()):
            labels = deeploc_header(desc or "")
            if labels is None:
                rejects.append({"source": str(path), "record_index": int(block.record_index[i]),
                                "id": t["id"][i].as_py(), "line": int(block.line[i]) + 1, "reason": "bad_label"})
                continue
            if labels["location_id"] < 0:
                unknown[labels["location"]] += 1
            words = desc.split()
            if len(words) > 1:
                tags[words[1]] += 1
            keep.append(i)
            for k in rows:
                rows[k].append(labels[k])
        t = t.take(pa.array(keep, pa.int64())).drop_columns(["description"])
        for name, values in rows.items():
            t = t.append_column(name, pa.array(values, DEEPLOC_SCHEMA.field(name).type))
        tables.append(t.select(DEEPLOC_SCHEMA.names).cast(DEEPLOC_SCHEMA))
    table = pa.concat_tables(tables) if tables else DEEPLOC_SCHEMA.empty_table()
    return _write(out, table, rejects, kind="deeploc", sources=[str(p) for p in inputs],
                  unknown_locations=dict(unknown), locations=list(LOCATIONS),
                  splits=dict(Counter(table["split"].to_pylist())), set_tags=dict(tags))


# ---------------------------------------------------------------- secondary structure

def _codes(labels: str, alphabet: str) -> np.ndarray | None:
    arr = np.frombuffer(labels.encode(), np.uint8)
    table = np.full(256, -2, np.int8)
    for i, ch in enumerate(alphabet):
        table[ord(ch)] = i
    codes = table[arr]
    return None if (codes == -2).any() else codes


def _ss_table(rows: list[dict]) -> pa.Table:
    from .vocab import encode

    arrays = []
    for f in SS_SCHEMA:
        if f.name == "tokens":
            arrays.append(shards.pack_residues((encode(r["sequence"]) for r in rows), np.uint8))
        elif f.name == "length":
            arrays.append(pa.array([len(r["sequence"]) for r in rows], f.type))
        elif f.name in SS_LABELS:
            arrays.append(shards.pack_residues((r.get(f.name) for r in rows), np.int8))
        else:
            arrays.append(pa.array([r.get(f.name) for r in rows], f.type))
    return pa.Table.from_arrays(arrays, schema=SS_SCHEMA)


def _split_filter(rows, rejects, splits, source_of):
    """Keep rows whose split is selected; the others are counted as `split_not_selected`."""
    if splits is None:
        return rows
    kept = []
    for r in rows:
        if r["split"] in splits:
            kept.append(r)
        else:
            rejects.append({"source": source_of, "record_index": r["_index"], "id": r["id"],
                            "line": r["_line"], "reason": "split_not_selected"})
    return kept


def labels_flip(directory: str | Path, out: str | Path, splits: set[str] | None = None) -> dict:
    """FLIP secondary structure (sequences.fasta + sampled.fasta + mask.fasta) -> kind "ss"."""
    d = Path(directory)
    seq_path = d / "sequences.fasta"
    block, rejects = _sequences(seq_path)
    labels = _label_records(d / "sampled.fasta")
    masks = _label_records(d / "mask.fasta")
    t = block.table
    rows = []
    for i, (rid, seq) in enumerate(zip(t["id"].to_pylist(), t["sequence"].to_pylist())):
        base = {"source": str(seq_path), "record_index": int(block.record_index[i]), "id": rid,
                "line": int(block.line[i]) + 1}
        if rid not in labels or rid not in masks:
            rejects.append({**base, "reason": "missing_labels"})
            continue
        desc, ss = labels[rid]
        fields = dict(f.split("=", 1) for f in desc.split() if "=" in f)
        mask = _codes(masks[rid][1], "01")
        ss3 = _codes(ss, SS3)
        if fields.get("SET") not in ("train", "test") or ss3 is None or mask is None:
            rejects.append({**base, "reason": "bad_label"})
            continue
        if not (len(ss3) == len(mask) == len(seq)):
            rejects.append({**base, "reason": "label_length_mismatch"})
            continue
        split = "test" if fields["SET"] == "test" else ("valid" if fields.get("VALIDATION") == "True" else "train")
        resolved = mask.astype(np.int8)
        rows.append({"id": rid, "sequence": seq, "dataset": "flip", "split": split,
                     "ss3": np.where(resolved == 1, ss3, -1).astype(np.int8), "ss8": None,
                     "disorder": (1 - resolved).astype(np.int8), "eval_mask": resolved,
                     "_index": base["record_index"], "_line": base["line"]})
    rows = _split_filter(rows, rejects, splits, str(seq_path))
    table = _ss_table(rows)
    return _write(out, table, rejects, kind="ss", sources=[str(seq_path), str(d / "sampled.fasta"),
                                                           str(d / "mask.fasta")],
                  splits=dict(Counter(table["split"].to_pylist())),
                  selected_splits=sorted(splits) if splits else None)


NETSURFP_COLUMNS = ["input", "dssp3", "dssp8", "disorder", "cb513_mask"]


def labels_netsurfp(inputs: list[str], out: str | Path) -> dict:
    """NetSurfP-2.0 CSVs (CB513/TS115/CASP12) -> kind "ss", split test.

    The disorder column is 1.0 for ordered (resolved) residues and 0.0 for disordered ones: the
    0.0 values sit mostly at the chain termini (see docs/data_prep.md), where unresolved residues
    are. Disordered residues get ss3/ss8 -1 and eval_mask 0; cb513_mask 0 also sets eval_mask 0.
    Proteins have no id in these files: id = "<dataset>_<row number>".
    """
    rows, rejects = [], []
    for path in inputs:
        dataset = Path(path).name.split("_")[0].split(".")[0].lower()
        text = _read_bytes(path).decode("utf-8", "replace")
        reader = csv.reader(text.splitlines())
        header = [h.strip() for h in next(reader, [])]
        if header != NETSURFP_COLUMNS:
            raise DataPrepError(f"{path}: line 1: expected columns {', '.join(NETSURFP_COLUMNS)}, got {header}")
        for k, rec in enumerate(reader):
            base = {"source": str(path), "record_index": k, "id": f"{dataset}_{k}", "line": k + 2}
            if len(rec) != 5:
                rejects.append({**base, "reason": "wrong_column_count"})
                continue
            seq, d3, d8, dis, m = (c.split() for c in rec)
            sequence = "".join(seq).upper()
            if not (len(seq) == len(d3) == len(d8) == len(dis) == len(m)) or not seq:
                rejects.append({**base, "reason": "label_length_mismatch"})
                continue
            if not re.fullmatch(r"[ACDEFGHIKLMNPQRSTVWYUOBZX]+", sequence):
                rejects.append({**base, "reason": "invalid_character"})
                continue
            ss3, ss8 = _codes("".join(d3), SS3), _codes("".join(d8), SS8)
            try:
                ordered = np.array([float(x) for x in dis]) >= 0.5
                in_eval = np.array([float(x) for x in m]) >= 0.5
            except ValueError:
                ss3 = None
            if ss3 is None or ss8 is None:
                rejects.append({**base, "reason": "bad_label"})
                continue
            rows.append({"id": base["id"], "sequence": sequence, "dataset": dataset, "split": "test",
                         "ss3": np.where(ordered, ss3, -1), "ss8": np.where(ordered, ss8, -1),
                         "disorder": (~ordered).astype(np.int8), "eval_mask": (ordered & in_eval).astype(np.int8)})
    table = _ss_table(rows)
    return _write(out, table, rejects, kind="ss", sources=[str(p) for p in inputs],
                  datasets=dict(Counter(table["dataset"].to_pylist())))
