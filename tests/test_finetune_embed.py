"""Embedding extraction: one-hot, windows, a 35,000-residue protein, Ray Data, HDF5, errors."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pyarrow as pa
import pytest
import torch

from data_prep.shards import read_table, write_manifest, write_rejects, write_table_shards
from data_prep.vocab import PAD_ID, encode, save_tokenizer, vocab_hash
from finetune.__main__ import main
from finetune.config import EmbedConfig
from finetune.data import load_embeddings
from finetune.embedders import load_embedder
from finetune.errors import FinetuneError
from finetune.extract import BatchEmbedder, plan_batches, run_embed, windows
from finetune.onehot import OneHotEmbedder
from test_finetune_data import DEEPLOC_SCHEMA, deeploc_shards, read_fasta

LONG = 35_000


class Spy:
    """Wraps an embedder and records the most residue positions it was ever given at once."""

    def __init__(self, inner):
        self.inner, self.dim, self.kind, self.most = inner, inner.dim, inner.kind, 0

    def embed(self, tokens, lengths):
        self.most = max(self.most, tokens.numel())
        return self.inner.embed(tokens, lengths)


def random_encoder_export(path):
    """A small randomly initialised multitask encoder, exported per docs/contracts.md."""
    from safetensors.torch import save_file

    from multitask.model import ModelConfig, MultitaskEncoder

    torch.manual_seed(0)
    cfg = ModelConfig(dim=32, layers=2, heads=2, dropout=0.0)
    save_file({k: v.contiguous() for k, v in MultitaskEncoder(cfg).state_dict().items()}, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps({"kind": "encoder", "model": cfg.__dict__, "embedding": {},
                                                  "vocab_hash": vocab_hash()}))
    save_tokenizer(path)
    return path


def random_bilstm_export(path):
    """A small randomly initialised biLSTM LM, exported per docs/contracts.md."""
    from dataclasses import asdict

    from safetensors.torch import save_file

    from pretrain.model import BiLSTMConfig, BiLSTMLM

    torch.manual_seed(0)
    cfg = BiLSTMConfig(embed_dim=16, input_proj=32, hidden=64, proj=32, dropout=0.0)
    save_file({k: v.contiguous() for k, v in BiLSTMLM(cfg).state_dict().items()}, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps({"kind": "bilstm", "model": asdict(cfg), "embedding": {},
                                                  "vocab_hash": vocab_hash()}))
    save_tokenizer(path)
    return path


def long_protein(shared_data) -> str:
    """A real DeepLoc protein repeated to exactly 35,000 residues."""
    seq = read_fasta(shared_data / "deeploc" / "deeploc_test_set.fasta")[0][1]
    return (seq * (LONG // len(seq) + 1))[:LONG]


def test_onehot_embedder():
    tokens = torch.tensor([list(encode("ACX")) + [PAD_ID]])
    out = OneHotEmbedder().embed(tokens, torch.tensor([3]))
    assert out.shape == (1, 4, 21)
    assert out[0, 0, 0] == 1 and out[0, 1, 1] == 1 and out[0, 2, 20] == 1 and out[0, 3].sum() == 0


def test_windows_cover_every_residue_once_and_batches_respect_budget():
    for length in (1, 99, 100, 101, 4000, 35_000):
        spans = windows(length, 100, 10)
        covered = np.concatenate([np.arange(a, b) for _, _, a, b in spans])
        np.testing.assert_array_equal(covered, np.arange(length))
        assert all(s <= a and b <= e and e - s <= 100 for s, e, a, b in spans)
    lengths = np.random.default_rng(0).integers(10, 1000, 500)
    batches = plan_batches(lengths, 5000, 64)
    assert sorted(np.concatenate(batches).tolist()) == list(range(500))
    assert all(lengths[b].max() * len(b) <= 5000 and len(b) <= 64 for b in batches)


def test_35k_protein_onehot_is_exact_and_memory_bounded(shared_data):
    seq = long_protein(shared_data)
    cfg = EmbedConfig(batch_residues=8000, chunk_residues=2000, chunk_overlap=100)
    spy = Spy(OneHotEmbedder())
    (out,), chunked = BatchEmbedder(spy, cfg).embed([encode(seq)])
    assert chunked[0] and out.shape == (LONG, 21)
    full = OneHotEmbedder().embed(torch.from_numpy(encode(seq).astype(np.int64))[None], torch.tensor([LONG]))[0]
    np.testing.assert_array_equal(out, full.numpy())  # one-hot has no context: stitching is exact
    assert spy.most <= cfg.batch_residues  # never more than the budget in flight


def test_35k_protein_random_encoder_is_embedded_with_bounded_memory(shared_data, tmp_path):
    export = random_encoder_export(tmp_path)
    seq = long_protein(shared_data)
    cfg = EmbedConfig(batch_residues=4000, chunk_residues=2000, chunk_overlap=200)
    spy = Spy(load_embedder(str(export)))
    (out,), chunked = BatchEmbedder(spy, cfg).embed([encode(seq)])
    assert chunked[0] and out.shape == (LONG, 32) and np.isfinite(out).all()
    assert spy.most <= cfg.batch_residues
    # Far from a seam the window sees enough context: a window's middle equals a direct embedding of it.
    direct = spy.inner.embed(torch.from_numpy(encode(seq[:2000]).astype(np.int64))[None], torch.tensor([2000]))[0]
    np.testing.assert_allclose(out[:1000], direct[:1000].numpy(), atol=1e-5)


@pytest.mark.parametrize("chunk", [2000, 0])
def test_35k_protein_random_bilstm_is_embedded_with_bounded_memory(shared_data, tmp_path, chunk):
    export = random_bilstm_export(tmp_path)
    seq = long_protein(shared_data)
    # One window per forward: batched LSTMs crawl when other processes oversubscribe the 2 cores.
    cfg = EmbedConfig(batch_residues=2000, chunk_residues=chunk, chunk_overlap=200)
    spy = Spy(load_embedder(str(export)))
    (out,), chunked = BatchEmbedder(spy, cfg).embed([encode(seq)])
    assert out.shape == (LONG, spy.dim) and np.isfinite(out).all() and bool(chunked[0]) == (chunk > 0)
    # Windows bound the input; chunk 0 hands the whole protein to the biLSTM's own exact state-carrying path.
    assert spy.most == LONG if chunk == 0 else spy.most <= cfg.batch_residues


def _with_long_protein(shared_data, tmp_path):
    """12 real DeepLoc rows plus one protein concatenated to 35,000 residues."""
    src = deeploc_shards(shared_data / "deeploc" / "deeploc_our_val_set.fasta", tmp_path / "src", limit=12)
    rows = read_table(src).to_pylist()
    seq = long_protein(shared_data)
    rows.append({**rows[0], "id": "LONG35K", "sequence": seq, "length": LONG, "tokens": encode(seq).tobytes()})
    out = tmp_path / "with_long"
    write_table_shards(pa.Table.from_pylist(rows, schema=DEEPLOC_SCHEMA), out / "data", 5)
    write_rejects([], out)
    write_manifest(out, kind="deeploc", rows=len(rows), residues=sum(r["length"] for r in rows), sources=["test"],
                   rejected={}, input_records=len(rows))
    return out


def test_ray_data_embedding_with_long_protein_and_hdf5(shared_data, tmp_path, ray_session):
    data = _with_long_protein(shared_data, tmp_path)
    cfg = EmbedConfig(batch_residues=8000, chunk_residues=3000, rows_per_task=4, rows_per_shard=6)
    manifest = run_embed("onehot", data, tmp_path / "emb", cfg, hdf5=str(tmp_path / "emb.h5"))
    assert manifest["rows"] == manifest["input_records"] == 13 and manifest["chunked"] == 1 and manifest["dim"] == 21
    emb = load_embeddings(tmp_path / "emb")
    assert len(emb) == 13 and len(list((tmp_path / "emb" / "data").glob("part-*.parquet"))) == 3
    local = load_embeddings(run_embed("onehot", data, tmp_path / "local", cfg, use_ray=False) and tmp_path / "local")
    by_id = dict(zip(local.ids, local.residues))
    for pid, res, pooled in zip(emb.ids, emb.residues, emb.pooled):
        np.testing.assert_array_equal(res, by_id[pid])  # Ray Data path == in-process path
        np.testing.assert_allclose(pooled, res.astype(np.float32).mean(0), rtol=1e-3)
    i = emb.ids.index("LONG35K")
    assert emb.lengths[i] == LONG and emb.residues[i].dtype == np.float16
    assert emb.labels["location_id"].dtype == np.int64 and "split" in emb.meta
    with h5py.File(tmp_path / "emb.h5") as h5:
        assert len(h5) == 13 and h5["LONG35K"].shape == (LONG, 21) and h5["LONG35K"].dtype == np.float16
        np.testing.assert_array_equal(h5["LONG35K"][:], emb.residues[i])


def test_bad_model_and_data_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(FinetuneError, match="config.json: missing"):
        load_embedder(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"kind": "gpt"}))
    with pytest.raises(FinetuneError, match="kind='gpt'"):
        load_embedder(str(tmp_path))
    assert main(["embed", "--model", "onehot", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "--local"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "nope" in err and len(err.splitlines()) == 1


def test_actor_pool_leaves_a_cpu_for_the_reads():
    from finetune.extract import actor_pool_size

    assert actor_pool_size(2, 2) == 1 and actor_pool_size(2, 3) == 2 and actor_pool_size(1, 16) == 1
    with pytest.raises(FinetuneError, match="--num-cpus"):
        actor_pool_size(1, 1)


@pytest.mark.slow
def test_cli_embed_with_demo_config_finishes_without_num_cpus(shared_data, tmp_path):
    # The demo config asks for 2 actors. On a 2-CPU machine a pool of 2 once took both CPUs and the
    # Parquet read tasks never ran: the command sat idle forever. A fresh process and a fresh Ray
    # (the machine's own CPUs, no --num-cpus), under a timeout, prove that it now finishes.
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    shards = deeploc_shards(shared_data / "deeploc" / "deeploc_test_set.fasta", tmp_path / "shards")
    out = tmp_path / "emb"
    env = {**os.environ, "RAY_ADDRESS": "", "PROTLM_LOG_DIR": str(tmp_path / "logs")}  # never join another test's cluster
    proc = subprocess.run([sys.executable, "-m", "finetune", "embed", "--model", "onehot", "--data", str(shards),
                           "--out", str(out), "--config", str(repo / "finetune" / "configs" / "demo.yaml")],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["rows"] == manifest["input_records"] == 2768 and manifest["dim"] == 21
    if (os.cpu_count() or 0) <= 2:
        assert "embed.num_actors 2 -> 1" in (tmp_path / "logs" / "finetune.log").read_text()
    assert json.loads(proc.stdout)["rows"] == 2768  # stdout: the JSON result alone


def test_local_embedding_uses_a_gpu_the_process_sees(monkeypatch):
    """embed.use_gpu None (the default) means 'when there is one', in-process as under Ray."""
    from finetune.extract import local_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert local_device(EmbedConfig()) == "cuda"
    assert local_device(EmbedConfig(use_gpu=False)) == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert local_device(EmbedConfig()) == local_device(EmbedConfig(use_gpu=True)) == "cpu"
