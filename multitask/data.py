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
import pyarrow.parquet as pq
import torch

from data_prep.shards import check_schema, data_files, read_table, residue_arrays
from data_prep.vocab import PAD_ID, vocab_hash
from engine.sources import DataError

PER_RESIDUE = ("ss3", "ss8", "disorder", "eval_mask")
KINDS = ("sequences", "pssm", "deeploc", "ss")  # pssm: used for its tokens only (unlabelled)
WANTED = ("id", "length", "tokens", "ss3", "ss8", "disorder", "eval_mask", "location_id", "membrane_id",
          "dataset", "split", "go")


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


def _flat_label_column(table: pa.Table, name: str, lengths: np.ndarray, path: Path) -> np.ndarray:
    """A per-residue int8 label column flattened to one value per residue; null rows become -1."""
    values, offsets, valid = residue_arrays(table.column(name), np.int8)
    got = np.diff(offsets)
    bad = np.flatnonzero(valid & (got != lengths))
    if len(bad):
        r = int(bad[0])
        raise DataError(f"{path}: row {r} column {name} has {got[r]} values for a protein of length {lengths[r]}")
    flat = np.full(int(lengths.sum()), -1, dtype=np.int8)
    flat[np.repeat(valid, lengths)] = values
    return flat


def load_proteins(path: str | Path, name: str | None = None) -> ProteinSet:
    """Read a data_prep shard directory (sequences, pssm, deeploc or ss) into a ProteinSet."""
    path = Path(path)
    manifest = check_schema(path)
    try:
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
    tokens = residue_arrays(table.column("tokens"))[0].copy()
    if len(tokens) != offsets[-1]:
        raise DataError(f"{path}: token count {len(tokens)} != sum of lengths {offsets[-1]}")
    ps = ProteinSet(name=name or path.name, kind=kind, ids=table.column("id").to_pylist(),
                    offsets=offsets, tokens=tokens)
    if kind == "ss":
        for col in PER_RESIDUE:
            if col in table.column_names:
                ps.residue_labels[col] = _flat_label_column(table, col, lengths, path)
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
    """Protein `row` of `ps`, cropped to max_len (see `example_from_row`)."""
    a, b = int(ps.offsets[row]), int(ps.offsets[row + 1])
    fields = {"tokens": ps.tokens[a:b], **{k: v[a:b] for k, v in ps.residue_labels.items()},
              "location_id": ps.location[row] if ps.location is not None else None,
              "membrane_id": ps.membrane[row] if ps.membrane is not None else None,
              "go": ps.go[row] if ps.go is not None else None}
    rng = rng or np.random.default_rng()
    n = b - a if max_len is None else min(b - a, max_len)
    return example_from_row(fields, int(rng.integers(0, b - a - n + 1)), n, protein_crop, rng)


def example_from_row(row: dict, start: int, n: int, protein_crop: str, rng: np.random.Generator) -> Example:
    """A shard row (as the engine hands it to `collate`) as an Example of at most `n` residues.

    A longer protein with a per-protein label is cropped by `protein_crop`; one without keeps
    the window [start, start + n) that the engine chose."""
    tokens = np.asarray(row["tokens"])
    labels = {k: np.asarray(row[k]).view(np.int8) for k in PER_RESIDUE if row.get(k) is not None}
    loc = -1 if row.get("location_id") is None else int(row["location_id"])
    mem = -1 if row.get("membrane_id") is None else int(row["membrane_id"])
    go = None if row.get("go") is None else np.asarray(row["go"], np.int32)
    if len(tokens) <= n:
        return Example(tokens, labels, loc, mem, go)
    if loc >= 0 or mem >= 0 or (go is not None and len(go) > 0):
        idx = crop_indices(len(tokens), n, protein_crop, rng)
    else:
        idx = np.arange(start, start + n)
    return Example(tokens[idx], {k: v[idx] for k, v in labels.items()}, loc, mem, go, cropped=True)


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
