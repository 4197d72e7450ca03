"""PSSM parsing (all 635 real files), rejects, joining to sequences, and psiblast generation."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_prep import shards
from data_prep.fasta import FastaOptions, convert_fasta
from data_prep.pssm import convert_pssm
from data_prep.pssm_format import PSSM_TO_STANDARD, PssmFormatError, parse_pssm, parse_pssm_lines
from data_prep.pssm_generate import generate_pssms
from tests.conftest import SAMPLE


def test_all_real_pssms_parse_like_the_reference(shared_data):
    files = sorted((shared_data / "pssm").glob("*.pssm"))
    assert len(files) == 635
    residues = zero = 0
    for f in files:
        fast, ref = parse_pssm(f.read_bytes()), parse_pssm_lines(f.read_text())
        assert fast.sequence == ref.sequence and np.array_equal(fast.percent, ref.percent), f.name
        residues += len(fast.sequence)
        zero += int(fast.zero_row.sum())
    assert residues == 528045 and zero == 123
    p = parse_pssm((shared_data / "pssm" / "P06702.fasta.pssm").read_bytes())
    assert p.sequence.startswith("MT") and len(p.sequence) == 114
    # first row: M with 18% L and 79% M and 3% V (PSI-BLAST order ARNDCQEGHILKMFPSTWYV)
    assert p.percent[0].tolist() == [0] * 10 + [18, 0, 79] + [0] * 6 + [3]
    assert p.percent[1][PSSM_TO_STANDARD].tolist()[0] == 56  # A, in the vocabulary's order


def _mutate(text: str, line_no: int, fn) -> bytes:
    lines = text.split("\n")
    lines[line_no - 1] = fn(lines[line_no - 1])
    return "\n".join(lines).encode()


def test_bad_pssm_files_are_rejects(shared_data, tmp_path, ray_session):
    src = (shared_data / "pssm" / "P06702.fasta.pssm").read_text()
    bad = {
        "TRUNC.pssm": src[: len(src) // 2].encode(),
        "NONNUM.pssm": _mutate(src, 10, lambda l: l[:40] + "x" + l[41:]),
        "NANPCT.pssm": _mutate(src, 12, lambda l: l.replace("  0.", " nan.", 1) if "  0." in l else l[:-5] + "  nan"),
        "MISSING.pssm": _mutate(src, 20, lambda l: l.rsplit(" ", 1)[0]),
        "EXTRA.pssm": _mutate(src, 21, lambda l: l + " 7"),
        "SHIFTED.pssm": _mutate(src, 22, lambda l: l[:100] + l[101:] + " "),
        "EMPTY.pssm": b"",
        "GOOD.fasta.pssm": src.encode(),
    }
    for name, data in bad.items():
        (tmp_path / "in").mkdir(exist_ok=True)
        (tmp_path / "in" / name).write_bytes(data)
    with pytest.raises(PssmFormatError) as err:
        parse_pssm(bad["MISSING.pssm"])
    assert err.value.reason == "wrong_column_count" and err.value.line == 20
    m = convert_pssm([str(tmp_path / "in")], tmp_path / "out")
    assert m["rows"] == 1 and m["input_records"] == 8
    rej = {r["id"]: (r["reason"], r["line"]) for r in pq.read_table(tmp_path / "out" / "rejects").to_pylist()}
    assert rej == {"TRUNC": ("truncated", None), "NONNUM": ("non_numeric", 10), "NANPCT": ("non_numeric", 12),
                   "MISSING": ("wrong_column_count", 20), "EXTRA": ("wrong_column_count", 21),
                   "SHIFTED": ("bad_percentage", 22), "EMPTY": ("not_a_pssm", None)}
    row = shards.read_table(tmp_path / "out").to_pylist()[0]
    assert row["id"] == "GOOD" and row["length"] == 114 and len(row["pssm"]) == 114 * 20


def test_real_pssm_directory_to_shards(shared_data, tmp_path, ray_session):
    m = convert_pssm([str(shared_data / "pssm")], tmp_path / "p")
    assert m["rows"] == 635 == m["input_records"] and m["residues"] == 528045 and m["zero_rows"] == 123
    t = shards.read_table(tmp_path / "p")
    assert t.schema.field("pssm").type == pa.binary() == t.schema.field("zero_row").type
    assert sorted(t["id"].to_pylist())[:2] == ["A1X283", "A5YM72"]
    # Lossless: the stored bytes are the parser's percentages, row-major, PSI-BLAST column order.
    pssm, p_off, _ = shards.residue_arrays(t["pssm"], np.uint8)
    zero, z_off, _ = shards.residue_arrays(t["zero_row"], np.uint8)
    assert zero.sum() == 123 and (np.diff(p_off) == 20 * np.diff(z_off)).all()
    i = t["id"].to_pylist().index("P06702")
    ref = parse_pssm((shared_data / "pssm" / "P06702.fasta.pssm").read_bytes())
    assert np.array_equal(pssm[p_off[i]:p_off[i + 1]].reshape(-1, 20), ref.percent)
    assert np.array_equal(zero[z_off[i]:z_off[i + 1]], ref.zero_row)


def test_join_to_sequences_and_residue_mismatch(tmp_path, ray_session):
    seq_fa = tmp_path / "seqs.fasta"
    pssm_dir = SAMPLE / "pssm"
    corpus = convert_fasta([str(SAMPLE / "corpus.fasta")], tmp_path / "seqs")
    table = shards.read_table(tmp_path / "seqs")
    # change one residue of one protein that has a PSSM: that PSSM must become a reject
    victim = sorted(p.name.split(".")[0] for p in pssm_dir.glob("*.pssm.gz"))[0]
    lines = []
    for rid, s in zip(table["id"].to_pylist(), table["sequence"].to_pylist()):
        if rid == victim:
            s = ("W" if s[0] != "W" else "A") + s[1:]
        lines.append(f">{rid}\n{s}\n")
    seq_fa.write_text("".join(lines))
    convert_fasta([str(seq_fa)], tmp_path / "seqs2")
    m = convert_pssm([str(pssm_dir)], tmp_path / "joined", sequences=tmp_path / "seqs2")
    assert corpus["rows"] == 3000 and m["rows"] == 3000 and m["pssm_files"] == 200
    assert m["with_pssm"] == 199 and m["without_pssm"] == 2801 and m["rejected"] == {"residue_mismatch": 1}
    j = shards.read_table(tmp_path / "joined")
    has = [r for r in j.select(["id", "length", "pssm", "zero_row", "tokens"]).to_pylist() if r["pssm"] is not None]
    assert len(has) == 199 and all(len(r["pssm"]) == 20 * r["length"] == 20 * len(r["tokens"]) for r in has)
    assert victim not in {r["id"] for r in has}


def test_psiblast_generate_on_real_proteins(shared_data, tmp_path, ray_session):
    queries = tmp_path / "q.fasta"
    recs = (shared_data / "deeploc" / "deeploc_our_val_set.fasta").read_text().split(">")[1:5]
    queries.write_text("".join(">" + r for r in recs) + ">NOHIT1 nonsense\nWCWCWCWCWCWCWCWCWCWCWCWCWCWCWCWCWCWC\n")
    db = tmp_path / "db.fasta"  # the 4 proteins plus the first 300 of the validation set
    db.write_text("".join(">" + r for r in (shared_data / "deeploc" / "deeploc_our_val_set.fasta")
                          .read_text().split(">")[1:300]))
    m = generate_pssms(str(queries), str(db), tmp_path / "gen", iterations=3)
    assert m["input_records"] == 5 and m["rows"] == 4 and m["rejected"] == {"no_hits": 1}
    made = sorted(p.name for p in (tmp_path / "gen" / "pssm").glob("*.pssm"))
    assert len(made) == 4
    m2 = convert_pssm([str(tmp_path / "gen" / "pssm")], tmp_path / "p")
    t = shards.read_table(tmp_path / "p")
    seqs = dict(zip(t["id"].to_pylist(), t["sequence"].to_pylist()))
    first = recs[0].split("\n", 1)
    assert m2["rows"] == 4 and seqs[first[0].split()[0]] == first[1].replace("\n", "")


def test_missing_psiblast_is_a_clear_error(tmp_path, monkeypatch):
    from data_prep.errors import DataPrepError

    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(DataPrepError, match=r"^psiblast: not found on PATH; install NCBI BLAST\+"):
        generate_pssms("x.fasta", "y.fasta", tmp_path / "o")


def test_join_on_sequence_matches_real_pssms_to_renamed_corpus_rows(tmp_path, ray_session):
    """The shared corpus names the PSSM proteins `pssmcool|n`: only their residues match."""
    files = sorted((SAMPLE / "pssm").glob("*.pssm.gz"))[:5]
    convert_fasta([str(SAMPLE / "corpus.fasta")], tmp_path / "seqs")
    corpus = shards.read_table(tmp_path / "seqs")
    seq_of = dict(zip(corpus["id"].to_pylist(), corpus["sequence"].to_pylist()))
    renamed = tmp_path / "renamed.fasta"
    renamed.write_text("".join(f">other|{i}\n{seq_of[f.name.split('.')[0]]}\n" for i, f in enumerate(files)))
    convert_fasta([str(renamed)], tmp_path / "renamed")
    by_id = convert_pssm([str(f) for f in files], tmp_path / "by_id", sequences=tmp_path / "renamed")
    assert by_id["with_pssm"] == 0 and by_id["rejected"] == {"no_sequence": 5}
    dup = tmp_path / "dup"
    dup.mkdir()
    (dup / "copy.pssm.gz").write_bytes(files[0].read_bytes())
    m = convert_pssm([str(f) for f in files] + [str(dup / "copy.pssm.gz")], tmp_path / "by_seq",
                     sequences=tmp_path / "renamed", join_on="sequence")
    assert m["with_pssm"] == 5 and m["rows"] == 5 and m["rejected"] == {"duplicate_sequence": 1}
    assert m["join_on"] == "sequence"
