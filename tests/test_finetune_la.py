"""Light attention and the per-residue CNN: a hand computation, padding invariance, ablations."""
from __future__ import annotations

import numpy as np
import torch

from finetune.cnn import ResidueCNN, residue_loss
from finetune.heads import protein_loss
from finetune.la import LightAttention


def _batch(arrays: list[np.ndarray]) -> dict:
    lengths = torch.tensor([len(a) for a in arrays])
    x = torch.zeros(len(arrays), arrays[0].shape[1], int(lengths.max()))
    for i, a in enumerate(arrays):
        x[i, :, : len(a)] = torch.from_numpy(a).T
    return {"x": x, "mask": torch.arange(x.shape[-1])[None] < lengths[:, None]}


def test_la_equals_hand_computation():
    # dim 2, kernel 3, one protein of 3 residues: every step written out in numpy.
    model = LightAttention(dim=2, kernel_size=3, hidden=2, membrane_head=False).eval()
    wv = np.array([[[1, 0, -1], [0, 2, 0]], [[0.5, 0.5, 0.5], [1, -1, 1]]], np.float32)  # [out, in, k]
    we = np.array([[[0, 1, 0], [1, 0, 0]], [[0, 0, 1], [0, 1, -1]]], np.float32)
    with torch.no_grad():
        model.values.weight.copy_(torch.from_numpy(wv)); model.values.bias.copy_(torch.tensor([0.1, -0.2]))
        model.attention.weight.copy_(torch.from_numpy(we)); model.attention.bias.copy_(torch.tensor([0.0, 0.3]))
        lin = model.mlp.hidden[0]
        lin.weight.copy_(torch.tensor([[1.0, 0, 0, 1], [0, -1, 1, 0]])); lin.bias.zero_()
        model.mlp.location.weight.copy_(torch.arange(20, dtype=torch.float32).reshape(10, 2) / 10)
        model.mlp.location.bias.zero_()
    x = np.array([[1, 2], [0, -1], [3, 1]], np.float32)  # [L=3, dim=2]

    def conv(w, b):  # zero-padded cross-correlation, window centred on each residue
        padded = np.vstack([np.zeros((1, 2)), x, np.zeros((1, 2))])
        return np.array([[b[o] + (w[o] * padded[t: t + 3].T).sum() for t in range(3)] for o in range(2)])

    v, e = conv(wv, [0.1, -0.2]), conv(we, [0.0, 0.3])  # [dim, L]
    a = np.exp(e) / np.exp(e).sum(axis=1, keepdims=True)  # softmax over length, per feature
    features = np.concatenate([(a * v).sum(axis=1), v.max(axis=1)])
    h = np.maximum(np.array([[1, 0, 0, 1], [0, -1, 1, 0]]) @ features, 0) / np.sqrt(1 + 1e-5)  # BN at init, eval
    logits = (np.arange(20).reshape(10, 2) / 10) @ h
    batch = _batch([x])
    np.testing.assert_allclose(model.pool(batch["x"], batch["mask"]).detach().numpy()[0], features, rtol=1e-5)
    np.testing.assert_allclose(model(batch)["location"].detach().numpy()[0], logits, rtol=1e-5)


def test_la_is_padding_invariant_with_and_without_ablations():
    rng = np.random.default_rng(0)
    short, long = rng.normal(size=(7, 5)).astype(np.float32), rng.normal(size=(19, 5)).astype(np.float32)
    for options in ({}, {"softmax": False}, {"max_pool": False}):
        torch.manual_seed(1)
        model = LightAttention(dim=5, **options).eval()
        alone = model(_batch([short]))
        together = model(_batch([short, long]))
        for key in ("location", "membrane"):
            torch.testing.assert_close(alone[key][0], together[key][0], rtol=1e-5, atol=1e-5)
    assert LightAttention(dim=5, max_pool=False).mlp.hidden[0].in_features == 5
    assert LightAttention(dim=5).mlp.hidden[0].in_features == 10


def test_la_loss_ignores_unlabelled_rows():
    torch.manual_seed(0)
    model = LightAttention(dim=4).train()
    batch = _batch([np.ones((5, 4), np.float32), np.ones((6, 4), np.float32)])
    batch.update(location_id=torch.tensor([-1, 3]), membrane_id=torch.tensor([-1, -1]))
    loss = protein_loss(model(batch), batch)
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    batch.update(location_id=torch.tensor([-1, -1]))
    assert protein_loss(model(batch), batch).item() == 0.0  # nothing labelled: zero loss, not nan


def test_cnn_is_padding_invariant_and_shapes():
    rng = np.random.default_rng(2)
    short, long = rng.normal(size=(9, 6)).astype(np.float32), rng.normal(size=(30, 6)).astype(np.float32)
    model = ResidueCNN(dim=6).eval()
    alone, together = model(_batch([short])), model(_batch([short, long]))
    assert together["ss3"].shape == (2, 30, 3) and together["ss8"].shape[-1] == 8 and together["disorder"].shape[-1] == 2
    for key in alone:
        torch.testing.assert_close(alone[key][0], together[key][0, :9], rtol=1e-5, atol=1e-5)
    assert sum(p.numel() for p in model.first.parameters()) == 6 * 32 * 7 + 32


def test_weighted_residue_loss_is_the_class_weighted_mean():
    # 2 proteins x 4 residues, disorder labels with one unlabelled (-1) position
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 2)
    target = torch.tensor([[0, 0, 1, -1], [0, 0, 0, 1]])
    w = torch.tensor([0.6, 3.0])
    out, batch = {"disorder": logits}, {"disorder": target}
    ce = -torch.log_softmax(logits, -1).reshape(-1, 2)[torch.arange(8), target.reshape(-1).clamp(min=0)]
    keep = target.reshape(-1) >= 0
    weights = w[target.reshape(-1).clamp(min=0)] * keep
    expected = (weights * ce).sum() / weights.sum()
    torch.testing.assert_close(residue_loss(out, batch, {"disorder": w}), expected)
    torch.testing.assert_close(residue_loss(out, batch), ce[keep].mean())  # unweighted: the plain mean


def test_la_runs_with_deepspeed_bf16_casting():
    # DeepSpeed bf16 casts parameters but keeps buffers (batch-norm running statistics) in fp32:
    # the head must train and evaluate like that, and agree with fp32 to bf16 precision.
    torch.manual_seed(0)
    model = LightAttention(dim=8, kernel_size=3, hidden=4)
    batch = _batch([np.random.default_rng(i).normal(size=(n, 8)).astype(np.float32) for i, n in enumerate([5, 9, 7])])
    reference = model.eval()(batch)["location"]
    for p in model.parameters():
        p.data = p.data.to(torch.bfloat16)
    assert model.mlp.hidden[3].running_mean.dtype == torch.float32
    out = model.eval()(batch)["location"]
    assert out.dtype == torch.bfloat16
    assert torch.allclose(out.float(), reference, atol=0.1, rtol=0.05)
    model.train()(batch)["location"].float().sum().backward()
    assert model.values.weight.grad.dtype == torch.bfloat16
