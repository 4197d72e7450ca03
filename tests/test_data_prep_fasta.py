"""FASTA -> sequence shards: byte ranges, rejects, accounting, determinism, loading."""
from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_prep import shards, vocab
from data_prep.errors import DataPrepError
from data_prep.fasta import FastaOptions, convert_fasta
from data_prep.fasta_parse import parse_block
from data_prep.fasta_read import iter_gzip_blocks, read_range
from tests.conftest import REPO


def ranges_parse(path, n_splits=None, cuts=None):
    """Parse `path` as byte ranges (like the Ray tasks do); returns ids, sequences, reject ids, lines."""
    size = path.stat().st_size
    if cuts is None:
        cuts = sorted(set(np.linspace(0, size, n_splits + 1).astype(int).tolist()))
    ids, seqs, rejects, lines, nl = [], [], [], [], 0
    for start, end in zip(cuts[:-1], cuts[1:]):
        data, file_start, skipped, owned = read_range(str(path), start, end)
        block = parse_block(data, file_start=file_start)
        ids += block.table["id"].to_pylist()
        seqs += block.table["sequence"].to_pylist()
        lines += (block.line + nl + skipped + 1).tolist()
        rejects += [(r["reason"], r["line"] + nl + skipped + 1) for r in block.rejects]
        nl += owned
    return ids, seqs, rejects, lines


def test_byte_ranges_equal_sequential_reading(shared_data):
    path = shared_data / "corpus" / "corpus_dedup.fasta"
    ids, seqs, rejects, lines = ranges_parse(path, 1)
    assert len(ids) == 44331 and not rejects
    assert lines[:2] == [1, 3]  # 1-based header lines
    for n in (2, 3, 7, 16, 61, 250):
        got = ranges_parse(path, n)
        assert got[0] == ids and got[1] == seqs and got[3] == lines, n


def test_byte_ranges_at_every_cut_of_a_small_file(tmp_path):
    text = (b">a1 first one\nACDE\nFGHI\n>b2\nKLMN\n\n>c3 x>y\nPQ1R\n>d4\n\n>e5 last\nSTVW\nY")
    path = tmp_path / "small.fasta"
    path.write_bytes(text)
    ref = ranges_parse(path, 1)
    assert ref[0] == ["a1", "b2", "e5"] and ref[1] == ["ACDEFGHI", "KLMN", "STVWY"]
    assert ref[2] == [("digits", 7), ("empty_sequence", 9)]
    # every single cut point (inside headers, sequences, at '>' and at newlines), and pairs of cuts
    for c in range(len(text) + 1):
        assert ranges_parse(path, cuts=sorted({0, c, len(text)})) == ref, c
    for c1 in range(0, len(text), 3):
        for c2 in range(c1, len(text), 5):
            assert ranges_parse(path, cuts=sorted({0, c1, c2, len(text)})) == ref, (c1, c2)


def test_every_bad_input_kind_is_a_reject_with_its_reason(tmp_path, ray_session):
    text = ("SEQUENCEBEFOREHEADER\n"
            ">ok1 a fine one\nMKVLA\n"
            ">stop1 trailing stop is stripped\nMKVLA*\n"
            ">empty1\n\n"
            ">digit1\nMKV1LA\n"
            ">star1\nMK*VLA\n"
            ">gap1\nMK-VLA\n"
            ">inv1\nMKJVLA\n"
            ">\nMKVLA\n"
            ">short1\nMK\n"
            ">long1\n" + "A" * 50 + "\n"
            ">ok1 duplicate id\nMKVLA\n"
            ">low1 lower case is upper-cased\nmkvla\n")
    path = tmp_path / "bad.fasta"
    path.write_text(text)
    m = convert_fasta([str(path)], tmp_path / "out", FastaOptions(min_length=3, max_length=40, dedupe=True))
    rej = pq.read_table(tmp_path / "out" / "rejects" / "part-00000.parquet").to_pylist()
    by_reason = {r["reason"]: (r["id"], r["line"], r["record_index"]) for r in rej}
    assert by_reason == {
        "before_first_header": (None, 1, 0), "empty_sequence": ("empty1", 6, 3), "digits": ("digit1", 8, 4),
        "stop_inside": ("star1", 10, 5), "gap": ("gap1", 12, 6), "invalid_character": ("inv1", 14, 7),
        "missing_id": (None, 16, 8), "too_short": ("short1", 18, 9), "too_long": ("long1", 20, 10),
        "duplicate_id": ("ok1", 22, 11)}
    rows = shards.read_table(tmp_path / "out").to_pylist()
    assert [(r["id"], r["sequence"], r["length"]) for r in rows] == [
        ("ok1", "MKVLA", 5), ("stop1", "MKVLA", 5), ("low1", "MKVLA", 5)]
    flat, offsets, _ = shards.residue_arrays(shards.read_table(tmp_path / "out")["tokens"], np.uint8)
    assert flat[offsets[0]:offsets[1]].tolist() == [15, 13, 22, 14, 5] == vocab.encode("MKVLA").tolist()
    assert offsets.tolist() == [0, 5, 10, 15] and rows[0]["description"] == "a fine one"
    assert m["input_records"] == 13 == m["rows"] + sum(m["rejected"].values())
    assert m["stripped_trailing_stops"] == 1 and m["rejected"]["digits"] == 1


