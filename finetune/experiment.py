"""One experiment on one embedder: train heads on the training embeddings, evaluate on test.

Per protein (DeepLoc): LA, the mean-pool MLP, annotation transfer and the majority class, each
reporting Q10, R_K MCC, per-class accuracy, a confusion-matrix PNG and membrane Q2/MCC.
Per residue (secondary structure): the SeqVec CNN, reported per test set (the `dataset` column).
Early stopping uses `data.valid`, or a seeded stratified hold-out of the training set. Nothing
trains on the test set.
"""
from __future__ import annotations

import json
import subprocess
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from .baselines import annotation_transfer, majority_class
from .config import ExperimentConfig
from .data import EmbeddingSet, load_embeddings, stratified_holdout
from .errors import FinetuneError
from .metrics import confusion_png, location_metrics, membrane_metrics, residue_metrics
from .ray_train import fit_with_ray
from .train import build_head, fit, predict

try:  # the labels module of data_prep names the 10 classes; the contract fixes their order
    from data_prep.labels import LOCATIONS
except ImportError:
    LOCATIONS = ("Cell.membrane", "Cytoplasm", "Endoplasmic.reticulum", "Golgi.apparatus", "Lysosome/Vacuole",
                 "Mitochondrion", "Nucleus", "Peroxisome", "Plastid", "Extracellular")

PROTEIN_METHODS = ("la", "mlp", "at", "majority")


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _load(path: str | None, with_residues: bool = True) -> EmbeddingSet | None:
    return None if path is None else load_embeddings(path, with_residues)


def split_validation(cfg: ExperimentConfig, train: EmbeddingSet, valid: EmbeddingSet | None,
                     key: str | None) -> tuple[EmbeddingSet, EmbeddingSet, dict]:
    """Explicit validation set, else rows marked split=valid, else a seeded stratified hold-out."""
    if valid is not None:
        return train, valid, {"validation": "data.valid", "train": len(train), "valid": len(valid)}
    splits = train.meta.get("split")
    if splits is not None and "valid" in splits:
        is_valid = np.array([s == "valid" for s in splits])
        return (train.subset(np.flatnonzero(~is_valid)), train.subset(np.flatnonzero(is_valid)),
                {"validation": "rows with split=valid", "train": int((~is_valid).sum()), "valid": int(is_valid.sum())})
    if cfg.data.holdout_fraction <= 0:
        raise FinetuneError("config key data.holdout_fraction: must be > 0 when data.valid is not set")
    labels = train.labels[key] if key else np.zeros(len(train), np.int64)
    keep, held = stratified_holdout(labels, cfg.data.holdout_fraction, cfg.data.split_seed)
    return train.subset(keep), train.subset(held), {
        "validation": f"stratified hold-out {cfg.data.holdout_fraction} (seed {cfg.data.split_seed})",
        "train": len(keep), "valid": len(held)}


def _train_one(cfg: ExperimentConfig, train, valid, seed: int, out: Path, name: str, tasks=()):
    if cfg.train.num_workers > 0:
        return fit_with_ray(cfg.model, cfg.train, train, valid, seed, out / "ray", name, tasks)
    torch.manual_seed(seed)
    model = build_head(cfg.model, train.dim, tasks)
    return model, fit(model, train, valid, cfg.train, seed)


def _mean_over_seeds(per_seed: list[dict]) -> dict:
    """Mean of every numeric metric over seeds; `*_seed_std` holds the spread between seeds."""
    row = dict(per_seed[0])
    for key, value in per_seed[0].items():
        if isinstance(value, float):
            values = [m[key] for m in per_seed]
            row[key] = float(np.mean(values))
            if not key.endswith("_se") and len(per_seed) > 1:
                row[key + "_seed_std"] = float(np.std(values, ddof=1))
    row["seeds"] = len(per_seed)  # confusion and per-class accuracy stay those of the first seed
    return row


def _protein_row(test: EmbeddingSet, location_pred, membrane_pred, cfg: ExperimentConfig) -> dict:
    n, seed = cfg.train.bootstrap, cfg.train.bootstrap_seed
    loc = location_metrics(test.labels["location_id"], location_pred, len(LOCATIONS), n, seed)
    row = {k: loc[k] for k in ("q10", "q10_se", "mcc", "mcc_se", "n", "unlabelled")}
    row["per_class_accuracy"] = dict(zip(LOCATIONS, loc["per_class_accuracy"]))
    row["confusion"] = loc["confusion"]
    if membrane_pred is not None and "membrane_id" in test.labels:
        mem = membrane_metrics(test.labels["membrane_id"], membrane_pred, n, seed)
        row.update({"membrane_q2": mem["q2"], "membrane_q2_se": mem["q2_se"], "membrane_mcc": mem["mcc"],
                    "membrane_mcc_se": mem["mcc_se"], "membrane_n": mem["n"]})
    return row


