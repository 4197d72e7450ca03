"""Multitask data: loading shards of every kind, label alignment, cropping, collation, mixture.

Also home of `real_shards()`, which writes small shard directories (docs/contracts.md schemas)
from ../shared/data for the other multitask tests. It parses the raw files itself, in a few lines,
because the tests must not depend on another stage's CLI being present.
"""
from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from conftest import SHARED_DATA
from data_prep.shards import pack_residues, write_manifest, write_rejects, write_table_shards
from data_prep.vocab import PAD_ID, encode
from multitask.data import DataError, collate, crop_indices, get_example, load_proteins, training_rows

LOCATIONS = ["Cell.membrane", "Cytoplasm", "Endoplasmic.reticulum", "Golgi.apparatus", "Lysosome/Vacuole",
             "Mitochondrion", "Nucleus", "Peroxisome", "Plastid", "Extracellular"]


def _fasta(path: Path):
    name, seq = None, []
    for line in path.read_text().splitlines():
        if line.startswith(">"):
            if name is not None:
                yield name, "".join(seq)
            name, seq = line[1:].strip(), []
        else:
            seq.append(line.strip())
    if name is not None:
        yield name, "".join(seq)


def _write(out: Path, kind: str, rows: list[dict], source: str):
    cols = {k: [r[k] for r in rows] for k in rows[0]}
    residue_types = {"tokens": np.uint8, **dict.fromkeys(("ss3", "ss8", "disorder", "eval_mask"), np.int8)}
    types = {"length": pa.int32(), "location_id": pa.int8(), "membrane_id": pa.int8()}
    table = pa.table({k: pack_residues(v, residue_types[k]) if k in residue_types else pa.array(v, type=types.get(k))
                      for k, v in cols.items()})
    # small row groups: the engine deals row groups to ranks, as with a large corpus
    write_table_shards(table, out / "data", rows_per_shard=max(1, len(rows) // 2), row_group_rows=100)
    write_rejects([], out)
    write_manifest(out, kind=kind, rows=len(rows), residues=int(sum(r["length"] for r in rows)),
                   sources=[source], rejected={}, input_records=len(rows))


def _base(pid: str, seq: str) -> dict:
    return {"id": pid, "sequence": seq, "length": len(seq), "tokens": encode(seq)}


@functools.lru_cache(maxsize=None)
def real_shards(n_corpus: int = 2000, n_ss_train: int = 1200, n_deeploc_test: int = 600) -> dict[str, Path]:
    """corpus, deeploc_train, deeploc_test, ss_train, ss_test shard dirs from the real data."""
    root = Path(tempfile.mkdtemp(prefix="mt_shards_"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    out = {k: root / k for k in ("corpus", "deeploc_train", "deeploc_test", "ss_train", "ss_test")}
    corpus = [_base(h.split()[0], s) for _, (h, s) in zip(range(n_corpus), _fasta(SHARED_DATA / "corpus/corpus_dedup.fasta"))]
    _write(out["corpus"], "sequences", [dict(r, description="") for r in corpus], "corpus_dedup.fasta")

    def deeploc(path: Path, limit: int | None):
        rows = []
        for i, (h, s) in enumerate(_fasta(path)):
            if limit is not None and i >= limit:
                break
            words = h.split()
            loc, mem = words[1].rsplit("-", 1)
            split = "test" if len(words) > 2 and words[2] == "test" else "train"
            rows.append(dict(_base(words[0], s), location=loc, location_id=LOCATIONS.index(loc) if loc in LOCATIONS else -1,
                             membrane=mem, membrane_id={"M": 1, "S": 0}.get(mem, -1), split=split))
        return rows
    _write(out["deeploc_train"], "deeploc", deeploc(SHARED_DATA / "deeploc/deeploc_our_val_set.fasta", None), "our_val")
    _write(out["deeploc_test"], "deeploc", deeploc(SHARED_DATA / "deeploc/deeploc_test_set.fasta", n_deeploc_test), "test")

    flip = SHARED_DATA / "secondary_structure/flip"
    seqs = dict(_fasta(flip / "sequences.fasta"))
    masks = {h.split()[0]: m for h, m in _fasta(flip / "mask.fasta")}
    ss_train, ss_test = [], []
    for h, lab in _fasta(flip / "sampled.fasta"):
        pid = h.split()[0]
        split = "test" if "SET=test" in h else ("valid" if "VALIDATION=True" in h else "train")
        resolved = np.array([c == "1" for c in masks[pid]])
        ss3 = np.array(["HEC".index(c) for c in lab], np.int8)
        ss3[~resolved] = -1
        row = dict(_base(pid, seqs[pid]), dataset="flip", split=split, ss3=ss3.tolist(), ss8=None,
                   disorder=(~resolved).astype(np.int8).tolist(), eval_mask=resolved.astype(np.int8).tolist())
        if split == "test":
            ss_test.append(row)
        elif sum(r["split"] == split for r in ss_train) < (n_ss_train // 10 if split == "valid" else n_ss_train - n_ss_train // 10):
            ss_train.append(row)
    for name in ("CB513", "TS115", "CASP12"):
        lines = (flip.parent / f"netsurfp/{name}_HHblits.csv").read_text().splitlines()[1:]
        for i, line in enumerate(lines):
            seq, d3, d8, dis, mask = (c.split() for c in line.split(","))
            ordered = np.array([float(x) > 0.5 for x in dis])  # NetSurfP: 1 = ordered
            ss3 = np.array(["HEC".index(c) for c in d3], np.int8)
            ss8 = np.array(["HGIEBTSC".index(c) for c in d8], np.int8)
            ss3[~ordered], ss8[~ordered] = -1, -1
            ss_test.append(dict(_base(f"{name.lower()}_{i}", "".join(seq)), dataset=name.lower(), split="test",
                                ss3=ss3.tolist(), ss8=ss8.tolist(), disorder=(~ordered).astype(np.int8).tolist(),
                                eval_mask=[int(float(x) > 0.5) for x in mask]))
    _write(out["ss_train"], "ss", ss_train, "flip")
    _write(out["ss_test"], "ss", ss_test, "flip+netsurfp")
    return out


@pytest.fixture(scope="module")
def shards(shared_data):
    return real_shards()


def test_loads_every_kind_with_aligned_labels(shards):
    corpus = load_proteins(shards["corpus"])
    assert corpus.kind == "sequences" and len(corpus) == 2000 and not corpus.residue_labels
    dl = load_proteins(shards["deeploc_train"])
    assert len(dl) == 1678
    assert (dl.location == -1).sum() == 23          # the Cytoplasm-Nucleus proteins
    assert set(np.unique(dl.membrane)) == {-1, 0, 1}
    ss = load_proteins(shards["ss_test"])
    assert sorted(set(ss.dataset)) == ["casp12", "cb513", "flip", "ts115"]
    assert len(ss) == 364 + 511 + 115 + 20
    for k in ("ss3", "ss8", "disorder", "eval_mask"):
        assert len(ss.residue_labels[k]) == ss.offsets[-1]
    flip = ss.dataset == "flip"
    # FLIP has no 8-state labels: every flip residue is -1 in ss8; CB513 has them.
    ex = get_example(ss, int(np.flatnonzero(flip)[0]))
    assert (ex.labels["ss8"] == -1).all() and (ex.labels["ss3"] >= 0).any()
    ex = get_example(ss, int(np.flatnonzero(ss.dataset == "cb513")[0]))
    assert (ex.labels["ss8"] >= 0).sum() > 0.5 * len(ex.tokens)


def test_training_sources_refuse_test_rows(shards):
    ps = load_proteins(shards["ss_test"])
    with pytest.raises(DataError, match="split=test"):
        training_rows(ps, shards["ss_test"], ("train", "valid"))
    tr = load_proteins(shards["ss_train"])
    only_train = training_rows(tr, shards["ss_train"], ("train",))
    assert 0 < len(only_train) < len(tr) and set(only_train.split) == {"train"}
    with pytest.raises(DataError, match="split=test"):
        training_rows(load_proteins(shards["deeploc_test"]), shards["deeploc_test"], ("train",))


def test_crop_policies_keep_termini_or_window():
    rng = np.random.default_rng(0)
    assert crop_indices(100, 100, "ends", rng) is None
    ends = crop_indices(1000, 101, "ends", rng)
    assert len(ends) == 101 and ends[0] == 0 and ends[50] == 50 and ends[51] == 950 and ends[-1] == 999
    starts = {int(crop_indices(1000, 100, "random", rng)[0]) for _ in range(50)}
    assert len(starts) > 10 and max(starts) <= 900


def test_crop_carries_labels_with_residues(shards):
    ss = load_proteins(shards["ss_train"])
    row = int(np.argmax(ss.lengths))
    full = get_example(ss, row)
    ex = get_example(ss, row, max_len=64, rng=np.random.default_rng(1))
    assert ex.cropped and len(ex.tokens) == 64
    # the window is contiguous: find it in the full protein and compare labels there
    start = next(i for i in range(len(full.tokens) - 63)
                 if np.array_equal(full.tokens[i:i + 64], ex.tokens) and np.array_equal(full.labels["ss3"][i:i + 64], ex.labels["ss3"]))
    assert np.array_equal(full.labels["disorder"][start:start + 64], ex.labels["disorder"])
    dl = load_proteins(shards["deeploc_train"])
    long_row = int(np.argmax(dl.lengths))
    ex = get_example(dl, long_row, max_len=100, protein_crop="ends")
    seq = dl.tokens[dl.offsets[long_row]:dl.offsets[long_row + 1]]
    assert np.array_equal(ex.tokens, np.concatenate([seq[:50], seq[-50:]])) and ex.location == dl.location[long_row]


def test_collate_pads_with_minus_one(shards):
    ss, dl = load_proteins(shards["ss_train"]), load_proteins(shards["deeploc_train"])
    batch = collate([get_example(ss, 0), get_example(dl, 0)], pad_to=8)
    n_ss, n_dl = int(ss.lengths[0]), int(dl.lengths[0])
    assert batch["tokens"].shape[1] % 8 == 0 and batch["tokens"].shape[1] >= max(n_ss, n_dl)
    assert batch["lengths"].tolist() == [n_ss, n_dl]
    assert (batch["tokens"][0, n_ss:] == PAD_ID).all()
    assert (batch["ss3"][1] == -1).all() and (batch["ss3"][0, n_ss:] == -1).all()
    assert batch["location"][0] == -1 and batch["location"][1] == int(dl.location[0])
    assert batch["membrane"][0] == -1