def test_structural_garbage_is_one_clear_error(tmp_path, ray_session):
    binary = tmp_path / "binary.fasta"
    binary.write_bytes(b">a\nMKV\n" + bytes(range(256)))
    with pytest.raises(DataPrepError, match=r"binary\.fasta: binary data"):
        parse_block(binary.read_bytes(), source=str(binary))
    gz = tmp_path / "cut.fasta.gz"
    full = gzip.compress(b">a\nMKVLA\n" * 20000)
    gz.write_bytes(full[: len(full) // 2])
    with pytest.raises(DataPrepError, match=r"cut\.fasta\.gz: truncated or corrupt gzip"):
        list(iter_gzip_blocks(str(gz), 1 << 16))
    # Through the CLI (joining the test's Ray): exit 2, one line naming the file, no traceback.
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    for bad in (binary, gz):
        proc = subprocess.run([sys.executable, "-m", "data_prep", "fasta", str(bad), "--out", str(tmp_path / "o")],
                              capture_output=True, text=True, cwd=REPO, env=env)
        assert proc.returncode == 2, proc.stderr
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and bad.name in last and "Traceback" not in proc.stderr


def test_corpus_through_ray_data_is_deterministic(shared_data, tmp_path, ray_session):
    src = shared_data / "corpus" / "corpus_dedup.fasta"
    gz = tmp_path / "corpus.fasta.gz"
    gz.write_bytes(gzip.compress(src.read_bytes(), compresslevel=1))
    opts = FastaOptions(block_size=1 << 20, shard_size=5000)
    m1 = convert_fasta([str(src)], tmp_path / "a", opts)
    m2 = convert_fasta([str(src)], tmp_path / "b", FastaOptions(block_size=1 << 20, shard_size=5000))
    m3 = convert_fasta([str(gz)], tmp_path / "c", FastaOptions(block_size=1 << 20, shard_size=5000))
    assert m1["rows"] == m1["input_records"] == 44331 and m1["residues"] == 10_772_768
    assert m1["rejected"] == {} and m3["rows"] == 44331 and m3["residues"] == m1["residues"]
    fa = sorted((tmp_path / "a" / "data").glob("*.parquet"))
    fb = sorted((tmp_path / "b" / "data").glob("*.parquet"))
    assert [f.name for f in fa] == [f.name for f in fb] and len(fa) >= 10
    for x, y in zip(fa, fb):  # same rows, same order, same sharding
        assert pq.read_table(x).equals(pq.read_table(y))
    ta, tc = shards.read_table(tmp_path / "a"), shards.read_table(tmp_path / "c")
    assert ta["id"].to_pylist() == tc["id"].to_pylist() and ta["tokens"].equals(tc["tokens"])
    assert ta["id"][0].as_py() == "ecoli_UP000000625|1"
    assert ta["sequence"][0].as_py().startswith("MASVSISCPSCSATDGVVRNGKSTAGHQRYLCSHCRKTWQLQFTY")
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["kind"] == "sequences" and manifest["vocab_hash"]


def test_shards_load_with_datasets_and_ray_data(shared_data, tmp_path, ray_session):
    import datasets

    m = convert_fasta([str(shared_data / "deeploc" / "deeploc_test_set.fasta")], tmp_path / "dl",
                      FastaOptions(shard_size=1000))
    files = [str(f) for f in shards.data_files(tmp_path / "dl")]
    assert len(files) == 3 and m["rows"] == 2768
    hf = datasets.load_dataset("parquet", data_files=files, split="train")
    assert hf.num_rows == 2768 and hf[0]["id"] == "Q9H400" and hf[0]["length"] == len(hf[0]["tokens"])
    rd = ray_session.data.read_parquet(str(tmp_path / "dl" / "data"))
    assert rd.count() == 2768
    row = rd.filter(lambda r: r["id"] == "Q9H400").take(1)[0]
    assert row["tokens"] == hf[0]["tokens"] == vocab.encode(hf[0]["sequence"]).tobytes()
    # Row groups of at most ROW_GROUP_ROWS rows: the unit the training engine streams.
    groups = [pq.ParquetFile(f).metadata.row_group(g).num_rows for f in files
              for g in range(pq.ParquetFile(f).metadata.num_row_groups)]
    assert sum(groups) == 2768 and max(groups) == shards.ROW_GROUP_ROWS == 512 and len(groups) == 2 + 2 + 2


def test_accounting_invariant_is_enforced(tmp_path):
    with pytest.raises(AssertionError, match="accounting broken"):
        shards.write_manifest(tmp_path, kind="sequences", rows=3, residues=10, sources=[], rejected={"digits": 1},
                              input_records=5)
    assert pa.Table.from_pylist([], schema=shards.REJECT_SCHEMA).num_rows == 0


def test_parsed_tokens_equal_the_tokenizer_on_every_symbol():
    """The block parser's table path (translate to ids, ids back to letters) gives exactly the
    `tokenizers` ids and the upper-cased text, for every symbol in both cases."""
    rng = np.random.default_rng(1)
    symbols = vocab.RESIDUES + vocab.RESIDUES.lower()
    seqs = ["".join(rng.choice(list(symbols), int(n))) for n in rng.integers(1, 200, 300)]
    seqs[0] = symbols
    text = "".join(f">p{i} d\n" + "\n".join(s[j:j + 60] for j in range(0, len(s), 60)) + "\n"
                   for i, s in enumerate(seqs))
    block = parse_block(text.encode())
    flat, offsets, valid = shards.residue_arrays(block.table["tokens"], np.uint8)
    tok = vocab.build_tokenizer()
    assert valid.all() and block.table["sequence"].to_pylist() == [s.upper() for s in seqs]
    for i, s in enumerate(seqs):
        assert flat[offsets[i]:offsets[i + 1]].tolist() == tok.encode(s, add_special_tokens=False).ids, i


def test_pack_residues_round_trip_and_old_schema_is_one_clear_error(tmp_path):
    rows = [np.array([1, -1, 2], np.int8), None, np.zeros(0, np.int8), np.array([-1], np.int8)]
    col = shards.pack_residues(rows, np.int8)
    assert col.type == pa.binary() and col.null_count == 1
    flat, offsets, valid = shards.residue_arrays(col, np.int8)
    assert flat.tolist() == [1, -1, 2, -1] and offsets.tolist() == [0, 3, 3, 3, 4]
    assert valid.tolist() == [True, False, True, True]
    pssm = shards.pack_residues([np.arange(40, dtype=np.uint8).reshape(2, 20)], np.uint8)
    flat, offsets, _ = shards.residue_arrays(pssm, np.uint8)
    assert offsets.tolist() == [0, 40] and flat.reshape(-1, 20)[1, 0] == 20
    # A directory written before schema version 2 (list columns): one line naming it, and the
    # data_prep readers refuse it instead of misreading list cells.
    old = tmp_path / "old"
    shards.write_table_shards(pa.table({"id": ["a"], "length": pa.array([1], pa.int32()),
                                        "tokens": pa.array([[5]], pa.list_(pa.uint8()))}), old / "data", 10)
    shards.write_rejects([], old)
    shards.write_manifest(old, kind="sequences", rows=1, residues=1, sources=[], rejected={}, input_records=1)
    manifest = json.loads((old / "manifest.json").read_text())
    assert manifest["schema_version"] == shards.SCHEMA_VERSION == 2
    (old / "manifest.json").write_text(json.dumps({**manifest, "schema_version": 1}))
    expected = (rf"^{re.escape(str(old))}: shards are schema_version 1 \(list columns\); this code reads version 2 "
                r"\(binary per-residue columns\): re-run the python -m data_prep command that made them$")
    with pytest.raises(DataPrepError, match=expected):
        shards.check_schema(old)
    from data_prep.merge import merge

    with pytest.raises(DataPrepError, match=expected):
        merge([str(old)], tmp_path / "merged")
    with pytest.raises(DataPrepError, match=r"missing manifest"):
        shards.check_schema(tmp_path / "nothing")
