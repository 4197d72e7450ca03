"""LA training speed: finetune's LA loop vs a straightforward pad-to-longest fp32 LA.

Both train light attention on one-hot embeddings of the real DeepLoc training file (our_val,
10% stratified hold-out for early stopping) for the same number of epochs and are scored on
the DeepLoc test file. The baseline, written here, shuffles proteins into fixed batches of 150
(the paper's batch size), pads every batch to its longest protein and runs fp32. finetune uses
length-bucketed residue-budget batches (same 150-protein cap). Prints seconds per epoch, the
ratio, and both Q10s.

Epochs of the two loops alternate so that load from other processes hits both alike.

Usage: python bench/bench_finetune.py [--epochs 8] [--bf16]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from finetune.config import TrainConfig  # noqa: E402
from finetune.data import load_embeddings, stratified_holdout  # noqa: E402
from finetune.extract import run_embed  # noqa: E402
from finetune.la import LightAttention  # noqa: E402
from finetune.metrics import accuracy, confusion  # noqa: E402
from finetune.train import predict, train_epoch, validation_loss  # noqa: E402
from test_finetune_data import deeploc_shards  # noqa: E402

SHARED = REPO.parent / "shared" / "data" / "deeploc"


class PlainLA(nn.Module):
    """The same architecture, written the straightforward way."""

    def __init__(self, dim):
        super().__init__()
        self.values = nn.Conv1d(dim, dim, 9, padding=4)
        self.attention = nn.Conv1d(dim, dim, 9, padding=4)
        self.dropout = nn.Dropout(0.25)
        self.mlp = nn.Sequential(nn.Linear(2 * dim, 32), nn.Dropout(0.25), nn.ReLU(), nn.BatchNorm1d(32), nn.Linear(32, 10))

    def forward(self, x, mask):
        v = self.dropout(self.values(x))
        e = self.attention(x).masked_fill(~mask[:, None], -1e9)
        pooled = (v * torch.softmax(e, -1)).sum(-1)
        top = v.masked_fill(~mask[:, None], -1e9).max(-1).values
        return self.mlp(torch.cat([pooled, top], -1))


def pad(data, idx):
    longest = int(data.lengths[idx].max())
    x = torch.zeros(len(idx), data.dim, longest)
    for row, i in enumerate(idx):
        x[row, :, : data.lengths[i]] = torch.from_numpy(data.residues[i].astype(np.float32)).T
    mask = torch.arange(longest)[None] < torch.from_numpy(data.lengths[idx])[:, None]
    return x, mask


class Baseline:
    """Shuffled fixed batches of 150, padded to the longest protein, fp32."""

    def __init__(self, train, lr):
        torch.manual_seed(0)
        self.rng, self.train = np.random.default_rng(0), train
        self.model = PlainLA(train.dim)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=0.0)
        self.loss_fn = nn.CrossEntropyLoss(ignore_index=-1)

    def epoch(self):
        self.model.train()
        order = self.rng.permutation(len(self.train))
        for start in range(0, len(order), 150):
            idx = order[start: start + 150]
            loss = self.loss_fn(self.model(*pad(self.train, idx)), torch.from_numpy(self.train.labels["location_id"][idx]))
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()

    @torch.no_grad()
    def evaluate(self, data):
        self.model.eval()
        preds, loss = [], 0.0
        for start in range(0, len(data), 150):
            idx = np.arange(start, min(start + 150, len(data)))
            logits = self.model(*pad(data, idx))
            loss += float(self.loss_fn(logits, torch.from_numpy(data.labels["location_id"][idx]))) * len(idx)
            preds.append(logits.argmax(-1).numpy())
        return loss / len(data), np.concatenate(preds)


class Ours:
    """finetune's loop: length-bucketed residue-budget batches (same 150-protein cap)."""

    def __init__(self, train, lr, bf16):
        self.cfg = TrainConfig(lr=lr, batch_residues=30000, max_batch_size=150, bf16=bf16)
        torch.manual_seed(0)
        self.rng, self.train = np.random.default_rng(0), train
        self.model = LightAttention(train.dim, membrane_head=False)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=0.0)

    def epoch(self):
        train_epoch(self.model, self.opt, self.train, self.cfg, self.rng)

    def evaluate(self, data):
        return validation_loss(self.model, data, self.cfg), predict(self.model, data, self.cfg)["location"]


def run_interleaved(runners: dict, valid, test, epochs: int) -> dict:
    """Epochs of the runners alternate, so load from other processes hits them alike.
    Time per epoch = training pass + validation pass; the best validation epoch is kept."""
    seconds = {k: 0.0 for k in runners}
    best = {k: (float("inf"), None) for k in runners}
    for epoch in range(epochs):
        for name, r in runners.items():
            t0 = time.perf_counter()
            r.epoch()
            val_loss, _ = r.evaluate(valid)
            seconds[name] += time.perf_counter() - t0
            if val_loss < best[name][0]:
                best[name] = (val_loss, {k: v.clone() for k, v in r.model.state_dict().items()})
        print(f"  epoch {epoch}: " + ", ".join(f"{k} {seconds[k] / (epoch + 1):.2f}s" for k in runners), flush=True)
    out = {}
    for name, r in runners.items():
        r.model.load_state_dict(best[name][1])
        _, preds = r.evaluate(test)
        out[name] = (seconds[name] / epochs, accuracy(confusion(test.labels["location_id"], preds, 10)))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--bf16", action="store_true", help="also run finetune's loop with bf16 autocast")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: stable timings on a shared 2-core machine; both sides use the same)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sets = {}
        for name, fasta in (("train", "deeploc_our_val_set.fasta"), ("test", "deeploc_test_set.fasta")):
            run_embed("onehot", deeploc_shards(SHARED / fasta, tmp / f"s_{name}"), tmp / name, use_ray=False)
            sets[name] = load_embeddings(tmp / name)
    full, test = sets["train"], sets["test"]
    keep, held = stratified_holdout(full.labels["location_id"], 0.1, 0)
    train, valid = full.subset(keep), full.subset(held)
    real = train.lengths.sum()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(train))
    padded = sum(len(order[s: s + 150]) * train.lengths[order[s: s + 150]].max() for s in range(0, len(order), 150))
    print(f"LA on one-hot DeepLoc: train {len(train)} proteins ({real} residues), valid {len(valid)}, test {len(test)}; "
          f"{args.epochs} epochs each; pad-to-longest batches hold {padded / real:.1f}x the real residues")
    runners = {"baseline": Baseline(train, args.lr), "finetune": Ours(train, args.lr, bf16=False)}
    if args.bf16:
        runners["finetune_bf16"] = Ours(train, args.lr, bf16=True)
    res = run_interleaved(runners, valid, test, args.epochs)
    (base_s, base_q), (our_s, our_q) = res["baseline"], res["finetune"]
    print(f"baseline pad-to-longest fp32: {base_s:.2f} s/epoch, test Q10 {base_q:.3f}")
    print(f"finetune LA (bucketed, fp32): {our_s:.2f} s/epoch, test Q10 {our_q:.3f}")
    if args.bf16:
        bf_s, bf_q = res["finetune_bf16"]
        print(f"finetune LA (bucketed, bf16 autocast): {bf_s:.2f} s/epoch ({base_s / bf_s:.2f}x), test Q10 {bf_q:.3f}")
    print(f"RATIO la_epoch_speedup = {base_s / our_s:.2f}x (target >= 2x); Q10 {our_q:.3f} vs baseline {base_q:.3f}")

if __name__ == "__main__":
    main()
