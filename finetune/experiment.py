"""One experiment on one embedder: train heads through the engine, score the selected models on test.

Per protein (DeepLoc): LA, the mean-pool MLP, annotation transfer and the majority class, each
reporting Q10, R_K MCC, per-class accuracy, a confusion-matrix PNG and membrane Q2/MCC.
Per residue (secondary structure): the SeqVec CNN, reported per test set (the `dataset` column).
LA, MLP and CNN train with `engine.launch` (Ray Train) or `engine.loop.run_plain` (`local=True`):
one run per seed under `<out>/runs/<embedder>-<head>-seed<k>`, whose export is the epoch with the
best validation loss (the engine's selection). The test set is read only after training.
"""
from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from data_prep.labels import LOCATIONS
from engine.checkpoint import load_export, resolve_checkpoint
from engine.loop import EVAL_EPOCH
from engine.sources import Mixture, Source, read_column, shard_columns
from engine.stream import Feed
from engine.metrics import location_metrics, membrane_metrics, residue_metrics

from .baselines import annotation_transfer, majority_class
from .config import FinetuneConfig
from .data import load_embeddings
from .errors import FinetuneError
from .report import confusion_png, write_results
from .task import HeadTask

_logger = logging.getLogger(__name__)

PROTEIN_METHODS = ("la", "mlp", "at", "majority")


def train_head(cfg: FinetuneConfig, local: bool = False, faults=None) -> dict:
    """One engine run of `cfg` (one head, one seed); returns the run's last metrics."""
    from engine.launch import train_task
    return train_task(HeadTask, cfg, local=local, faults=faults)


def load_head(run_dir: str | Path, cfg: FinetuneConfig) -> tuple[HeadTask, torch.nn.Module, dict]:
    """The task, the selected model (eval mode) and its export config.json of a finished run."""
    config, weights = load_export(resolve_checkpoint(run_dir))
    task = HeadTask(cfg)
    # what the run trained with, never recomputed: its heads, input statistics and class weights
    task.__dict__.update(tasks=tuple(config.get("tasks", ())), stats=config.get("standardize"),
                         weights=config.get("class_weights") or {})
    model = task.build_model()
    model.load_state_dict(weights)
    return task, model.eval(), config


@torch.no_grad()
def predict(task: HeadTask, model: torch.nn.Module, path: str, cfg: FinetuneConfig) -> list[dict]:
    """Per protein of shard dir `path`: {"id", "dataset", label name: (true, predicted)}.

    The same engine path as evaluation during training (plan, read, collate_eval), in this process,
    with whole proteins: the budget and the crop length are raised to the longest protein."""
    longest = int(read_column(path, "length").max())
    data = replace(cfg.data, max_length=max(cfg.data.max_length, longest),
                   residues_per_batch=max(cfg.data.residues_per_batch, longest), limit=0)
    pcfg = replace(cfg, data=data)
    extra = ["id"] + (["dataset"] if "dataset" in shard_columns(path) else [])
    feed = Feed(Mixture([Source(path, list(task.columns) + extra)]), pcfg, _WithIds(task, extra), rank=0, world=1,
                training=False)
    out = []
    for ready in feed.batches(feed.plan(EVAL_EPOCH), EVAL_EPOCH):
        batch = ready.tensors
        logits = model(batch)
        lengths = batch["mask"].sum(-1).tolist() if "mask" in batch else None
        for i, pid in enumerate(batch["id"]):
            item = {"id": pid, "dataset": batch["dataset"][i] if "dataset" in batch else "test"}
            for name, value in logits.items():
                key = name if task.per_residue else f"{name}_id"
                pred = value[i].float().argmax(-1).numpy()
                true = batch[key][i].numpy()
                if task.per_residue:
                    n = int(lengths[i])
                    pred, true = pred[:n], true[:n]
                item[name] = (true, pred)
            if task.per_residue and "eval_mask" in batch:
                mask = batch["eval_mask"][i, : int(lengths[i])].numpy()
                item["eval_mask"] = mask if (mask >= 0).any() else None  # no mask cell: every residue counts
            out.append(item)
    return out


