"""DeepLoc, FLIP and NetSurfP labels -> shards, with the real record counts."""
from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

from data_prep import shards
from data_prep.labels import LOCATIONS, labels_deeploc, labels_flip, labels_netsurfp
from data_prep.merge import merge


def _residues(table, column):
    """Per-row int8 label arrays of a binary per-residue column (None where null)."""
    flat, offsets, valid = shards.residue_arrays(table[column], np.int8)
    return [flat[offsets[i]:offsets[i + 1]] if valid[i] else None for i in range(table.num_rows)]


def test_deeploc_files(shared_data, tmp_path):
    d = shared_data / "deeploc"
    val = labels_deeploc([str(d / "deeploc_our_val_set.fasta")], tmp_path / "val")
    test = labels_deeploc([str(d / "deeploc_test_set.fasta")], tmp_path / "test")
    assert val["rows"] == 1678 and test["rows"] == 2768 and val["rejected"] == {} == test["rejected"]
    assert val["unknown_locations"] == {"Cytoplasm-Nucleus": 23} and test["unknown_locations"] == {}
    assert val["splits"] == {"train": 1678} and test["splits"] == {"test": 2768}
    assert val["set_tags"] == {} and test["set_tags"] == {"test": 2768}
    t = shards.read_table(tmp_path / "val")
    rows = t.to_pylist()
    first = rows[0]
    assert (first["id"], first["location"], first["location_id"], first["membrane"], first["membrane_id"]) == \
        ("Q9Y4C2", "Cell.membrane", 0, "M", 1)
    unknown = [r for r in rows if r["location_id"] == -1]
    assert len(unknown) == 23 and {r["location"] for r in unknown} == {"Cytoplasm-Nucleus"}
    assert all(LOCATIONS[r["location_id"]] == r["location"] for r in rows if r["location_id"] >= 0)
    tt = shards.read_table(tmp_path / "test")
    assert np.bincount(tt["location_id"].to_numpy(), minlength=10).sum() == 2768
    assert set(tt["membrane"].to_pylist()) == {"M", "S", "U"}


def test_deeploc_bad_labels_are_rejects(tmp_path):
    f = tmp_path / "dl.fasta"
    f.write_text(">A1 Nucleus-S\nMKV\n>A2 Nucleus\nMKV\n>A3 Nucleus-Q\nMKV\n>A4 Nucleus-M extra\nMKV\n>A5 Weird-U test\nMKV\n"
                 ">A6 -S test\nMKV\n")
    m = labels_deeploc([str(f)], tmp_path / "o")
    # bad_label = the location or membrane label itself is malformed; an extra word is not
    assert m["rows"] == 3 and m["rejected"] == {"bad_label": 3} and m["unknown_locations"] == {"Weird": 1}
    rej = pq.read_table(tmp_path / "o" / "rejects").to_pylist()
    assert [(r["id"], r["line"]) for r in rej] == [("A2", 3), ("A3", 5), ("A6", 11)]


def test_deeploc_published_headers_with_other_set_tags_and_extra_tokens(shared_data, tmp_path):
    """Real records of the DeepLoc test file re-tagged as a published file of a new test set would be:
    `>ACC Location-M|S|U <settag> [more tokens]`, with every membrane label U (unknown)."""
    records = (shared_data / "deeploc" / "deeploc_test_set.fasta").read_text().split(">")[1:]
    headers, published = [], []
    for k, record in enumerate(records[::250]):  # 12 real proteins across the (class-sorted) file
        head, seq = record.split("\n", 1)
        acc, label, _ = head.split()
        location = label.rpartition("-")[0]
        tail = ["new_hard_set PIDE<20% UniProt:2021_03", "test HPA-verified", "valid", "train"][k % 4]
        headers.append((acc, location, tail))
        published.append(f">{acc} {location}-U {tail}\n{seq}")
    f = tmp_path / "published.fasta"
    f.write_text("".join(published))
    m = labels_deeploc([str(f)], tmp_path / "o")
    assert m["rows"] == 12 and m["rejected"] == {} and m["input_records"] == 12
    assert m["splits"] == {"test": 6, "valid": 3, "train": 3}
    assert m["set_tags"] == {"new_hard_set": 3, "test": 3, "valid": 3, "train": 3}
    rows = shards.read_table(tmp_path / "o").to_pylist()
    assert [(r["id"], r["location"]) for r in rows] == [(acc, loc) for acc, loc, _ in headers]
    assert all(r["membrane"] == "U" and r["membrane_id"] == -1 and r["location_id"] >= 0 for r in rows)
    assert [(r["split"], r["description"]) for r in rows[:4]] == [
        ("test", "new_hard_set PIDE<20% UniProt:2021_03"), ("test", "HPA-verified"), ("valid", None), ("train", None)]
    # the sequences are the file's, unchanged
    original = {h.split()[0]: "".join(s.split()) for h, s in (r.split("\n", 1) for r in records)}
    assert all(r["sequence"] == original[r["id"]] for r in rows)


