"""PSSMs from MMseqs2 (`pssm generate --engine mmseqs`): the MSA -> percentage conversion, ids,
order and without_pssm accounting on real sample proteins, agreement with the sample's PSI-BLAST
PSSMs, and pretraining on the result exactly as on PSI-BLAST PSSMs."""
from __future__ import annotations

import gzip
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from data_prep.make_sample import read_fasta, write_fasta
from data_prep.profiles_compare import kl_sums
from data_prep.profiles_msa import encode_rows, round_to_100, weighted_percent
from data_prep.pssm import convert_pssm
from data_prep.pssm_format import PSSM_ORDER, parse_pssm
from tests.conftest import SAMPLE

N_QUERIES = 16
ZERO_ROWS = 491  # residues no kept hit covers (no information)


def pct(row, letter):
    return int(row[PSSM_ORDER.index(letter)])


def test_weighted_percentages_by_hand():
    # query ACDEF; its own hit (purged as near-identical); two hits covering 2 and 4 columns.
    rows = [b"ACDEF", b"ACDEF", b"GC---", b"GWDE-"]
    percent = weighted_percent(encode_rows(rows, 5, "hand"))
    # Henikoff weights: query (0.5+0.25+0.5+0.5+1)/5 = 0.55, GC 0.25, GWDE 0.4375
    assert (pct(percent[0], "A"), pct(percent[0], "G")) == (44, 56)   # 0.55 vs 0.6875
    assert (pct(percent[1], "C"), pct(percent[1], "W")) == (65, 35)   # 0.8 vs 0.4375
    assert pct(percent[2], "D") == pct(percent[3], "E") == 100
    assert percent[4].sum() == 0            # only the query there: no information, as PSI-BLAST
    assert percent[:4].sum(1).tolist() == [100] * 4
    # only near-identical hits -> no information anywhere (PSI-BLAST writes all-zero rows then)
    assert weighted_percent(encode_rows([b"ACDEF", b"ACDEF"], 5, "self")).sum() == 0


def test_rounding_keeps_every_row_at_exactly_100():
    p = np.random.default_rng(0).dirichlet(np.full(20, 0.3), size=2000)
    out = round_to_100(p)
    assert (out.sum(1) == 100).all() and (np.abs(out - 100 * p) < 1).all()


def test_misaligned_msa_row_names_the_query():
    from data_prep.errors import DataPrepError

    with pytest.raises(DataPrepError, match="^P1: an aligned row has 3 columns, the query 5"):
        encode_rows([b"ACDEF", b"ACD"], 5, "P1")


@pytest.fixture(scope="module")
def sample_set(tmp_path_factory):
    """N_QUERIES sample proteins whose sample PSI-BLAST PSSM has information (made against
    sample/corpus.fasta), in reverse id order, plus a query without hits and an unusable id."""
    from data_prep.profiles_mmseqs import build_target

    work = tmp_path_factory.mktemp("profiles")
    corpus = {h.split()[0]: s for h, s in read_fasta(SAMPLE / "corpus.fasta")}
    psiblast = {}
    for f in sorted((SAMPLE / "pssm").glob("*.pssm.gz"), reverse=True):
        p = parse_pssm(gzip.decompress(f.read_bytes()))
        if p.percent.any():
            psiblast[f.name.split(".")[0]] = p.percent
        if len(psiblast) == N_QUERIES:
            break
    records = [(rid, corpus[rid]) for rid in psiblast]
    records.insert(5, ("NOHIT1 low complexity", "WCWC" * 9))
    records.insert(9, ("bad.id", corpus[records[0][0]]))
    write_fasta(work / "queries.fasta", records)
    target = build_target("mmseqs", str(SAMPLE / "corpus.fasta"), work / "target", 1)
    return {"work": work, "records": records, "psiblast": psiblast, "target": target}