class _WithIds:
    """A task whose eval batches also carry the rows' ids (and dataset names), for scoring."""

    def __init__(self, task: HeadTask, extra: list[str]):
        self.task, self.extra = task, extra

    def collate_eval(self, rows, starts, lengths, rng):
        batch = self.task.collate_eval(rows, starts, lengths, rng)
        for name in self.extra:
            batch[name] = [r[name] for r in rows]
        return batch


def _mean_over_seeds(per_seed: list[dict]) -> dict:
    """Mean of every numeric metric over seeds; `*_seed_std` holds the spread between seeds, and
    `per_seed` every seed's own scalar metrics (a metric that is null, e.g. membrane metrics of a
    test set without M/S labels, stays null)."""
    row = dict(per_seed[0])
    for key, value in per_seed[0].items():
        if isinstance(value, float):
            values = [m[key] for m in per_seed]
            row[key] = float(np.mean(values))
            if not key.endswith("_se") and len(per_seed) > 1:
                row[key + "_seed_std"] = float(np.std(values, ddof=1))
    row["seeds"] = len(per_seed)  # confusion and per-class accuracy stay those of the first seed
    row["per_seed"] = [{k: v for k, v in r.items() if v is None or isinstance(v, (int, float, str))} for r in per_seed]
    return row


RESIDUE_KEYS = ("q3", "q3_se", "q8", "q8_se", "disorder_mcc", "disorder_mcc_se", "disorder_fpr", "disorder_fpr_se")
MEMBRANE_KEYS = ("membrane_q2", "membrane_q2_se", "membrane_mcc", "membrane_mcc_se")


def _protein_row(true_loc, pred_loc, true_mem, pred_mem, cfg: FinetuneConfig) -> dict:
    """Location metrics, and membrane metrics where the test set has M/S labels (else null: a set
    whose proteins are all U, as some published DeepLoc-style files, has no membrane metrics)."""
    n, seed = cfg.train.bootstrap, cfg.train.bootstrap_seed
    loc = location_metrics(true_loc, pred_loc, len(LOCATIONS), n, seed)
    row = {k: loc[k] for k in ("q10", "q10_se", "mcc", "mcc_se", "n", "unlabelled")}
    row["per_class_accuracy"] = dict(zip(LOCATIONS, loc["per_class_accuracy"]))
    row["confusion"] = loc["confusion"]
    row.update(dict.fromkeys(MEMBRANE_KEYS), membrane_n=0)
    if pred_mem is not None and true_mem is not None and (np.asarray(true_mem) >= 0).any():
        mem = membrane_metrics(true_mem, pred_mem, n, seed)
        row.update({"membrane_q2": mem["q2"], "membrane_q2_se": mem["q2_se"], "membrane_mcc": mem["mcc"],
                    "membrane_mcc_se": mem["mcc_se"], "membrane_n": mem["n"]})
    return row


def _run_cfg(cfg: FinetuneConfig, head: str, seed: int, out: Path, name: str) -> FinetuneConfig:
    return replace(cfg, model=replace(cfg.model, head=head), train=replace(cfg.train, seed=seed),
                   ray=replace(cfg.ray, storage_path=str(out / "runs"), name=name),
                   wandb=replace(cfg.wandb, group=cfg.wandb.group or out.name))


def _trained(cfg: FinetuneConfig, head: str, seed: int, out: Path, name: str, local: bool, log) -> tuple:
    run_cfg = _run_cfg(cfg, head, seed, out, name)
    metrics = train_head(run_cfg, local)
    task, model, config = load_head(out / "runs" / name, run_cfg)
    selected = config["train"].get("selected") or {}
    info = {"best_epoch": selected.get("epoch"), "epochs_run": metrics.get("epoch"),
            "best_val_loss": selected.get("value"), "seconds_per_epoch": round(metrics.get("seconds_per_epoch", 0.0), 3)}
    log(f"{name}: best epoch {info['best_epoch']} of {info['epochs_run']} "
        f"(val loss {info['best_val_loss']:.4f}), {info['seconds_per_epoch']} s/epoch")
    return run_cfg, task, model, info