def run_protein(cfg: ExperimentConfig, out: str | Path, embedder: str = "",
                methods: tuple[str, ...] = PROTEIN_METHODS, log=print) -> list[dict]:
    """DeepLoc localisation (+ membrane) with every method; writes results and models under `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    unknown = set(methods) - set(PROTEIN_METHODS)
    if unknown:
        raise FinetuneError(f"unknown method(s) {sorted(unknown)} (known: {', '.join(PROTEIN_METHODS)})")
    if cfg.data.train is None or cfg.data.test is None:
        raise FinetuneError("config keys data.train and data.test are required (or --train/--test)")
    needs_residues = "la" in methods
    full = _load(cfg.data.train, needs_residues)
    test = _load(cfg.data.test, needs_residues)
    for name, data in (("data.train", full), ("data.test", test)):
        if "location_id" not in data.labels:
            raise FinetuneError(f"{getattr(cfg.data, name.split('.')[1])}: no location_id column (not DeepLoc embeddings)")
    train, valid, split_info = split_validation(cfg, full, _load(cfg.data.valid, needs_residues), "location_id")
    split_info["excluded_from_location_loss"] = int((full.labels["location_id"] < 0).sum())
    log(f"[finetune] {embedder}: train {split_info['train']}, valid {split_info['valid']} "
        f"({split_info['validation']}), test {len(test)}; {split_info['excluded_from_location_loss']} "
        "training rows without one of the 10 locations are left out of the location loss")
    rows = []
    for method in methods:
        if method in ("la", "mlp"):
            cfg_m = ExperimentConfig(data=cfg.data, model=type(cfg.model)(**{**asdict(cfg.model), "head": method}),
                                     train=cfg.train, embed=cfg.embed)
            per_seed = []
            for seed in cfg.train.seeds:
                model, result = _train_one(cfg_m, train, valid, seed, out, f"{embedder}-{method}-seed{seed}")
                preds = predict(model, test, cfg.train)
                row = _protein_row(test, preds["location"], preds.get("membrane"), cfg)
                row.update(best_epoch=result.best_epoch, epochs_run=result.epochs_run,
                           train_seconds=round(result.seconds, 1), seconds_per_epoch=round(result.seconds / max(result.epochs_run, 1), 3))
                per_seed.append(row)
                (out / method).mkdir(exist_ok=True)
                torch.save(result.best_state, out / method / f"model_seed{seed}.pt")
                (out / method / f"history_seed{seed}.json").write_text(json.dumps(result.history) + "\n")
                log(f"[finetune] {embedder} {method} seed {seed}: Q10 {row['q10']:.3f} (best epoch {result.best_epoch}, "
                    f"{result.epochs_run} epochs, {result.seconds:.1f}s)")
            row = _mean_over_seeds(per_seed)
        elif method == "at":
            # Annotation transfer has nothing to fit: every training protein (hold-out included) is a reference.
            location = annotation_transfer(full.pooled, full.labels["location_id"], test.pooled)
            membrane = (annotation_transfer(full.pooled, full.labels["membrane_id"], test.pooled)
                        if "membrane_id" in full.labels else None)
            row = _protein_row(test, location, membrane, cfg)
        else:
            location = np.full(len(test), majority_class(full.labels["location_id"]))
            membrane = (np.full(len(test), majority_class(full.labels["membrane_id"]))
                        if "membrane_id" in full.labels else None)
            row = _protein_row(test, location, membrane, cfg)
        row.update(embedder=embedder, method=method, **{f"split_{k}": v for k, v in split_info.items()})
        confusion_png(row["confusion"], list(LOCATIONS), out / f"confusion_{method}.png", f"{embedder} {method}")
        if method not in ("la", "mlp"):
            log(f"[finetune] {embedder} {method}: Q10 {row['q10']:.3f}")
        rows.append(row)
    return rows


def run_residue(cfg: ExperimentConfig, out: str | Path, embedder: str = "", log=print) -> list[dict]:
    """Secondary structure and disorder with the SeqVec CNN; one result row per test set."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.data.train is None or cfg.data.test is None:
        raise FinetuneError("config keys data.train and data.test are required (or --train/--test)")
    full, test = _load(cfg.data.train), _load(cfg.data.test)
    if "ss3" not in full.residue_labels:
        raise FinetuneError(f"{cfg.data.train}: no ss3 column (not secondary-structure embeddings)")
    tasks = tuple(t for t in ("ss3", "ss8", "disorder")
                  if t in full.residue_labels and any(v is not None and (v >= 0).any() for v in full.residue_labels[t]))
    train, valid, split_info = split_validation(cfg, full, _load(cfg.data.valid), None)
    log(f"[finetune] {embedder} cnn: tasks {tasks}, train {split_info['train']}, valid {split_info['valid']}, test {len(test)}")
    groups = sorted(set(test.meta.get("dataset", ["test"] * len(test))))
    per_group: dict[str, list] = {g: [] for g in groups}
    for seed in cfg.train.seeds:
        model, result = _train_one(cfg, train, valid, seed, out, f"{embedder}-cnn-seed{seed}", tasks)
        torch.save(result.best_state, out / f"cnn_seed{seed}.pt")
        for group in groups:
            part = test.where("dataset", group) if "dataset" in test.meta else test
            preds = predict(model, part, cfg.train)
            row = residue_metrics(part.residue_labels, preds, part.residue_labels.get("eval_mask"),
                                  cfg.train.bootstrap, cfg.train.bootstrap_seed)
            row.update(best_epoch=result.best_epoch, epochs_run=result.epochs_run, proteins=len(part))
            per_group[group].append(row)
        log(f"[finetune] {embedder} cnn seed {seed}: " + ", ".join(
            f"{g} Q3 {per_group[g][-1].get('q3', float('nan')):.3f}" for g in groups))
    rows = []
    for group in groups:
        row = _mean_over_seeds(per_group[group])
        row.update(embedder=embedder, method="cnn", test_set=group, tasks=list(tasks))
        rows.append(row)
    return rows
