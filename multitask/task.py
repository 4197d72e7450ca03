"""The multitask stage as an engine `Task`: sources, collation, model and loss.

Training draws from several shard directories of different kinds, mixed by weight: each is an
engine `Source` (with only the columns its kind has, and only the rows of the allowed splits),
and `Mixture.proteins` draws make an epoch. Evaluation sets (one per `dataset` value of the
secondary-structure test shard, plus DeepLoc's test rows) are sources too; the engine streams
both, so no worker ever loads a whole source. Long proteins arrive as pieces of at most
data.max_length residues (`data.long_proteins: crop`); a protein with a per-protein label is
cropped by the multitask policy (`mixture.protein_crop`) instead of the engine's random window.
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

from data_prep.vocab import save_tokenizer, vocab_hash
from engine.sources import DataError, Mixture, Source, open_source, read_column, shard_columns
from engine.metrics import gorodkin_mcc
from engine.task import Task

from .config import MultitaskConfig
from .data import collate, example_from_row
from .evaluate import SS_ORDER
from .losses import TASKS, task_losses, total_loss
from .masking import mask_tokens
from .model import MultitaskEncoder

FEATURES = ("tokens", "ss3", "ss8", "disorder", "eval_mask", "location_id", "membrane_id", "go")
SS_METRICS = {"ss3": "q3", "ss8": "q8"}  # per-residue sets (+ disorder MCC)
PROTEIN_METRICS = {"location": "q10", "membrane": "q2"}  # DeepLoc


def run_dir(cfg: MultitaskConfig) -> Path:
    return Path(cfg.ray.storage_path).resolve() / cfg.ray.name


def _columns(path: str, names: list[str]) -> list[str]:
    """The features a shard has, of those the task uses (`names`: its schema's columns)."""
    if "tokens" not in names:
        raise DataError(f"{path}: shards lack column 'tokens'")
    return [c for c in FEATURES if c in names]


def _test_rows(path: str, names: list[str]) -> np.ndarray:
    """Rows with split == test (every row of a shard without a split column)."""
    if "split" in names:
        return read_column(path, "split").astype(object) == "test"
    return np.ones(open_source(Source(path, [])).total_rows, bool)


def training_source(path: str, weight: float, splits: list[str]) -> Source:
    """A mixture source: rows of the allowed splits only; a shard with test rows is refused."""
    names = shard_columns(path)
    columns = _columns(path, names)
    rows = None
    if "split" in names:
        split = read_column(path, "split").astype(object)
        n_test = int((split == "test").sum())
        if n_test:
            raise DataError(f"{path}: {n_test} rows have split=test; test rows never train "
                            f"(pass a training shard, e.g. deeploc_train / ss_train)")
        rows = np.flatnonzero(np.isin(split, list(splits)))
        if len(rows) == 0:
            raise DataError(f"{path}: no rows with split in {splits}")
    # labelled sets are small and often sorted by class: draw their rows, not row groups, at random
    return Source(path, columns, weight, rows, shuffle_rows=columns != ["tokens"])


def has_labels(path: str, column: str) -> bool:
    """Whether any row of a shard directory has a value in `column` (FLIP shards have an ss8
    column that is null throughout: an 8-state head trained on them learns nothing)."""
    if column not in shard_columns(path):
        return False
    return any(v is not None for v in read_column(path, column))


def trained_ss8(source_paths: list[str]) -> bool:
    """Whether a training mixture has 8-state labels; without them Q8 is not reported."""
    return any(has_labels(p, "ss8") for p in source_paths)


def evaluation_sources(ss_test: str, deeploc_test: str, limit: int = 0) -> list[tuple[str, Source]]:
    """(kind, source) per evaluation set: "ss" per `dataset` of the ss test shard, "deeploc" for
    DeepLoc's test rows; `limit` keeps that many evenly spaced proteins of each (files are often
    sorted by class)."""
    out = []

    def rows_of(mask: np.ndarray) -> np.ndarray:
        rows = np.flatnonzero(mask)
        if limit and len(rows) > limit:
            rows = rows[np.unique(np.linspace(0, len(rows) - 1, limit).astype(np.int64))]
        return rows

    if ss_test:
        names = shard_columns(ss_test)
        test = _test_rows(ss_test, names)
        dataset = read_column(ss_test, "dataset").astype(object) if "dataset" in names else np.full(len(test), "ss")
        columns = _columns(ss_test, names)
        for name in sorted(set(dataset[test]), key=lambda d: (SS_ORDER + (d,)).index(d)):
            out.append(("ss", Source(ss_test, columns, rows=rows_of(test & (dataset == name)), name=name)))
    if deeploc_test:
        names = shard_columns(deeploc_test)
        out.append(("deeploc", Source(deeploc_test, _columns(deeploc_test, names),
                                      rows=rows_of(_test_rows(deeploc_test, names)), name="deeploc")))
    return out


def prepare(cfg: MultitaskConfig) -> MultitaskConfig:
    """A copy of `cfg` with absolute paths (Ray workers need not share the driver's working
    directory), after checking every source on the driver so that bad inputs fail early."""
    cfg = copy.deepcopy(cfg)
    for src in cfg.mixture.sources:
        src.path = _absolute(src.path)
    cfg.eval.ss_test = _absolute(cfg.eval.ss_test)
    cfg.eval.deeploc_test = _absolute(cfg.eval.deeploc_test)
    cfg.ray.storage_path = _absolute(cfg.ray.storage_path)
    task = MultitaskTask(cfg)
    task.train_data()
    task.eval_data()
    return cfg


def _absolute(path: str) -> str:
    return str(Path(path).resolve()) if path and "://" not in path else path


class MultitaskTask(Task):
    kind = "encoder"

    def __init__(self, cfg: MultitaskConfig):
        super().__init__(cfg)
        self._eval: list[tuple[str, Source]] | None = None
        self._metrics: dict[str, str] | None = None

    # ------------------------------------------------------------------ data
    def train_data(self) -> Mixture:
        m = self.cfg.mixture
        return Mixture([training_source(s.path, s.weight, s.splits) for s in m.sources], m.proteins_per_epoch)

    def eval_sets(self) -> list[tuple[str, Source]]:
        if self._eval is None:
            e = self.cfg.eval
            self._eval = evaluation_sources(e.ss_test, e.deeploc_test, e.limit)
        return self._eval

    def eval_data(self) -> list[Source]:
        return [source for _, source in self.eval_sets()]

    def ss_metrics(self) -> dict[str, str]:
        """Per-residue metrics to report: Q8 only when the mixture has 8-state labels."""
        if self._metrics is None:
            trained = trained_ss8([s.path for s in self.cfg.mixture.sources])
            self._metrics = {k: v for k, v in SS_METRICS.items() if trained or k != "ss8"}
        return self._metrics

    def _examples(self, rows, starts, lengths, rng):
        crop = self.cfg.mixture.protein_crop
        examples = [example_from_row(r, int(s), int(n), crop, rng) for r, s, n in zip(rows, starts, lengths)]
        return collate(examples, go_terms=self.cfg.model.go_terms)

    def collate(self, rows: list[dict], starts: np.ndarray, lengths: np.ndarray,
                rng: np.random.Generator) -> dict[str, torch.Tensor]:
        batch = self._examples(rows, starts, lengths, rng)
        # MLM corruption on CPU with the engine's per-batch rng: reproducible on resume.
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        batch["tokens"], batch["mlm_targets"] = mask_tokens(batch["tokens"], batch["lengths"], self.cfg.masking, gen)
        return batch

    def collate_eval(self, rows, starts, lengths, rng):
        # Clean input for the evaluation metrics; MLM is not scored here.
        batch = self._examples(rows, starts, lengths, rng)
        batch["mlm_targets"] = torch.full_like(batch["tokens"], -100)
        batch["eval_set"] = torch.tensor([r["source"] for r in rows])
        return batch

    # ------------------------------------------------------------------ model and loss
    def build_model(self) -> torch.nn.Module:
        torch.manual_seed(self.cfg.train.seed)
        model = MultitaskEncoder(self.cfg.model)
        if self.cfg.model.compile and torch.cuda.is_available():  # compiling for a CPU costs more than it saves here
            model.compile_blocks()
        return model

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
        """Per evaluation set: hits and counts for Q3/Q8 or Q10/Q2, confusion fractions for disorder
        MCC. The names depend only on the sets (the same on every batch and rank, as the engine
        needs); a metric a set has no labels for counts nothing and the engine leaves it out."""
        logs = {}
        pred = {"ss3": out["ss3"].argmax(-1), "ss8": out["ss8"].argmax(-1), "location": out["location"].argmax(-1),
                "membrane": (out["membrane"] > 0).long(), "disorder": (out["disorder"] > 0).long()}
        for i, (kind, source) in enumerate(self.eval_sets()):
            in_set = batch["eval_set"] == i
            for task, name in (self.ss_metrics() if kind == "ss" else PROTEIN_METRICS).items():
                y = batch[task]
                keep = (y >= 0) & (in_set[:, None] if y.dim() == 2 else in_set)
                if y.dim() == 2:
                    keep &= batch["eval_mask"] != 0
                logs[f"{source.label}/{name}"] = (((pred[task] == y) & keep).sum().float(), keep.sum().float())
            if kind == "ss":
                y, p = batch["disorder"], pred["disorder"]
                keep = (y >= 0) & in_set[:, None]
                n = keep.sum().float()
                for cell, hit in (("tp", (p == 1) & (y == 1)), ("fp", (p == 1) & (y == 0)),
                                  ("fn", (p == 0) & (y == 1)), ("tn", (p == 0) & (y == 0))):
                    logs[f"{source.label}/dis_{cell}"] = ((hit & keep).sum().float(), n)
        return logs

    def summarize(self, means: dict[str, float]) -> dict[str, float]:
        out = {k: v for k, v in means.items() if "/dis_" not in k}
        for key in [k for k in means if k.endswith("/dis_tp")]:
            s = key[: -len("/dis_tp")]
            tp, fp, fn, tn = (means[f"{s}/dis_{c}"] for c in ("tp", "fp", "fn", "tn"))
            out[f"{s}/disorder_mcc"] = gorodkin_mcc(np.array([[tn, fp], [fn, tp]]))  # shares, not counts: MCC is scale-free
        return out

    # ------------------------------------------------------------------ export
    def export_config(self) -> dict:
        from engine.config import to_dict
        return {"kind": self.kind, "model": to_dict(self.cfg.model), "embedding": to_dict(self.cfg.embedding),
                "vocab_hash": vocab_hash()}

    def write_export_files(self, directory: Path) -> None:
        save_tokenizer(Path(directory))
