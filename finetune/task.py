"""Heads on frozen embeddings as an engine `Task`: light attention, the mean-pool MLP, the CNN.

The engine trains them like the language models (DeepSpeed, Ray Train or a plain process,
checkpoints, W&B); this file says only what rows they read, how rows become tensors and the
loss. Rows come from embedding shards (`python -m finetune embed`): `embedding` is float16
[length, dim] bytes, `pooled` the per-protein mean, plus the label columns.

Data: `data.train` trains; the validation rows (which select the best epoch and stop training)
are `data.valid`, else the rows of `data.train` whose `split` is "valid", else a seeded
stratified hold-out of `data.holdout_fraction` (by location for DeepLoc). `data.test` is never
read here: finetune/experiment.py scores the selected model on it afterwards.
"""
from __future__ import annotations

import json
from functools import cached_property

import numpy as np
import torch

from engine.config import ConfigError
from engine.sources import Mixture, Source, read_column, shard_columns
from engine.task import Task

from .baselines import PooledMLP
from .cnn import ResidueCNN, residue_loss
from .data import stratified_holdout
from .heads import protein_loss
from .la import LightAttention
from .standardize import class_weights, feature_stats, standardize

PROTEIN_LABELS = ("location_id", "membrane_id")
RESIDUE_LABELS = ("ss3", "ss8", "disorder")


def embedding_dim(path: str) -> int:
    """`dim` of an embedding shard dir's manifest (a one-line error when it is not one)."""
    from engine.sources import _filesystem

    fs, base = _filesystem(path)
    try:
        manifest = json.loads(fs.open_input_stream(f"{base}/manifest.json").read())
    except (FileNotFoundError, OSError):
        raise ConfigError(f"{path}: no manifest.json (embed it first: python -m finetune embed)") from None
    if manifest.get("kind") != "embeddings":
        raise ConfigError(f"{path}/manifest.json: kind={manifest.get('kind')!r}, expected 'embeddings' "
                          "(run python -m finetune embed first)")
    return int(manifest["dim"])