@pytest.fixture(scope="module")
def mmseqs_run(sample_set, ray_session):
    """The CLI, 3 chunks of at most 7 queries (one Ray task each)."""
    import contextlib
    import io

    from data_prep.__main__ import main

    out = sample_set["work"] / "mm"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["pssm", "generate", "--engine", "mmseqs", "--fasta", str(sample_set["work"] / "queries.fasta"),
                     "--target-db", sample_set["target"], "--out", str(out), "--chunk-size", "7"])
    assert code == 0
    return out, json.loads(stdout.getvalue().strip().splitlines()[-1])


def test_mmseqs_profiles_ids_order_and_accounting(sample_set, mmseqs_run):
    out, summary = mmseqs_run
    assert summary["rows"] == N_QUERIES and summary["input_records"] == N_QUERIES + 2
    assert summary["rejected"] == {"id_not_a_file_name": 1, "no_hits": 1}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["engine"] == "mmseqs" and manifest["without_pssm"] == 1 and manifest["iterations"] == 3
    assert manifest["residues"] == 3029  # the residues of the queries with a PSSM file
    rej = pq.read_table(out / "rejects" / "part-00000.parquet").to_pylist()  # in input order
    assert [(r["id"], r["reason"], r["record_index"]) for r in rej] == [
        ("NOHIT1", "no_hits", 5), ("bad.id", "id_not_a_file_name", 9)]
    files = sorted(p.name for p in (out / "pssm").iterdir())
    assert files == sorted(f"{rid}.pssm" for rid in sample_set["psiblast"])
    rows = 0
    for rid, seq in sample_set["records"]:
        if rid in sample_set["psiblast"]:
            p = parse_pssm((out / "pssm" / f"{rid}.pssm").read_bytes())
            assert p.sequence == seq  # the file of each id holds that query, whatever the DB order
            sums = p.percent.sum(1, dtype=int)
            assert set(np.unique(sums)) <= {0, 100}  # a distribution per residue, or no information
            assert (sums[~p.zero_row] == 100).all()
            rows += len(seq)
    assert rows == 3029
    # the `pssm` command turns them into kind "pssm" shards like psiblast files
    m = convert_pssm([str(out / "pssm")], out / "shards")
    assert (m["rows"], m["residues"], m["rejected"], m["zero_rows"]) == (N_QUERIES, 3029, {}, ZERO_ROWS)


def test_mmseqs_profiles_agree_with_psiblast(sample_set, mmseqs_run):
    out, _ = mmseqs_run
    num = den = rows = 0
    for rid, ref in sample_set["psiblast"].items():
        a, b, r = kl_sums(ref, parse_pssm((out / "pssm" / f"{rid}.pssm").read_bytes()).percent)
        num, den, rows = num + a, den + b, rows + r
    assert rows == 2893
    assert num / den == pytest.approx(0.50, abs=0.03)  # bench/bench_profiles.py measures it on 500 corpus proteins
    # a profile with no information (the background) scores about 1; psiblast against itself 0
    nothing = sum(kl_sums(ref, None)[0] for ref in sample_set["psiblast"].values()) / den
    assert nothing == pytest.approx(1.0, abs=0.05)
    assert sum(kl_sums(ref, ref)[0] for ref in sample_set["psiblast"].values()) / den < 0.02


def _training_shards(records, pssm_of, out):
    """Sequence rows with the pssm columns of `data_prep pssm --sequences` (null without a PSSM),
    written directly (no Ray Data: the test stays fast); PSSM files parsed by the `pssm` parser."""
    import pyarrow as pa

    from data_prep.shards import data_dir, pack_residues, write_manifest, write_table_shards
    from data_prep.vocab import encode

    rows = []
    for rid, seq in records:
        p = None
        if rid in pssm_of:
            raw = pssm_of[rid].read_bytes()
            p = parse_pssm(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)
            assert p.sequence == seq
        rows.append((rid.split()[0], seq, p))
    table = pa.table({"id": [r[0] for r in rows], "sequence": [r[1] for r in rows],
                      "length": pa.array([len(r[1]) for r in rows], pa.int32()),
                      "tokens": pack_residues(encode(r[1]) for r in rows),
                      "pssm": pack_residues(None if r[2] is None else r[2].percent.reshape(-1) for r in rows),
                      "zero_row": pack_residues(None if r[2] is None else r[2].zero_row for r in rows)})
    write_table_shards(table, data_dir(out), 100, row_group_rows=8)
    without = sum(r[2] is None for r in rows)
    write_manifest(out, kind="sequences", rows=len(rows), residues=sum(len(r[1]) for r in rows), sources=[],
                   rejected={}, input_records=len(rows), without_pssm=without)
    return without


