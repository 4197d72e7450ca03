"""Embedding shards in memory: per-residue float16 arrays, pooled vectors and labels."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from data_prep.errors import DataPrepError
from data_prep.shards import check_schema, data_files, residue_arrays

from .errors import FinetuneError

PROTEIN_LABELS = ("location_id", "membrane_id")
RESIDUE_LABELS = ("ss3", "ss8", "disorder", "eval_mask")


@dataclass
class EmbeddingSet:
    ids: list[str]
    lengths: np.ndarray  # int64 [N]
    residues: list[np.ndarray]  # float16 [L, dim] per protein
    pooled: np.ndarray  # float32 [N, dim]
    labels: dict[str, np.ndarray] = field(default_factory=dict)  # per-protein int64 [N]
    residue_labels: dict[str, list] = field(default_factory=dict)  # per residue: int8 [L] or None
    meta: dict = field(default_factory=dict)  # other columns (split, dataset, location, ...)

    @property
    def dim(self) -> int:
        return self.pooled.shape[1]

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, idx) -> "EmbeddingSet":
        idx = np.asarray(idx, dtype=np.int64)
        return EmbeddingSet(
            ids=[self.ids[i] for i in idx], lengths=self.lengths[idx],
            residues=[self.residues[i] for i in idx] if self.residues else [], pooled=self.pooled[idx],
            labels={k: v[idx] for k, v in self.labels.items()},
            residue_labels={k: [v[i] for i in idx] for k, v in self.residue_labels.items()},
            meta={k: [v[i] for i in idx] for k, v in self.meta.items()})

    def where(self, column: str, value) -> "EmbeddingSet":
        """Rows whose meta column equals value (e.g. dataset == 'cb513')."""
        return self.subset([i for i, v in enumerate(self.meta[column]) if v == value])


def load_embeddings(path: str | Path, with_residues: bool = True) -> EmbeddingSet:
    """Read an embedding shard dir written by `python -m finetune embed`."""
    path = Path(path)
    try:
        manifest = check_schema(path)
        files = data_files(path)
    except (DataPrepError, FileNotFoundError) as err:
        raise FinetuneError(str(err)) from None
    if manifest.get("kind") != "embeddings":
        raise FinetuneError(f"{path}/manifest.json: key kind={manifest.get('kind')!r}, expected 'embeddings' "
                            "(run python -m finetune embed first)")
    dim = int(manifest["dim"])
    ids, lengths, residues, pooled = [], [], [], []
    labels: dict[str, list] = {}
    residue_labels: dict[str, list] = {}
    meta: dict[str, list] = {}
    for f in files:
        names = pq.read_schema(f).names
        columns = [c for c in names if c != "embedding" or with_residues]
        table = pq.read_table(f, columns=columns)
        ids += table.column("id").to_pylist()
        lens = table.column("length").to_numpy().astype(np.int64)
        lengths.append(lens)
        pooled.append(np.stack(table.column("pooled").to_numpy(zero_copy_only=False)).astype(np.float32)
                      if table.num_rows else np.zeros((0, dim), np.float32))
        if with_residues:
            for raw, n in zip(table.column("embedding").to_pylist(), lens):
                residues.append(np.frombuffer(raw, dtype=np.float16).reshape(int(n), dim))
        for name in table.column_names:
            if name in ("id", "length", "embedding", "pooled"):
                continue
            if name in RESIDUE_LABELS:  # binary cells, one int8 per residue (-1 unknown)
                flat, offsets, valid = residue_arrays(table.column(name), np.int8)
                residue_labels.setdefault(name, []).extend(
                    flat[offsets[i]:offsets[i + 1]] if valid[i] else None for i in range(table.num_rows))
            elif name in PROTEIN_LABELS:
                labels.setdefault(name, []).extend(table.column(name).to_pylist())
            else:
                meta.setdefault(name, []).extend(table.column(name).to_pylist())
    return EmbeddingSet(
        ids=ids, lengths=np.concatenate(lengths), residues=residues, pooled=np.concatenate(pooled),
        labels={k: np.asarray(v, dtype=np.int64) for k, v in labels.items()},
        residue_labels=residue_labels, meta=meta)


def stratified_holdout(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train idx, held-out idx): `fraction` of every label value held out, at least one where a
    value has >= 2 rows. Seeded, so the same split comes back every run."""
    rng = np.random.default_rng(seed)
    held = []
    for value in np.unique(labels):
        rows = np.flatnonzero(labels == value)
        rng.shuffle(rows)
        n = int(round(fraction * len(rows)))
        if fraction > 0 and n == 0 and len(rows) >= 2:
            n = 1
        held.append(rows[:n])
    held = np.sort(np.concatenate(held)) if held else np.zeros(0, np.int64)
    keep = np.setdiff1d(np.arange(len(labels)), held)
    return keep, held
