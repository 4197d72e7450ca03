"""The multitask stage as an engine `Task`: model, index shards over the mixture, collation, loss.

The engine batches one shard directory by residue budget (`data.train`, optional `data.valid`).
Multitask trains on several shard directories of different kinds, mixed by weight, so before the
launch `prepare()` writes two small *index* shard directories into the run directory:

    <run>/mixture/     one row per draw of the epoch: length (capped at data.max_length), pool=0,
                       source (index into mixture.sources), row (row in that source)
    <run>/eval_index/  the same for the evaluation sets (pool=1), used as `data.valid`

and points `data.train` / `data.valid` at them. The engine never sees a protein longer than
data.max_length (so it never windows one); `collate` looks the rows up in the sources (held in
memory as flat arrays) and crops long proteins by the multitask policy.
"""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from data_prep.shards import write_table_shards
from data_prep.vocab import save_tokenizer, vocab_hash
from engine.task import Task

from .config import MultitaskConfig
from .data import DataError, ProteinSet, collate, epoch_plan, get_example, load_proteins, training_rows
from .evaluate import eval_sets
from .losses import TASKS, task_losses, total_loss
from .masking import mask_tokens
from .model import MultitaskEncoder

INDEX_COLUMNS = ["pool", "source", "row"]


def run_dir(cfg: MultitaskConfig) -> Path:
    return Path(cfg.ray.storage_path).resolve() / cfg.ray.name


def load_sources(cfg: MultitaskConfig) -> list[ProteinSet]:
    sets = []
    for src in cfg.mixture.sources:
        ps = training_rows(load_proteins(src.path), src.path, tuple(src.splits))
        if len(ps) == 0:
            raise DataError(f"{src.path}: no rows with split in {src.splits}")
        sets.append(ps)
    return sets


def load_eval_sets(cfg: MultitaskConfig, limit: int = 0) -> dict[str, ProteinSet]:
    sets = eval_sets(cfg.eval.ss_test or None, cfg.eval.deeploc_test or None)
    if limit:  # evenly spaced rows: test files are often sorted by class
        sets = {k: v.subset(np.unique(np.linspace(0, len(v) - 1, limit).astype(np.int64))) if len(v) > limit else v
                for k, v in sets.items()}
    return sets


def _write_index(out: Path, pool: int, sources: np.ndarray, rows: np.ndarray, lengths: np.ndarray, info: dict) -> None:
    table = pa.table({"length": pa.array(lengths, pa.int32()), "pool": pa.array(np.full(len(rows), pool), pa.int8()),
                      "source": pa.array(sources, pa.int16()), "row": pa.array(rows, pa.int64())})
    write_table_shards(table, out / "data", rows_per_shard=1_000_000)
    (out / "manifest.json").write_text(json.dumps({"kind": "multitask_index", "rows": len(rows), **info}, indent=2) + "\n")


def prepare(cfg: MultitaskConfig) -> MultitaskConfig:
    """Write the index shards for `cfg` (deterministic in train.seed) and return a copy of `cfg`
    whose data.train / data.valid point at them. Also fails early, on the driver, on bad inputs."""
    cfg = copy.deepcopy(cfg)
    # Absolute paths: Ray workers need not share the driver's working directory.
    for src in cfg.mixture.sources:
        src.path = str(Path(src.path).resolve())
    cfg.eval.ss_test = str(Path(cfg.eval.ss_test).resolve()) if cfg.eval.ss_test else ""
    cfg.eval.deeploc_test = str(Path(cfg.eval.deeploc_test).resolve()) if cfg.eval.deeploc_test else ""
    cfg.ray.storage_path = str(Path(cfg.ray.storage_path).resolve())
    out = run_dir(cfg)
    sets = load_sources(cfg)
    total = cfg.mixture.proteins_per_epoch or sum(len(s) for s in sets)
    plan = epoch_plan([len(s) for s in sets], [s.weight for s in cfg.mixture.sources], total,
                      np.random.default_rng([cfg.train.seed, 1234]))
    full = np.array([sets[s].offsets[r + 1] - sets[s].offsets[r] for s, r in plan], dtype=np.int64)
    _write_index(out / "mixture", 0, plan[:, 0], plan[:, 1], np.minimum(full, cfg.data.max_length), {
        "sources": [s.path for s in cfg.mixture.sources],
        "draws": {s.path: int((plan[:, 0] == i).sum()) for i, s in enumerate(cfg.mixture.sources)},
        "rows_per_source": {s.path: len(ps) for s, ps in zip(cfg.mixture.sources, sets)},
        "longer_than_max_length": int((full > cfg.data.max_length).sum()),
        "protein_crop": cfg.mixture.protein_crop})
    cfg.data.train = str(out / "mixture")
    evs = load_eval_sets(cfg, cfg.eval.limit)
    if evs:
        src = np.concatenate([np.full(len(ps), i) for i, ps in enumerate(evs.values())])
        rows = np.concatenate([np.arange(len(ps)) for ps in evs.values()])
        lens = np.concatenate([np.minimum(ps.lengths, cfg.data.max_length) for ps in evs.values()])
        _write_index(out / "eval_index", 1, src, rows, lens, {"sets": {k: len(v) for k, v in evs.items()}})
        cfg.data.valid = str(out / "eval_index")
    return cfg