def run_protein(cfg: FinetuneConfig, out: str | Path, embedder: str = "",
                methods: tuple[str, ...] = PROTEIN_METHODS, local: bool = False, log=None) -> list[dict]:
    """DeepLoc localisation (+ membrane) with every method; writes results and runs under `out`.
    `log` takes each progress line (default: this module's logger)."""
    log = log or _logger.info
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    unknown = set(methods) - set(PROTEIN_METHODS)
    if unknown:
        raise FinetuneError(f"unknown method(s) {sorted(unknown)} (known: {', '.join(PROTEIN_METHODS)})")
    if not cfg.data.train or not cfg.data.test:
        raise FinetuneError("config keys data.train and data.test are required (or --train/--test)")
    for key in ("train", "test"):
        if "location_id" not in shard_columns(getattr(cfg.data, key)):
            raise FinetuneError(f"{getattr(cfg.data, key)}: no location_id column (not DeepLoc embeddings)")
    if not (read_column(cfg.data.test, "location_id").astype(np.int64) >= 0).any():
        raise FinetuneError(f"{cfg.data.test}: no test protein has one of the 10 locations (column location_id): "
                            "nothing to evaluate")
    split_task = HeadTask(replace(cfg, model=replace(cfg.model, head="mlp")))
    keep, held, how = split_task.split
    train_loc = read_column(cfg.data.train, "location_id").astype(np.int64)
    split_info = {"validation": how, "train": len(train_loc) if keep is None else len(keep),
                  "valid": len(read_column(cfg.data.valid, "length")) if held is None else len(held),
                  "excluded_from_location_loss": int((train_loc < 0).sum())}
    log(f"{embedder}: train {split_info['train']}, valid {split_info['valid']} ({how}); "
        f"{split_info['excluded_from_location_loss']} training rows without one of the 10 locations are left out "
        "of the location loss")
    membrane = {k: _has_membrane_labels(getattr(cfg.data, k)) for k in ("train", "test")}
    if not all(membrane.values()):
        log(f"{embedder}: no M/S membrane labels in the {' and '.join(k for k, v in membrane.items() if not v)}"
            " set: membrane metrics are null (shown as –)")
    score_membrane = all(membrane.values())
    rows: list[dict] = []
    title = f"DeepLoc results: {embedder}"
    reference = None
    for method in methods:
        extra = {"embedder": embedder, "method": method, **{f"split_{k}": v for k, v in split_info.items()}}
        if method in ("la", "mlp"):
            per_seed = []
            for seed in cfg.train.seeds:
                run_cfg, task, model, info = _trained(cfg, method, seed, out, f"{embedder}-{method}-seed{seed}", local, log)
                preds = predict(task, model, cfg.data.test, run_cfg)
                true_loc = np.array([p["location"][0] for p in preds])
                pred_loc = np.array([p["location"][1] for p in preds])
                mem = [p.get("membrane") for p in preds] if score_membrane else []
                true_mem = np.array([m[0] for m in mem]) if mem and mem[0] is not None else None
                pred_mem = np.array([m[1] for m in mem]) if mem and mem[0] is not None else None
                row = _protein_row(true_loc, pred_loc, true_mem, pred_mem, cfg)
                row.update(info, seed=seed)
                per_seed.append(row)
                # written after every seed: a later failure keeps the seeds already done
                write_results(rows + [_seed_summary(per_seed, extra)], out, title)
                log(f"{embedder} {method} seed {seed}: Q10 {row['q10']:.3f}")
            row = _seed_summary(per_seed, extra)
        else:
            if reference is None:  # nothing to fit: every training protein (hold-out included) is a reference
                train, test = load_embeddings(cfg.data.train, False), load_embeddings(cfg.data.test, False)
                reference = (train, test)
            train, test = reference
            location = _baseline(method, train, test, "location_id")
            membrane_pred = _baseline(method, train, test, "membrane_id") if score_membrane else None
            row = _protein_row(test.labels["location_id"], location, test.labels.get("membrane_id"), membrane_pred, cfg)
            row.update(extra)
            log(f"{embedder} {method}: Q10 {row['q10']:.3f}")
        confusion_png(row["confusion"], list(LOCATIONS), out / f"confusion_{method}.png", f"{embedder} {method}")
        rows.append(row)
        write_results(rows, out, title)
    return rows


