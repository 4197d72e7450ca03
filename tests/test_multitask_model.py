"""Multitask model: masking statistics, label masking in losses, no label leakage, padding
invariance, rotary past the training length, metrics."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from data_prep.vocab import MASK_ID, PAD_ID, STANDARD_IDS, VOCAB_SIZE
from multitask.data import collate, get_example, load_proteins
from multitask.losses import TaskWeights, task_losses, total_loss
from multitask.masking import IGNORE, MaskingConfig, mask_tokens
from multitask.metrics import Confusion
from multitask.model import ModelConfig, MultitaskEncoder, apply_rotary, rotary_tables
from test_multitask_data import real_shards

SMALL = ModelConfig(dim=64, layers=2, heads=4, dropout=0.0)
CONV = ModelConfig(dim=64, layers=2, heads=4, dropout=0.0, conv_kernel=9)  # with the local convolution


@pytest.fixture(scope="module")
def shards(shared_data):
    return real_shards()


@pytest.fixture(scope="module")
def mixed_batch(shards):
    """Real proteins of three kinds in one batch: ss-labelled, DeepLoc-labelled, unlabelled."""
    ss, dl, corpus = (load_proteins(shards[k]) for k in ("ss_train", "deeploc_train", "corpus"))
    rng = np.random.default_rng(0)
    examples = [get_example(ss, i, 128, rng=rng) for i in range(3)] + \
               [get_example(dl, i, 128, rng=rng) for i in range(3)] + \
               [get_example(corpus, i, 128, rng=rng) for i in range(2)]
    return collate(examples)


def test_bert_masking_statistics_and_never_pads(shards):
    corpus = load_proteins(shards["corpus"])
    batch = collate([get_example(corpus, i, 512) for i in range(400)])
    tokens, lengths = batch["tokens"], batch["lengths"]
    real = torch.arange(tokens.shape[1])[None] < lengths[:, None]
    assert (~real).sum() > 10_000  # plenty of padding to hit by mistake
    gen = torch.Generator().manual_seed(0)
    corrupted, targets = mask_tokens(tokens, lengths, MaskingConfig(), gen)
    picked = targets != IGNORE
    n_real, n_picked = int(real.sum()), int(picked.sum())
    assert n_real > 100_000
    assert abs(n_picked / n_real - 0.15) < 0.005
    assert not (picked & ~real).any() and (corrupted[~real] == PAD_ID).all()
    assert torch.equal(targets[picked], tokens[picked])
    masked = (corrupted == MASK_ID) & picked
    changed_random = (corrupted != MASK_ID) & (corrupted != tokens) & picked
    kept = (corrupted == tokens) & picked
    assert abs(masked.sum() / n_picked - 0.8) < 0.01
    # a random replacement equals the original 1 time in 20: 10% * 19/20 visibly changed
    assert abs(changed_random.sum() / n_picked - 0.1 * 19 / 20) < 0.01
    assert abs(kept.sum() / n_picked - (0.1 + 0.1 / 20)) < 0.01
    rnd = corrupted[changed_random]
    assert ((rnd >= int(STANDARD_IDS[0])) & (rnd <= int(STANDARD_IDS[-1]))).all()
    assert torch.equal(corrupted[~picked], tokens[~picked])


def test_random_replacement_mode(shards):
    corpus = load_proteins(shards["corpus"])
    batch = collate([get_example(corpus, i, 512) for i in range(200)])
    tokens, lengths = batch["tokens"], batch["lengths"]
    real = torch.arange(tokens.shape[1])[None] < lengths[:, None]
    corrupted, targets = mask_tokens(tokens, lengths, MaskingConfig(mode="random", rate=0.05),
                                     torch.Generator().manual_seed(1))
    assert torch.equal(targets != IGNORE, real)  # loss on every real residue
    changed = (corrupted != tokens).sum() / real.sum()
    assert abs(changed - 0.05 * 19 / 20) < 0.004
    assert not (corrupted == MASK_ID).any() and (corrupted[~real] == PAD_ID).all()


def _grad_norm(module: torch.nn.Module) -> float:
    return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)


def test_missing_labels_give_zero_loss_and_zero_gradient(mixed_batch):
    torch.manual_seed(0)
    model = MultitaskEncoder(SMALL)
    no_ss = {k: v.clone() for k, v in mixed_batch.items()}
    for k in ("ss3", "ss8", "disorder"):
        no_ss[k][:] = -1
    out = model(no_ss["tokens"], no_ss["lengths"])
    parts = task_losses(out, {**no_ss, "mlm_targets": torch.full_like(no_ss["tokens"], IGNORE)})
    for k in ("ss3", "ss8", "disorder", "mlm"):
        assert parts[k][0].item() == 0.0 and parts[k][1].item() == 0
    assert parts["location"][1].item() == 3 and parts["location"][0].item() > 0
    loss = total_loss(parts, TaskWeights())
    loss.backward()
    assert torch.isfinite(loss)
    for head in (model.ss3, model.ss8, model.disorder, model.mlm):
        assert _grad_norm(head) == 0.0  # present in the graph, but no gradient
    assert _grad_norm(model.location) > 0
    # The ss loss of a batch equals the ss loss of its ss-labelled proteins alone: the others add nothing.
    model.zero_grad()
    full = task_losses(model(mixed_batch["tokens"], mixed_batch["lengths"]),
                       {**mixed_batch, "mlm_targets": torch.full_like(mixed_batch["tokens"], IGNORE)})
    only = {k: v[:3] for k, v in mixed_batch.items()}
    alone = task_losses(model(only["tokens"], only["lengths"]),
                        {**only, "mlm_targets": torch.full_like(only["tokens"], IGNORE)})
    assert full["ss3"][1] == alone["ss3"][1]
    torch.testing.assert_close(full["ss3"][0], alone["ss3"][0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cfg", [SMALL, CONV], ids=["attention", "with-conv"])
def test_labels_never_reach_the_predictions(mixed_batch, cfg):
    torch.manual_seed(0)
    model = MultitaskEncoder(cfg).eval()
    out = model(mixed_batch["tokens"], mixed_batch["lengths"])
    scrambled = dict(mixed_batch)
    g = torch.Generator().manual_seed(3)
    for k, n in (("ss3", 3), ("ss8", 8), ("disorder", 2)):
        scrambled[k] = torch.randint(-1, n, mixed_batch[k].shape, generator=g)
    scrambled["location"] = torch.randint(-1, 10, (len(mixed_batch["location"]),), generator=g)
    scrambled["membrane"] = 1 - mixed_batch["membrane"].clamp(min=0)
    assert not torch.equal(scrambled["ss3"], mixed_batch["ss3"])
    # the model's signature takes tokens and lengths only; run the training-time path too
    out2 = model(scrambled["tokens"], scrambled["lengths"])
    for k in out:
        assert torch.equal(out[k], out2[k]), k
    base = task_losses(out, {**mixed_batch, "mlm_targets": torch.full_like(mixed_batch["tokens"], IGNORE)})
    other = task_losses(out2, {**scrambled, "mlm_targets": torch.full_like(mixed_batch["tokens"], IGNORE)})
    assert not torch.isclose(base["ss3"][0], other["ss3"][0])  # the labels did change the loss


@pytest.mark.parametrize("cfg", [SMALL, CONV], ids=["attention", "with-conv"])
def test_padding_invariance(mixed_batch, cfg):
    torch.manual_seed(0)
    model = MultitaskEncoder(cfg).eval()
    if cfg.conv_kernel:  # padding tokens must not reach the convolution: give them a loud embedding
        with torch.no_grad():
            model.embed.weight[PAD_ID] = 100.0
    out = model(mixed_batch["tokens"], mixed_batch["lengths"])
    shortest = int(mixed_batch["lengths"].argmin())
    n = int(mixed_batch["lengths"][shortest])
    assert n < mixed_batch["tokens"].shape[1] - 20  # really padded in the batch
    alone = model(mixed_batch["tokens"][shortest:shortest + 1, :n], mixed_batch["lengths"][shortest:shortest + 1])
    for k in ("mlm", "ss3", "ss8", "disorder"):
        torch.testing.assert_close(alone[k][0], out[k][shortest, :n], rtol=1e-4, atol=1e-5)
    for k in ("location", "membrane"):
        torch.testing.assert_close(alone[k][0], out[k][shortest], rtol=1e-4, atol=1e-5)


def test_rotary_runs_past_training_length():
    torch.manual_seed(0)
    model = MultitaskEncoder(SMALL).eval()
    n = 3000  # demo trains on 256 residues; a learned table capped at 1024 would fail here
    tokens = torch.randint(int(STANDARD_IDS[0]), int(STANDARD_IDS[-1]) + 1, (1, n))
    out = model(tokens, torch.tensor([n]))
    assert out["ss3"].shape == (1, n, 3) and torch.isfinite(out["ss3"]).all()
    # rotary scores depend on relative position only, also far past the training length
    cos, sin = rotary_tables(n, 16, SMALL.rope_base, "cpu", torch.float64)
    q, k = torch.randn(1, 1, 1, 16, dtype=torch.float64), torch.randn(1, 1, 1, 16, dtype=torch.float64)
    qr, kr = apply_rotary(q.expand(1, 1, n, 16), cos, sin), apply_rotary(k.expand(1, 1, n, 16), cos, sin)
    score = lambda m, j: float((qr[0, 0, m] * kr[0, 0, j]).sum())
    assert abs(score(10, 3) - score(2510, 2503)) < 1e-9 and abs(score(10, 3) - score(10, 4)) > 1e-6


def test_confusion_metrics():
    c = Confusion(2)
    c.update(torch.tensor([1, 1, 0, 0, 1]), torch.tensor([1, 0, 0, -1, 1]))
    assert c.count == 4 and c.accuracy() == 0.75
    assert abs(c.mcc() - 0.5773502691896258) < 1e-12  # tp=2 fp=1 tn=1 fn=0
    q = Confusion(3)
    q.update(torch.tensor([0, 1, 2, 2]), torch.tensor([0, 1, 1, 2]), keep=torch.tensor([True, True, True, False]))
    assert q.count == 3 and abs(q.accuracy() - 2 / 3) < 1e-12


def test_optional_go_head_masks_proteins_without_terms(mixed_batch, shards):
    torch.manual_seed(0)
    model = MultitaskEncoder(ModelConfig(dim=64, layers=1, heads=4, go_terms=5))
    dl = load_proteins(shards["deeploc_train"])
    examples = [get_example(dl, i, 64) for i in range(4)]
    examples[0].go, examples[1].go = np.array([0, 3]), np.array([4])  # the others have no GO terms
    batch = collate(examples, go_terms=5)
    assert batch["go"][0].tolist() == [1, 0, 0, 1, 0] and (batch["go"][2:] == -1).all()
    out = model(batch["tokens"], batch["lengths"])
    parts = task_losses(out, {**batch, "mlm_targets": torch.full_like(batch["tokens"], IGNORE)})
    assert parts["go"][1].item() == 10 and torch.isfinite(parts["go"][0])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(out["go"][:2], batch["go"][:2])
    torch.testing.assert_close(parts["go"][0], expected)
    assert "go" not in MultitaskEncoder(SMALL)(batch["tokens"], batch["lengths"])


def test_disorder_loss_weights_both_classes_equally(mixed_batch):
    """Predicting "ordered" everywhere must not pay off: on real FLIP labels (a few percent
    disordered) that constant costs as much as the constant "disordered"."""
    labels = mixed_batch["disorder"]
    keep = labels >= 0
    pos = int((labels == 1).sum())
    assert 0 < pos < 0.2 * int(keep.sum())  # real data: disorder is the rare class
    constant = {}
    for name, logit in (("ordered", -4.0), ("disordered", 4.0)):
        out = {"disorder": torch.full(labels.shape, logit)}
        loss, n = task_losses({**_zero_heads(mixed_batch), **out},
                              {**mixed_batch, "mlm_targets": torch.full_like(mixed_batch["tokens"], IGNORE)})["disorder"]
        assert int(n) == int(keep.sum())
        constant[name] = float(loss)
    assert constant["ordered"] == pytest.approx(constant["disordered"], rel=1e-5)


def _zero_heads(batch):
    B, L = batch["tokens"].shape
    return {"mlm": torch.zeros(B, L, VOCAB_SIZE), "ss3": torch.zeros(B, L, 3), "ss8": torch.zeros(B, L, 8),
            "location": torch.zeros(B, 10), "membrane": torch.zeros(B)}


def test_compile_option_compiles_blocks_on_gpus_only(monkeypatch):
    """model.compile: each block is compiled in place on a GPU machine (parameter names, hence
    checkpoints and exports, unchanged); on a CPU the model is left as it is."""
    from multitask.config import MultitaskConfig
    from multitask.task import MultitaskTask

    cfg = MultitaskConfig(model=ModelConfig(dim=32, layers=2, heads=2, compile=True))
    plain = MultitaskTask(cfg).build_model()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    compiled = MultitaskTask(cfg).build_model()
    assert all(b._compiled_call_impl is not None for b in compiled.blocks)
    assert all(b._compiled_call_impl is None for b in plain.blocks)
    assert list(compiled.state_dict()) == list(plain.state_dict())