def test_flip(shared_data, tmp_path):
    flip = shared_data / "secondary_structure" / "flip"
    m = labels_flip(flip, tmp_path / "all")
    assert m["rows"] == 11156 and m["splits"] == {"train": 9712, "valid": 1080, "test": 364}
    t = shards.read_table(tmp_path / "all")
    r = t.slice(0, 1).to_pylist()[0]
    assert r["id"] == "1es5-A" and r["ss8"] is None and r["dataset"] == "flip"
    first = {c: _residues(t.slice(0, 1), c)[0] for c in ("ss3", "disorder", "eval_mask")}
    # mask 0 (disordered) at positions 0-1 of 1es5-A: disorder 1, ss3 -1, not evaluated
    assert first["disorder"][:3].tolist() == [1, 1, 0] and first["ss3"][:3].tolist() == [-1, -1, 2]
    assert first["eval_mask"][:3].tolist() == [0, 0, 1]
    assert len(first["ss3"]) == r["length"] == len(r["tokens"])
    # Row groups of at most 512 rows in every command's shards (the engine streams row groups).
    meta = pq.ParquetFile(shards.data_files(tmp_path / "all")[0]).metadata
    assert meta.num_row_groups == -(-11156 // shards.ROW_GROUP_ROWS) and meta.row_group(0).num_rows == 512
    tr = labels_flip(flip, tmp_path / "train", splits={"train", "valid"})
    assert tr["rows"] == 10792 and tr["rejected"] == {"split_not_selected": 364}
    assert set(shards.read_table(tmp_path / "train", ["split"])["split"].to_pylist()) == {"train", "valid"}


def test_netsurfp_and_merge(shared_data, tmp_path):
    ns = shared_data / "secondary_structure" / "netsurfp"
    m = labels_netsurfp([str(ns / n) for n in ("CB513_HHblits.csv", "TS115_HHblits.csv", "CASP12_HHblits.csv")],
                        tmp_path / "ns")
    assert m["datasets"] == {"cb513": 511, "ts115": 115, "casp12": 20} and m["rows"] == 646
    t = shards.read_table(tmp_path / "ns")
    i = t["dataset"].to_pylist().index("casp12")
    casp = t.slice(i, 1).to_pylist()[0]
    assert casp["id"] == "casp12_0" and casp["sequence"].startswith("SLRFTASTST") and casp["split"] == "test"
    # disorder 1.0 = ordered: the file's 0.0 entries are the disordered ones (at the termini)
    assert [_residues(t, c)[i][0] for c in ("disorder", "ss3", "ss8")] == [1, -1, -1]
    assert shards.residue_arrays(t["disorder"], np.int8)[0].sum() == 797 + 2203 + 3525
    labels_flip(shared_data / "secondary_structure" / "flip", tmp_path / "flip_test", splits={"test"})
    mm = merge([str(tmp_path / "flip_test"), str(tmp_path / "ns")], tmp_path / "ss_test")
    assert mm["rows"] == 364 + 646 and mm["input_records"] == 11156 + 646
    assert shards.read_table(tmp_path / "ss_test").num_rows == 1010