class MultitaskTask(Task):
    kind = "encoder"
    columns = INDEX_COLUMNS

    def __init__(self, cfg: MultitaskConfig):
        super().__init__(cfg)
        self._train: list[ProteinSet] | None = None
        self._eval: list[ProteinSet] | None = None

    # ------------------------------------------------------------------ data
    @property
    def train_sets(self) -> list[ProteinSet]:
        if self._train is None:
            self._train = load_sources(self.cfg)
        return self._train

    @property
    def eval_sets(self) -> list[ProteinSet]:
        if self._eval is None:
            self._eval = list(load_eval_sets(self.cfg, self.cfg.eval.limit).values())
        return self._eval

    def collate(self, rows: list[dict], starts: np.ndarray, lengths: np.ndarray,
                rng: np.random.Generator) -> dict[str, torch.Tensor]:
        c = self.cfg
        evaluating = rows[0]["pool"] == 1
        pools = self.eval_sets if evaluating else self.train_sets
        examples = [get_example(pools[r["source"]], r["row"], c.data.max_length, c.mixture.protein_crop, rng)
                    for r in rows]
        batch = collate(examples, go_terms=c.model.go_terms)
        if evaluating:
            # Clean input for the evaluation metrics; MLM is not scored here.
            batch["mlm_targets"] = torch.full_like(batch["tokens"], -100)
            batch["eval_set"] = torch.tensor([r["source"] for r in rows])
        else:
            # MLM corruption on CPU with the engine's per-batch rng: reproducible on resume.
            gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
            batch["tokens"], batch["mlm_targets"] = mask_tokens(batch["tokens"], batch["lengths"], c.masking, gen)
        return batch

    # ------------------------------------------------------------------ model and loss
    def build_model(self) -> torch.nn.Module:
        torch.manual_seed(self.cfg.train.seed)
        return MultitaskEncoder(self.cfg.model)

    def loss(self, model, batch: dict[str, torch.Tensor]):
        out = model(batch["tokens"], batch["lengths"])
        parts = task_losses(out, batch)
        loss = total_loss(parts, self.cfg.weights)
        logs = {"loss": (loss.detach(), 1.0)}
        for name in TASKS:
            if name in parts:
                mean, n = parts[name]
                logs[f"loss/{name}"] = (mean.detach() * n, n.to(mean.dtype))
        if "eval_set" in batch:
            logs.update(self._eval_logs(out, batch))
        return loss, logs

    def _eval_logs(self, out, batch) -> dict:
        """Per evaluation set: hits and counts for Q3/Q8/Q10/Q2, confusion fractions for disorder MCC.
        The names depend only on the sets (same on every batch and rank, as the engine needs)."""
        logs = {}
        pred = {"ss3": out["ss3"].argmax(-1), "ss8": out["ss8"].argmax(-1), "location": out["location"].argmax(-1),
                "membrane": (out["membrane"] > 0).long(), "disorder": (out["disorder"] > 0).long()}
        metric = {"ss3": "q3", "ss8": "q8", "location": "q10", "membrane": "q2"}
        for i, ps in enumerate(self.eval_sets):
            in_set = batch["eval_set"] == i
            for task, name in metric.items():
                if not _has_labels(ps, task):
                    continue
                y = batch[task]
                keep = (y >= 0) & (in_set[:, None] if y.dim() == 2 else in_set)
                if y.dim() == 2:
                    keep &= batch["eval_mask"] != 0
                logs[f"{ps.name}/{name}"] = (((pred[task] == y) & keep).sum().float(), keep.sum().float())
            if _has_labels(ps, "disorder"):
                y, p = batch["disorder"], pred["disorder"]
                keep = (y >= 0) & in_set[:, None]
                n = keep.sum().float()
                for cell, hit in (("tp", (p == 1) & (y == 1)), ("fp", (p == 1) & (y == 0)),
                                  ("fn", (p == 0) & (y == 1)), ("tn", (p == 0) & (y == 0))):
                    logs[f"{ps.name}/dis_{cell}"] = ((hit & keep).sum().float(), n)
        return logs

    def summarize(self, means: dict[str, float]) -> dict[str, float]:
        out = {k: v for k, v in means.items() if "/dis_" not in k}
        for key in [k for k in means if k.endswith("/dis_tp")]:
            s = key[: -len("/dis_tp")]
            tp, fp, fn, tn = (means[f"{s}/dis_{c}"] for c in ("tp", "fp", "fn", "tn"))
            den = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
            out[f"{s}/disorder_mcc"] = (tp * tn - fp * fn) / den if den else 0.0
        return out

    # ------------------------------------------------------------------ export
    def export_config(self) -> dict:
        from engine.config import to_dict
        return {"kind": self.kind, "model": to_dict(self.cfg.model), "embedding": to_dict(self.cfg.embedding),
                "vocab_hash": vocab_hash()}

    def write_export_files(self, directory: Path) -> None:
        save_tokenizer(Path(directory))


def _has_labels(ps: ProteinSet, task: str) -> bool:
    if task in ("ss3", "ss8", "disorder"):
        return task in ps.residue_labels and bool((ps.residue_labels[task] >= 0).any())
    values = ps.location if task == "location" else ps.membrane
    return values is not None and bool((values >= 0).any())
