"""Helpers shared by the finetune tests: labelled shard dirs built from ../shared/data.

They write the docs/contracts.md schemas (kind=deeploc, kind=ss) with data_prep.shards, so the
finetune tests do not depend on data_prep's label CLI. The tests in this file check them.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from data_prep.shards import (pack_residues, read_manifest, read_table, residue_arrays, write_manifest, write_rejects,
                              write_table_shards)
from data_prep.vocab import encode

LOCATIONS = ("Cell.membrane", "Cytoplasm", "Endoplasmic.reticulum", "Golgi.apparatus", "Lysosome/Vacuole",
             "Mitochondrion", "Nucleus", "Peroxisome", "Plastid", "Extracellular")


def read_fasta(path: Path) -> list[tuple[str, str]]:
    records, header, parts = [], None, []
    for line in Path(path).read_text().splitlines():
        if line.startswith(">"):
            if header is not None:
                records.append((header, "".join(parts)))
            header, parts = line[1:].strip(), []
        elif line.strip():
            parts.append(line.strip())
    if header is not None:
        records.append((header, "".join(parts)))
    return records


def _write(rows: list[dict], out: Path, kind: str, sources: list[str], schema: pa.Schema, **extra) -> Path:
    """Rows hold per-residue columns as numpy arrays (or None); they are packed as binary cells."""
    columns = {}
    for f in schema:
        values = [r[f.name] for r in rows]
        if f.name in RESIDUE_DTYPES:
            columns[f.name] = pack_residues(values, RESIDUE_DTYPES[f.name])
        else:
            columns[f.name] = pa.array(values, f.type)
    table = pa.table(columns, schema=schema)
    write_table_shards(table, out / "data", rows_per_shard=1000)
    write_rejects([], out)
    write_manifest(out, kind=kind, rows=len(rows), residues=int(sum(r["length"] for r in rows)),
                   sources=sources, rejected={}, input_records=len(rows), **extra)
    return out


# Per-residue columns (docs/contracts.md, schema version 2): binary cells of these dtypes.
RESIDUE_DTYPES = {"tokens": np.uint8, "ss3": np.int8, "ss8": np.int8, "disorder": np.int8, "eval_mask": np.int8}
DEEPLOC_SCHEMA = pa.schema([("id", pa.string()), ("sequence", pa.string()), ("length", pa.int32()),
                            ("tokens", pa.binary()), ("location", pa.string()), ("location_id", pa.int8()),
                            ("membrane", pa.string()), ("membrane_id", pa.int8()), ("split", pa.string())])


def deeploc_shards(fasta: Path, out: Path, limit: int | None = None, stride: int = 1) -> Path:
    """DeepLoc FASTA (`>ACC Location-M|S|U [test]`) -> kind=deeploc shard dir."""
    rows = []
    for header, seq in read_fasta(fasta)[::stride][:limit]:
        words = header.split()
        location, membrane = words[1].rsplit("-", 1)
        rows.append({"id": words[0], "sequence": seq, "length": len(seq), "tokens": encode(seq),
                     "location": location, "location_id": LOCATIONS.index(location) if location in LOCATIONS else -1,
                     "membrane": membrane, "membrane_id": {"M": 1, "S": 0}.get(membrane, -1),
                     "split": "test" if "test" in words[2:] else "train"})
    return _write(rows, out, "deeploc", [str(fasta)], DEEPLOC_SCHEMA)


SS_SCHEMA = pa.schema([("id", pa.string()), ("sequence", pa.string()), ("length", pa.int32()),
                       ("tokens", pa.binary()), ("dataset", pa.string()), ("split", pa.string()),
                       ("ss3", pa.binary()), ("ss8", pa.binary()), ("disorder", pa.binary()),
                       ("eval_mask", pa.binary())])


def flip_shards(flip_dir: Path, out: Path, splits: tuple[str, ...], limit: int | None = None) -> Path:
    """FLIP secondary structure (sequences, sampled labels, mask) -> kind=ss shard dir."""
    seqs = dict(read_fasta(flip_dir / "sequences.fasta"))
    masks = {h.split()[0]: m for h, m in read_fasta(flip_dir / "mask.fasta")}
    rows = []
    for header, labels in read_fasta(flip_dir / "sampled.fasta"):
        words = header.split()
        pid, fields = words[0], dict(w.split("=", 1) for w in words[1:])
        split = "test" if fields["SET"] == "test" else ("valid" if fields["VALIDATION"] == "True" else "train")
        if split not in splits or len(seqs[pid]) != len(labels):
            continue
        mask = np.frombuffer(masks[pid].encode(), np.uint8) - ord("0")
        ss3 = np.array(["HEC".index(c) for c in labels], np.int8)
        ss3[mask == 0] = -1
        rows.append({"id": pid, "sequence": seqs[pid], "length": len(labels), "tokens": encode(seqs[pid]),
                     "dataset": "flip", "split": split, "ss3": ss3, "ss8": None,
                     "disorder": (1 - mask).astype(np.int8), "eval_mask": mask.astype(np.int8)})
        if limit and len(rows) >= limit:
            break
    return _write(rows, out, "ss", [str(flip_dir)], SS_SCHEMA)


def test_deeploc_helper_counts(shared_data, tmp_path):
    out = deeploc_shards(shared_data / "deeploc" / "deeploc_our_val_set.fasta", tmp_path / "dl")
    table = read_table(out)
    assert read_manifest(out)["rows"] == table.num_rows == 1678
    assert (table.column("location_id").to_numpy() == -1).sum() == 23  # the Cytoplasm-Nucleus rows


def test_flip_helper_labels(shared_data, tmp_path):
    out = flip_shards(shared_data / "secondary_structure" / "flip", tmp_path / "ss", ("test",))
    table = read_table(out)
    assert table.num_rows == 364
    ss3, offsets, valid = residue_arrays(table.column("ss3"), np.int8)
    assert set(np.unique(ss3)) <= {-1, 0, 1, 2} and (ss3 == 0).mean() > 0.2
    assert valid.all() and (np.diff(offsets) == table.column("length").to_numpy()).all()
    assert table.column("ss8").null_count == 364


def test_helper_agrees_with_data_prep_labels(shared_data, tmp_path):
    from data_prep.labels import labels_deeploc

    fasta = shared_data / "deeploc" / "deeploc_our_val_set.fasta"
    ours = read_table(deeploc_shards(fasta, tmp_path / "ours"))
    theirs = read_table(labels_deeploc([str(fasta)], tmp_path / "theirs") and tmp_path / "theirs")
    for column in ("id", "length", "tokens", "location_id", "membrane_id", "split"):
        assert ours.column(column).to_pylist() == theirs.column(column).to_pylist(), column