def test_pretraining_runs_on_mmseqs_profiles_as_on_psiblast_ones(sample_set, mmseqs_run, tmp_path):
    from engine.loop import run_plain
    from pretrain import config as pretrain_config
    from pretrain.config import CONFIG_DIR
    from pretrain.task import BiLSTMTask

    out, _ = mmseqs_run
    ids = list(sample_set["psiblast"])
    records = sample_set["records"]  # NOHIT1 and bad.id (a fine id for a sequence row) have no PSSM
    assert _training_shards(records, {rid: out / "pssm" / f"{rid}.pssm" for rid in ids},
                            tmp_path / "mm" / "joined") == 2
    assert _training_shards(records, {rid: SAMPLE / "pssm" / f"{rid}.pssm.gz" for rid in ids},
                            tmp_path / "ps" / "joined") == 2
    logs = {}
    for name in ("mm", "ps"):
        cfg = pretrain_config.load(CONFIG_DIR / "demo.yaml", [
            "model.embed_dim=16", "model.input_proj=32", "model.hidden=64", "model.proj=32",
            "data.residues_per_batch=1024", "data.max_length=256", "optim.warmup_steps=1",
            "train.max_steps=3", "train.log_every=1", "train.checkpoint_every=100", "deepspeed.zero_stage=1",
            "wandb.mode=disabled", f"data.train={tmp_path / name / 'joined'}", f"ray.storage_path={tmp_path}",
            f"ray.name=run_{name}"])
        run_plain(BiLSTMTask, cfg)
        logs[name] = [json.loads(x) for x in (tmp_path / f"run_{name}" / "metrics.jsonl").read_text().splitlines()]
    mm, ps = logs["mm"], logs["ps"]
    assert [m["step"] for m in mm] == [m["step"] for m in ps] == [1, 2, 3]
    assert [m["residues"] for m in mm] == [m["residues"] for m in ps]  # the same batches
    assert mm[0]["ce"] == pytest.approx(ps[0]["ce"], rel=1e-6)  # same model, same tokens before any update
    assert all(m["kl"] > 0 and np.isfinite(m["joint"]) for m in mm + ps)  # both targets train the PSSM head
    assert sorted(mm[0]) == sorted(ps[0])


def test_mmseqs_user_errors_name_the_tool_option_or_file(tmp_path, monkeypatch):
    from data_prep.errors import DataPrepError
    from data_prep.profiles_mmseqs import MmseqsOptions
    from data_prep.pssm_generate import generate_pssms

    fasta = tmp_path / "q.fasta"
    fasta.write_text(">P1\nMKV\n")
    with pytest.raises(DataPrepError, match=r"^--sensitivity: 9 is not in 1.0..7.5"):
        generate_pssms(str(fasta), str(fasta), tmp_path / "o", engine="mmseqs", mmseqs=MmseqsOptions(sensitivity=9))
    with pytest.raises(DataPrepError, match=r"^.*/nowhere: --target-db is not an mmseqs DB"):
        generate_pssms(str(fasta), None, tmp_path / "o", engine="mmseqs", target_db=str(tmp_path / "nowhere"))
    with pytest.raises(DataPrepError, match=r"^--db or --target-db is needed"):
        generate_pssms(str(fasta), None, tmp_path / "o", engine="mmseqs")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(DataPrepError, match=r"^mmseqs: not found on PATH; install MMseqs2"):
        generate_pssms(str(fasta), str(fasta), tmp_path / "o", engine="mmseqs")
