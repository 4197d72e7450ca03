"""LA training speed: the engine's LA (finetune's HeadTask) vs a straightforward pad-to-longest fp32 LA.

Both train light attention on one-hot embeddings of the real DeepLoc training file (our_val,
10% stratified hold-out for selection) for the same number of epochs and are scored on the
DeepLoc test file. The baseline, written here, shuffles proteins into fixed batches of 150
(the paper's batch size), pads every batch to its longest protein and runs fp32. The engine side
is what `python -m finetune deeploc` runs (engine.loop.run_plain with finetune/configs/la.yaml):
length-bucketed residue-budget batches (same 150-protein cap), streamed from the embedding
shards, DeepSpeed around the model. Time per epoch = the training pass (the engine's
`seconds_per_epoch`: planning, reading, collation and steps), validation excluded on both sides.

Epochs of the two loops alternate (the engine run is resumed one epoch at a time from its
checkpoint) so that load from other processes hits both alike.

Usage: python bench/bench_finetune.py [--epochs 8] [--lr 1e-3]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from engine.metrics import accuracy, confusion  # noqa: E402
from finetune.config import CONFIG_DIR, load_config  # noqa: E402
from finetune.data import load_embeddings, stratified_holdout  # noqa: E402
from finetune.experiment import load_head, predict, train_head  # noqa: E402
from finetune.extract import run_embed  # noqa: E402
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: stable timings on a shared 2-core machine; both sides use the same)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench_finetune_"))
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
    cfg = load_config(CONFIG_DIR / "la.yaml", ["wandb.mode=disabled", "ray.storage_path=" + str(tmp),
                                               "ray.name=bench-la", f"optim.lr={args.lr}"])
    cfg = replace(cfg, data=replace(cfg.data, train=str(tmp / "train")))
    baseline = Baseline(train, args.lr)
    base_seconds = []
    ours = {}
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        baseline.epoch()
        base_seconds.append(time.perf_counter() - t0)
        ours = train_head(replace(cfg, train=replace(cfg.train, max_epochs=epoch, patience=0)), local=True)
        print(f"  epoch {epoch}: baseline {np.mean(base_seconds):.2f}s, engine {ours['seconds_per_epoch']:.2f}s",
              flush=True)
    base_s, our_s = float(np.mean(base_seconds)), float(ours["seconds_per_epoch"])
    _, preds = baseline.evaluate(test)
    base_q = accuracy(confusion(test.labels["location_id"], preds, 10))
    task, model, _ = load_head(tmp / "bench-la", cfg)
    scored = predict(task, model, str(tmp / "test"), cfg)
    our_q = accuracy(confusion(np.array([p["location"][0] for p in scored]), np.array([p["location"][1] for p in scored]), 10))
    print(f"baseline pad-to-longest fp32: {base_s:.2f} s/epoch, test Q10 {base_q:.3f} (last epoch)")
    print(f"engine LA (bucketed, fp32): {our_s:.2f} s/epoch, test Q10 {our_q:.3f} (best validation epoch)")
    print(f"RATIO la_epoch_speedup = {base_s / our_s:.2f}x (target >= 2x)")
    print(json.dumps({"baseline_s_per_epoch": round(base_s, 3), "engine_s_per_epoch": round(our_s, 3),
                      "speedup": round(base_s / our_s, 2), "epochs": args.epochs}))


if __name__ == "__main__":
    main()
