"""No leakage between directions / through padding; embedder export round trip; any length."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from data_prep.vocab import encode
from engine.checkpoint import export
from pretrain.config import EmbeddingConfig
from pretrain.embed import BiLSTMEmbedder, load_embedder, mean_embedding
from pretrain.losses import neighbour_pairs
from pretrain.model import BiLSTMConfig, BiLSTMLM, reverse_within

SEQS = ["MKTAYIAKQRQISFVKSHFSRQ", "MSEQNNTEMTFQIQRIYTKDISFEAPNAPHVFQKDW", "MGSSHHHHHH"]


def batch(seqs):
    L = max(len(s) for s in seqs)
    tokens = torch.zeros(len(seqs), L, dtype=torch.long)
    for i, s in enumerate(seqs):
        tokens[i, :len(s)] = torch.from_numpy(encode(s).astype(np.int64))
    return tokens, torch.tensor([len(s) for s in seqs])


def model(shared: bool, seed: int = 0) -> BiLSTMLM:
    torch.manual_seed(seed)
    return BiLSTMLM(BiLSTMConfig(embed_dim=16, input_proj=24, hidden=48, proj=24, dropout=0.0,
                                 shared_directions=shared)).eval()


def predictions(m, tokens, lengths):
    """Logits that predict position j from the forward (j >= 1) and backward (j <= len-2) model."""
    logits, _ = m(tokens, lengths)
    fwd, bwd, _ = neighbour_pairs(logits, lengths)
    return fwd, bwd  # fwd[:, j] predicts j+1, bwd[:, j] predicts j


def test_reverse_within_keeps_padding_in_place():
    x = torch.arange(10).view(2, 5, 1)
    out = reverse_within(x, torch.tensor([3, 5]))[..., 0]
    assert out.tolist() == [[2, 1, 0, 3, 4], [9, 8, 7, 6, 5]]
    assert torch.equal(reverse_within(reverse_within(x, torch.tensor([3, 5])), torch.tensor([3, 5])), x)


@pytest.mark.parametrize("shared", [True, False], ids=["single_path", "separate"])
def test_no_position_sees_what_it_predicts(shared):
    """Changing residue j (or anything after it / before it) leaves the predictions of j unchanged,
    in a padded batch of proteins of different lengths."""
    m = model(shared)
    tokens, lengths = batch(SEQS)
    fwd, bwd = predictions(m, tokens, lengths)
    with torch.no_grad():
        for j in [0, 5, 9, 21]:
            after = tokens.clone()
            after[0, j:22] = torch.from_numpy(encode("W" * (22 - j)).astype(np.int64))
            f2, _ = predictions(m, after, lengths)
            if j >= 1:  # forward prediction of j comes from state j-1: blind to residues >= j
                assert torch.allclose(f2[0, :j], fwd[0, :j], atol=1e-6)
            before = tokens.clone()
            before[0, :j + 1] = torch.from_numpy(encode("W" * (j + 1)).astype(np.int64))
            _, b2 = predictions(m, before, lengths)
            # backward prediction of position i comes from state i+1: blind to residues <= i
            assert torch.allclose(b2[0, j:21], bwd[0, j:21], atol=1e-6)
            # the other proteins of the batch are untouched
            assert torch.allclose(f2[1:], fwd[1:], atol=1e-6) and torch.allclose(b2[1:], bwd[1:], atol=1e-6)


@pytest.mark.parametrize("shared", [True, False], ids=["single_path", "separate"])
def test_padding_changes_nothing(shared):
    m = model(shared)
    alone_t, alone_l = batch(SEQS[2:])
    padded_t, padded_l = batch(SEQS)
    garbage = padded_t.clone()
    garbage[2, 10:] = 7  # junk where protein 2 is padding
    with torch.no_grad():
        ref = m.layer_states(alone_t, alone_l)
        for t in (padded_t, garbage):
            got = m.layer_states(t, padded_l)
            for a, b in zip(ref, got):
                assert torch.allclose(a[0], b[2, :10], atol=1e-5)
        f_ref, b_ref = predictions(m, alone_t, alone_l)
        f_got, b_got = predictions(m, garbage, padded_l)
        assert torch.allclose(f_ref[0, :9], f_got[2, :9], atol=1e-5)
        assert torch.allclose(b_ref[0, :9], b_got[2, :9], atol=1e-5)


def test_chunked_states_equal_full_states():
    m = model(False)
    tokens, lengths = batch(SEQS)
    full = m.layer_states(tokens, lengths)
    chunked = m.layer_states(tokens, lengths, chunk=5)
    for a, b in zip(full, chunked):
        assert torch.allclose(a, b, atol=1e-5)


def _save_export(m: BiLSTMLM, tmp_path, combine="sum"):
    """Write an export the way checkpoints do (consolidated state dict + config + tokenizer)."""
    import json

    from safetensors.torch import save_file

    from data_prep.vocab import save_tokenizer, vocab_hash
    from engine.checkpoint import STATE_FILE, consolidated_state_dict
    from engine.config import to_dict

    ckpt = tmp_path / "run" / "checkpoint_00000001"
    ckpt.mkdir(parents=True)
    save_file(consolidated_state_dict(m), str(ckpt / "model.safetensors"))
    emb = EmbeddingConfig(combine=combine, chunk=8)
    (ckpt / "config.json").write_text(json.dumps({"kind": "bilstm", "model": to_dict(m.cfg),
                                                  "embedding": to_dict(emb), "vocab_hash": vocab_hash()}))
    save_tokenizer(ckpt)
    (ckpt / STATE_FILE).write_text(json.dumps({"step": 1}))
    return export(tmp_path / "run", tmp_path / "export"), emb


@pytest.mark.parametrize("shared, combine", [(True, "sum"), (False, "concat")])
def test_export_reload_gives_identical_embeddings(tmp_path, shared, combine):
    m = model(shared, seed=3)
    out, emb = _save_export(m, tmp_path, combine)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "special_tokens_map.json",
        "tokenizer.json", "tokenizer_config.json"]  # tokenizer_*: transformers.AutoTokenizer
    tokens, lengths = batch(SEQS)
    direct = BiLSTMEmbedder(m, emb).embed(tokens, lengths)
    loaded = load_embedder(out)
    again = loaded.embed(tokens, lengths)
    assert loaded.kind == "bilstm" and again.dtype == torch.float32
    assert again.shape == (3, len(SEQS[1]), loaded.dim)
    assert loaded.dim == (24 * 2 if combine == "sum" else 24 * 2 * 3)
    assert torch.equal(direct, again)
    # deterministic, per-protein independent of batch company, and mean pooling ignores padding
    single = loaded.embed(*batch(SEQS[2:]))
    assert torch.allclose(single[0], again[2, :10], atol=1e-5)
    pooled = mean_embedding(again, lengths)
    assert torch.allclose(pooled[2], again[2, :10].mean(0), atol=1e-6)


def test_embedder_handles_a_long_protein_in_chunks(tmp_path):
    m = model(True)
    out, _ = _save_export(m, tmp_path)
    emb = load_embedder(out)
    rng = np.random.default_rng(0)
    long = torch.from_numpy(rng.integers(5, 25, size=(1, 3000))).long()
    x = emb.embed(long, torch.tensor([3000]))
    assert x.shape == (1, 3000, emb.dim) and torch.isfinite(x).all()
    # chunking is exact: the tail equals a direct unchunked run
    ref = torch.stack([s.float() for s in m.layer_states(long, torch.tensor([3000]))]).sum(0)
    assert emb.embedding.chunk == 8  # 375 chunks carrying the LSTM state
    assert torch.allclose(ref, x, atol=1e-4)