def _baseline(method: str, train, test, label: str) -> np.ndarray:
    """Predictions of a method that fits nothing: annotation transfer or the majority class."""
    if method == "at":
        return annotation_transfer(train.pooled, train.labels[label], test.pooled)
    return np.full(len(test), majority_class(train.labels[label]))


def _has_membrane_labels(path: str) -> bool:
    """Whether shard dir `path` has a membrane_id column with at least one M or S (not U) protein."""
    return "membrane_id" in shard_columns(path) and bool((read_column(path, "membrane_id").astype(np.int64) >= 0).any())


def _seed_summary(per_seed: list[dict], extra: dict) -> dict:
    """The table row of the seeds done so far: their mean, `per_seed`, and `q10_per_seed` (per
    protein) or `q3_per_seed` (per residue)."""
    row = _mean_over_seeds(per_seed)
    row.pop("seed", None)
    for key in ("q10", "q3"):
        if key in row:
            row[f"{key}_per_seed"] = [r[key] for r in per_seed]
    row.update(extra)
    return row


def run_residue(cfg: FinetuneConfig, out: str | Path, embedder: str = "", local: bool = False,
                log=None) -> list[dict]:
    """Secondary structure and disorder with the SeqVec CNN; one result row per test set."""
    log = log or _logger.info
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if not cfg.data.train or not cfg.data.test:
        raise FinetuneError("config keys data.train and data.test are required (or --train/--test)")
    cfg = replace(cfg, model=replace(cfg.model, head="cnn"))
    per_group: dict[str, list] = {}
    tasks: tuple = ()
    rows: list[dict] = []
    for seed in cfg.train.seeds:
        run_cfg, task, model, info = _trained(cfg, "cnn", seed, out, f"{embedder}-cnn-seed{seed}", local, log)
        tasks = task.tasks
        preds = predict(task, model, cfg.data.test, run_cfg)
        for group in sorted({p["dataset"] for p in preds}):
            part = [p for p in preds if p["dataset"] == group]
            true = {t: [p[t][0] for p in part] for t in tasks}
            pred = {t: [p[t][1] for p in part] for t in tasks}
            masks = [p["eval_mask"] for p in part] if "eval_mask" in part[0] else None
            row = residue_metrics(true, pred, masks, cfg.train.bootstrap, cfg.train.bootstrap_seed)
            # a metric whose task was not trained (Q8 from FLIP, which has 3-state labels only) or
            # has no test labels is null, never a number
            row.update(dict.fromkeys((k for k in RESIDUE_KEYS if k not in row)), **info, proteins=len(part), seed=seed)
            per_group.setdefault(group, []).append(row)
        log(f"{embedder} cnn seed {seed}: " + ", ".join(
            f"{g} Q3 {_fmt(r[-1]['q3'])} disorder MCC {_fmt(r[-1]['disorder_mcc'])}" for g, r in per_group.items()))
        rows = [_seed_summary(per_seed, {"embedder": embedder, "method": "cnn", "test_set": group, "tasks": list(tasks)})
                for group, per_seed in per_group.items()]
        write_results(rows, out, f"Per-residue results: {embedder}", per_residue=True)  # after every seed
    return rows


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"
