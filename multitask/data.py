"""Shards -> proteins with whatever labels they carry -> cropped, padded batches.

One `ProteinSet` holds one shard directory (kind sequences, deeploc or ss, docs/contracts.md) as
flat numpy arrays plus offsets, so that a 10M-residue corpus costs little memory and slicing is
cheap. Labels a kind does not have are simply absent and come out as -1 in batches, which the
losses treat as "no label". Training sources refuse evaluation rows (split == "test").
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from data_prep.shards import data_files, read_manifest, read_table
from data_prep.vocab import PAD_ID, vocab_hash

PER_RESIDUE = ("ss3", "ss8", "disorder", "eval_mask")
KINDS = ("sequences", "pssm", "deeploc", "ss")  # pssm: used for its tokens only (unlabelled)
WANTED = ("id", "length", "tokens", "ss3", "ss8", "disorder", "eval_mask", "location_id", "membrane_id",
          "dataset", "split", "go")


class DataError(ValueError):
    """A user-facing problem with an input shard directory (one line, names the path)."""


@dataclass
class ProteinSet:
    name: str
    kind: str
    ids: list[str]
    offsets: np.ndarray                      # int64 [N+1] into the flat per-residue arrays
    tokens: np.ndarray                       # uint8 flat
    residue_labels: dict[str, np.ndarray] = field(default_factory=dict)   # int8 flat, -1 = none
    location: np.ndarray | None = None       # int8 [N], -1 = none
    membrane: np.ndarray | None = None       # int8 [N], -1 = none (U)
    go: list[np.ndarray] | None = None       # per protein int32 term indices
    dataset: np.ndarray | None = None        # ss: flip|cb513|ts115|casp12 per protein
    split: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def subset(self, rows: np.ndarray, name: str | None = None) -> "ProteinSet":
        """Rows `rows` as a new set (copies the residues of those rows)."""
        rows = np.asarray(rows, dtype=np.int64)
        lens = self.lengths[rows]
        offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        gather = np.concatenate([np.arange(self.offsets[r], self.offsets[r + 1]) for r in rows]) \
            if len(rows) else np.zeros(0, dtype=np.int64)
        pick = (lambda a: None if a is None else a[rows])
        return ProteinSet(
            name=name or self.name, kind=self.kind, ids=[self.ids[r] for r in rows], offsets=offsets,
            tokens=self.tokens[gather], residue_labels={k: v[gather] for k, v in self.residue_labels.items()},
            location=pick(self.location), membrane=pick(self.membrane),
            go=None if self.go is None else [self.go[r] for r in rows],
            dataset=pick(self.dataset), split=pick(self.split))


def _flat_list_column(table: pa.Table, name: str, lengths: np.ndarray, path: Path) -> np.ndarray:
    """A list<int8> column flattened to one value per residue; null rows become -1."""
    col = table.column(name).combine_chunks()
    valid = col.is_valid().to_numpy(zero_copy_only=False)
    got = pc.fill_null(pc.list_value_length(col), 0).to_numpy(zero_copy_only=False)
    bad = np.flatnonzero(valid & (got != lengths))
    if len(bad):
        r = int(bad[0])
        raise DataError(f"{path}: row {r} column {name} has {got[r]} values for a protein of length {lengths[r]}")
    flat = np.full(int(lengths.sum()), -1, dtype=np.int8)
    flat[np.repeat(valid, lengths)] = col.flatten().to_numpy(zero_copy_only=False).astype(np.int8)
    return flat


def load_proteins(path: str | Path, name: str | None = None) -> ProteinSet:
    """Read a data_prep shard directory (sequences, pssm, deeploc or ss) into a ProteinSet."""
    path = Path(path)
    try:
        manifest = read_manifest(path)
        names = pq.read_schema(data_files(path)[0]).names
        table = read_table(path, columns=[c for c in WANTED if c in names])
    except FileNotFoundError as e:
        raise DataError(str(e)) from None
    kind = manifest.get("kind")
    if kind not in KINDS:
        raise DataError(f"{path}/manifest.json: kind {kind!r} is not one of {', '.join(KINDS)}")
    if manifest.get("vocab_hash") != vocab_hash():
        raise DataError(f"{path}/manifest.json: vocab_hash {manifest.get('vocab_hash')} != this code's {vocab_hash()}")
    for col in ("id", "tokens", "length"):
        if col not in table.column_names:
            raise DataError(f"{path}: shards lack column {col!r}")
    lengths = table.column("length").to_numpy().astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    tokens = table.column("tokens").combine_chunks().flatten().to_numpy(zero_copy_only=False).astype(np.uint8)
    if len(tokens) != offsets[-1]:
        raise DataError(f"{path}: token count {len(tokens)} != sum of lengths {offsets[-1]}")
    ps = ProteinSet(name=name or path.name, kind=kind, ids=table.column("id").to_pylist(),
                    offsets=offsets, tokens=tokens)
    if kind == "ss":
        for col in PER_RESIDUE:
            if col in table.column_names:
                ps.residue_labels[col] = _flat_list_column(table, col, lengths, path)
    if kind == "deeploc":
        ps.location = table.column("location_id").to_numpy(zero_copy_only=False).astype(np.int8)
        ps.membrane = table.column("membrane_id").to_numpy(zero_copy_only=False).astype(np.int8)
    for col in ("dataset", "split"):
        if col in table.column_names:
            setattr(ps, col, np.asarray(table.column(col).to_pylist(), dtype=object))
    if "go" in table.column_names:
        ps.go = [np.asarray(v or [], np.int32) for v in table.column("go").to_pylist()]
    return ps


def training_rows(ps: ProteinSet, path: str | Path, allowed_splits: tuple[str, ...]) -> ProteinSet:
    """Refuse evaluation rows in a training source; keep only rows of `allowed_splits`."""
    if ps.split is None:
        return ps
    n_test = int((ps.split == "test").sum())
    if n_test:
        raise DataError(f"{path}: {n_test} rows have split=test; test rows never train "
                        f"(pass a training shard, e.g. deeploc_train / ss_train)")
    keep = np.flatnonzero(np.isin(ps.split, list(allowed_splits)))
    return ps if len(keep) == len(ps) else ps.subset(keep)


# ----------------------------------------------------------------------------- cropping

def crop_indices(length: int, max_len: int, policy: str, rng: np.random.Generator) -> np.ndarray | None:
    """Residue indices to keep for a protein longer than max_len (None: keep all).

    `ends` keeps the first and last halves (DBMTL: signal peptides and anchors sit at the termini),
    `random` a random contiguous window (ProteinBERT).
    """
    if length <= max_len:
        return None
    if policy == "ends":
        head = (max_len + 1) // 2
        return np.concatenate([np.arange(head), np.arange(length - (max_len - head), length)])
    if policy == "random":
        start = int(rng.integers(0, length - max_len + 1))
        return np.arange(start, start + max_len)
    raise ValueError(f"unknown crop policy {policy!r} (ends|random)")


@dataclass
class Example:
    tokens: np.ndarray
    labels: dict[str, np.ndarray]            # per residue, same length as tokens
    location: int = -1
    membrane: int = -1
    go: np.ndarray | None = None
    cropped: bool = False


def get_example(ps: ProteinSet, row: int, max_len: int | None = None, protein_crop: str = "ends",
                rng: np.random.Generator | None = None) -> Example:
    """Protein `row` of `ps`, cropped to max_len. Per-protein labelled proteins use `protein_crop`,
    the others a random window."""
    a, b = int(ps.offsets[row]), int(ps.offsets[row + 1])
    tokens = ps.tokens[a:b]
    labels = {k: v[a:b] for k, v in ps.residue_labels.items()}
    loc = int(ps.location[row]) if ps.location is not None else -1
    mem = int(ps.membrane[row]) if ps.membrane is not None else -1
    go = ps.go[row] if ps.go is not None else None
    cropped = False
    if max_len is not None and b - a > max_len:
        has_protein_label = loc >= 0 or mem >= 0 or (go is not None and len(go) > 0)
        idx = crop_indices(b - a, max_len, protein_crop if has_protein_label else "random",
                           rng or np.random.default_rng())
        tokens = tokens[idx]
        labels = {k: v[idx] for k, v in labels.items()}
        cropped = True
    return Example(tokens, labels, loc, mem, go, cropped)


def collate(examples: list[Example], go_terms: int = 0, pad_to: int = 1) -> dict[str, torch.Tensor]:
    """Pad a list of examples into the batch dict the model and losses take.

    Per-residue labels missing from an example are -1 everywhere; `pad_to` rounds the padded
    length up (multiples of 8 suit tensor cores)."""
    lengths = np.array([len(e.tokens) for e in examples], dtype=np.int64)
    width = int(-(-max(int(lengths.max()), 1) // pad_to) * pad_to)
    b = len(examples)
    tokens = np.full((b, width), PAD_ID, dtype=np.int64)
    res = {k: np.full((b, width), -1, dtype=np.int64) for k in ("ss3", "ss8", "disorder", "eval_mask")}
    for i, e in enumerate(examples):
        n = len(e.tokens)
        tokens[i, :n] = e.tokens
        for k, v in e.labels.items():
            res[k][i, :n] = v
    batch = {"tokens": torch.from_numpy(tokens), "lengths": torch.from_numpy(lengths),
             **{k: torch.from_numpy(v) for k, v in res.items()},
             "location": torch.tensor([e.location for e in examples], dtype=torch.int64),
             "membrane": torch.tensor([e.membrane for e in examples], dtype=torch.int64)}
    if go_terms > 0:
        go = np.full((b, go_terms), -1.0, dtype=np.float32)
        for i, e in enumerate(examples):
            if e.go is not None and len(e.go):
                go[i] = 0.0
                go[i, e.go] = 1.0
        batch["go"] = torch.from_numpy(go)
    return batch


# ----------------------------------------------------------------------------- mixture

def epoch_plan(sizes: list[int], weights: list[float], proteins: int, rng: np.random.Generator) -> np.ndarray:
    """(source, row) pairs for one epoch: `proteins` draws split across sources by weight.

    Each source is walked in a fresh permutation (repeated when its share exceeds its size), so
    every protein of a source is seen before any is seen twice."""
    w = np.asarray(weights, dtype=np.float64)
    counts = np.floor(w / w.sum() * proteins).astype(np.int64)
    counts[np.argmax(w)] += proteins - counts.sum()
    plan = []
    for s, (size, n) in enumerate(zip(sizes, counts)):
        if n == 0 or size == 0:
            continue
        reps = -(-int(n) // size)
        rows = np.concatenate([rng.permutation(size) for _ in range(reps)])[:n]
        plan.append(np.stack([np.full(n, s), rows], axis=1))
    out = np.concatenate(plan) if plan else np.zeros((0, 2), np.int64)
    return out[rng.permutation(len(out))]