def crop_ends(length: int, keep: int) -> np.ndarray:
    """Residue indices of the first keep//2 and last keep - keep//2 residues (DeepLoc's crop)."""
    if length <= keep:
        return np.arange(length)
    return np.concatenate([np.arange(keep // 2), np.arange(length - (keep - keep // 2), length)])


class HeadTask(Task):
    kind = "finetune-head"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.head = cfg.model.head
        self.per_residue = self.head == "cnn"
        if not cfg.data.train:
            raise ConfigError("data.train: required (an embedding dir; --train)")
        if not self.per_residue and cfg.data.long_proteins != "crop":
            raise ConfigError("data.long_proteins: per-protein heads need crop (windows would count a protein "
                              "several times)")
        self.dim = embedding_dim(cfg.data.train)
        present = set(shard_columns(cfg.data.train))
        self.labels = [c for c in (RESIDUE_LABELS if self.per_residue else PROTEIN_LABELS) if c in present]
        if not self.per_residue and "location_id" not in self.labels:
            raise ConfigError(f"{cfg.data.train}: no location_id column (not DeepLoc embeddings)")
        if self.per_residue and "ss3" not in self.labels:
            raise ConfigError(f"{cfg.data.train}: no ss3 column (not secondary-structure embeddings)")
        self.has_eval_mask = "eval_mask" in present
        payload = "pooled" if self.head == "mlp" else "embedding"
        self.columns = [payload, *self.labels] + (["eval_mask"] if self.per_residue and self.has_eval_mask else [])

    # ------------------------------------------------------------------ data
    @cached_property
    def split(self) -> tuple[np.ndarray | None, np.ndarray | None, str]:
        """(training rows of data.train, validation rows of data.train, how); None = all rows /
        validation is data.valid."""
        cfg = self.cfg.data
        if cfg.valid:
            return None, None, "data.valid"
        if "split" in shard_columns(cfg.train):
            splits = read_column(cfg.train, "split")
            valid = np.array([s == "valid" for s in splits])
            if valid.any():
                return np.flatnonzero(~valid), np.flatnonzero(valid), "rows with split=valid"
        if cfg.holdout_fraction <= 0:
            raise ConfigError("data.holdout_fraction: must be > 0 when data.valid is not set")
        labels = (read_column(cfg.train, "location_id").astype(np.int64) if not self.per_residue
                  else np.zeros(len(read_column(cfg.train, "length")), np.int64))
        keep, held = stratified_holdout(labels, cfg.holdout_fraction, cfg.split_seed)
        return keep, held, f"stratified hold-out {cfg.holdout_fraction} (seed {cfg.split_seed})"

    def train_data(self) -> Mixture:
        rows, _, _ = self.split
        # shuffle_rows: labelled sets are often sorted (by class, by source set); draw rows, not row groups
        return Mixture([Source(self.cfg.data.train, list(self.columns), rows=rows, shuffle_rows=True)])

    def eval_data(self) -> list[Source]:
        _, held, _ = self.split
        if self.cfg.data.valid:
            return [Source(self.cfg.data.valid, list(self.columns), name="valid")]
        return [Source(self.cfg.data.train, list(self.columns), rows=held, name="valid")]

    def residue_tasks(self) -> tuple[str, ...]:
        """Per-residue tasks with at least one label in the training rows (FLIP has no 8-state labels)."""
        rows, _, _ = self.split
        out = []
        for name in self.labels:
            cells = read_column(self.cfg.data.train, name)
            cells = cells if rows is None else cells[rows]
            if any(c is not None and len(c) and np.frombuffer(c, np.int8).max() >= 0 for c in cells):
                out.append(name)
        return tuple(out)

    @cached_property
    def stats(self) -> dict | None:
        """Per-dimension mean and scale of the head's input over the training rows (the hold-out
        removed): residues for LA and the CNN, pooled vectors for the MLP; None when
        model.standardize is off. A loaded head takes them from its export instead (load_head)."""
        if not self.cfg.model.standardize:
            return None
        rows, _, _ = self.split
        return feature_stats(self.cfg.data.train, rows, "pooled" if self.head == "mlp" else "embedding", self.dim)

    @cached_property
    def weights(self) -> dict[str, list[float]]:
        """Class weights of per-residue tasks: disorder by inverse frequency in the training residues
        (model.balance_disorder), so the rare disordered class is not ignored."""
        if not (self.per_residue and self.cfg.model.balance_disorder and "disorder" in self.tasks):
            return {}
        rows, _, _ = self.split
        w = class_weights(self.cfg.data.train, rows, "disorder", 2)
        return {"disorder": w} if w else {}

    # ------------------------------------------------------------------ model
    def build_model(self) -> torch.nn.Module:
        # statistics first: they are computed once here and shipped with the task to the batch readers
        self.stats, self.weights  # noqa: B018
        m = self.cfg.model
        if self.head == "la":
            return LightAttention(self.dim, m.kernel_size, m.conv_dropout, m.hidden, m.dropout, m.softmax, m.max_pool,
                                  m.membrane_head and "membrane_id" in self.labels)
        if self.head == "mlp":
            return PooledMLP(self.dim, m.hidden, m.dropout, m.membrane_head and "membrane_id" in self.labels)
        return ResidueCNN(self.dim, m.cnn_filters, m.cnn_window, m.dropout, self.tasks)

    @cached_property
    def tasks(self) -> tuple[str, ...]:
        return self.residue_tasks() if self.per_residue else ()

    # ------------------------------------------------------------------ batches
    def collate(self, rows, starts, lengths, rng):
        if len(rows) == 1 and not self.per_residue:
            # batch norm needs two rows in training mode: a lone protein goes twice
            rows, starts, lengths = rows * 2, np.repeat(starts, 2), np.repeat(lengths, 2)
        return self._tensors(rows, starts, lengths)

    def collate_eval(self, rows, starts, lengths, rng):
        return self._tensors(rows, starts, lengths)

    def _tensors(self, rows: list[dict], starts: np.ndarray, lengths: np.ndarray) -> dict:
        batch: dict = {}
        if self.head == "mlp":
            pooled = np.stack([np.asarray(r["pooled"], np.float32) for r in rows])
            batch["pooled"] = torch.from_numpy(standardize(pooled, self.stats))
        else:
            longest = int(lengths.max())
            x = np.zeros((len(rows), longest, self.dim), dtype=np.float32)
            ends = self.cfg.model.protein_crop == "ends" and not self.per_residue
            for i, row in enumerate(rows):
                emb = row["embedding"].view(np.float16).reshape(-1, self.dim)
                n = int(lengths[i])
                if ends and n < len(emb):  # the engine cropped this protein: take its ends instead
                    piece = emb[crop_ends(len(emb), n)]
                else:
                    piece = emb[int(starts[i]):int(starts[i]) + n]
                x[i, :n] = standardize(piece, self.stats)  # padding stays zero
            batch["x"] = torch.from_numpy(x).transpose(1, 2)
            batch["mask"] = torch.arange(longest)[None, :] < torch.from_numpy(lengths.astype(np.int64))[:, None]
        for name in self.labels:
            if self.per_residue:
                batch[name] = torch.from_numpy(self._residue_labels(rows, starts, lengths, name))
            else:
                batch[name] = torch.tensor([-1 if r[name] is None else int(r[name]) for r in rows], dtype=torch.long)
        if self.per_residue and self.has_eval_mask:
            batch["eval_mask"] = torch.from_numpy(self._residue_labels(rows, starts, lengths, "eval_mask"))
        return batch

    @staticmethod
    def _residue_labels(rows, starts, lengths, name) -> np.ndarray:
        y = np.full((len(rows), int(lengths.max())), -1, dtype=np.int64)
        for i, row in enumerate(rows):
            cell = row[name]
            if cell is not None and len(cell):
                n, s = int(lengths[i]), int(starts[i])
                y[i, :n] = cell.view(np.int8)[s:s + n]
        return y

    # ------------------------------------------------------------------ loss
    def loss(self, model, batch):
        """The batch-mean loss to train on; logs are per-protein (per-residue) sums, so the reported
        `loss` (and the validation loss that selects the epoch) does not depend on the batching:
        loss = sum over heads of weight x mean cross-entropy over labelled items."""
        out = model(batch)
        device = next(iter(out.values())).device
        weights = {k: torch.tensor(v, device=device) for k, v in self.weights.items()}
        loss = (residue_loss(out, batch, weights) if self.per_residue
                else protein_loss(out, batch, self.cfg.model.membrane_weight))
        logs = {}
        for name, logits in out.items():
            y = batch[name if self.per_residue else f"{name}_id"]
            flat, target = logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1)
            keep = target >= 0
            w = weights.get(name)  # a weighted task logs its weighted mean: sum w_y * ce / sum w_y
            ce = (torch.nn.functional.cross_entropy(flat[keep], target[keep], weight=w, reduction="sum")
                  if keep.any() else flat.sum() * 0)
            count = w[target[keep]].sum() if w is not None else keep.sum().float()
            logs[f"{name}_ce"] = (ce.detach(), count)
            logs[f"{name}_acc"] = (((flat.argmax(-1) == target) & keep).sum().float(), keep.sum().float())
        return loss, logs

    def summarize(self, means: dict[str, float]) -> dict[str, float]:
        weights = {"membrane": self.cfg.model.membrane_weight}
        heads = [k[:-3] for k in means if k.endswith("_ce")]
        return {**means, "loss": sum(weights.get(h, 1.0) * means[f"{h}_ce"] for h in heads)}

    def export_config(self) -> dict:
        from engine.config import to_dict
        return {"kind": self.kind, "model": to_dict(self.cfg.model), "dim": self.dim, "tasks": list(self.tasks),
                "labels": self.labels, "standardize": self.stats, "class_weights": self.weights}

