"""The project's one metrics module: the papers' metrics, from confusion matrices.

Every stage uses it (multitask's evaluation and training logs, finetune's tables), so Q3 or an
MCC means the same computation everywhere. Confusion matrices make bootstrapping cheap.

Per protein: Q10 (accuracy), Gorodkin's multi-class MCC R_K, per-class accuracy, Q2 and MCC
for membrane vs soluble. Per residue: Q3, Q8, disorder MCC and false-positive rate.
Standard errors: the standard deviation of a metric over seeded bootstrap resamples of the
proteins (per-residue metrics resample whole proteins, so residues of one chain stay together).
"""
from __future__ import annotations

import numpy as np


def confusion(true: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    """k x k counts, rows = true class, columns = predicted; rows with true < 0 are ignored."""
    true, pred = np.asarray(true), np.asarray(pred)
    keep = true >= 0
    return np.bincount(true[keep] * k + pred[keep], minlength=k * k).reshape(k, k).astype(np.float64)


def accuracy(c: np.ndarray) -> float:
    """Q_k: share of correct predictions."""
    n = c.sum()
    return float(np.trace(c) / n) if n else float("nan")


def gorodkin_mcc(c: np.ndarray) -> float:
    """Gorodkin (2004) R_K; equals the Matthews coefficient for 2 classes."""
    n, correct = c.sum(), np.trace(c)
    t, p = c.sum(axis=1), c.sum(axis=0)
    num = correct * n - (t * p).sum()
    den = np.sqrt((n * n - (p * p).sum()) * (n * n - (t * t).sum()))
    return float(num / den) if den else 0.0


def per_class_accuracy(c: np.ndarray) -> np.ndarray:
    """Recall of every true class (nan for a class without examples)."""
    rows = c.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(rows > 0, np.diag(c) / rows, np.nan)


def false_positive_rate(c: np.ndarray) -> float:
    """2 x 2 (0 = negative, 1 = positive): FP / (FP + TN)."""
    negatives = c[0].sum()
    return float(c[0, 1] / negatives) if negatives else float("nan")


METRICS = {"q": accuracy, "mcc": gorodkin_mcc, "fpr": false_positive_rate}


def unit_confusions(true_units: list, pred_units: list, k: int, masks: list | None = None) -> np.ndarray:
    """[units, k, k]: one confusion matrix per protein (per-residue tasks) or per row."""
    out = np.zeros((len(true_units), k, k))
    for u, (t, p) in enumerate(zip(true_units, pred_units)):
        t, p = np.atleast_1d(np.asarray(t, dtype=np.int64)), np.atleast_1d(np.asarray(p, dtype=np.int64))
        if masks is not None and masks[u] is not None:
            t = np.where(np.asarray(masks[u]) > 0, t, -1)
        out[u] = confusion(t, p, k)
    return out


def bootstrap_confusions(units: np.ndarray, n: int = 1000, seed: int = 0) -> np.ndarray:
    """n resampled total confusion matrices: units drawn with replacement, seeded."""
    rng = np.random.default_rng(seed)
    count = len(units)
    weights = np.stack([np.bincount(rng.integers(0, count, count), minlength=count) for _ in range(n)])
    flat = units.reshape(count, -1)
    return (weights.astype(np.float64) @ flat).reshape(n, *units.shape[1:])


def with_se(units: np.ndarray, metric, n: int = 1000, seed: int = 0) -> tuple[float, float]:
    """(metric on all units, bootstrap standard error)."""
    value = metric(units.sum(axis=0))
    samples = np.array([metric(c) for c in bootstrap_confusions(units, n, seed)])
    return value, float(np.nanstd(samples, ddof=1)) if n > 1 else 0.0


def location_metrics(true: np.ndarray, pred: np.ndarray, k: int = 10, n_boot: int = 1000, seed: int = 0) -> dict:
    """Q10, R_K (with standard errors) and per-class accuracy; rows with true < 0 are counted apart."""
    true, pred = np.asarray(true), np.asarray(pred)
    labelled = true >= 0
    units = unit_confusions(true[labelled], pred[labelled], k)
    q, q_se = with_se(units, accuracy, n_boot, seed)
    mcc, mcc_se = with_se(units, gorodkin_mcc, n_boot, seed)
    total = units.sum(axis=0)
    return {"q10": q, "q10_se": q_se, "mcc": mcc, "mcc_se": mcc_se,
            "per_class_accuracy": [None if np.isnan(a) else float(a) for a in per_class_accuracy(total)],
            "confusion": total.astype(int).tolist(), "n": int(labelled.sum()), "unlabelled": int((~labelled).sum())}


def membrane_metrics(true: np.ndarray, pred: np.ndarray, n_boot: int = 1000, seed: int = 0) -> dict:
    """Q2 and MCC for membrane-bound (1) vs soluble (0); U (-1) rows are left out and counted."""
    true, pred = np.asarray(true), np.asarray(pred)
    labelled = true >= 0
    units = unit_confusions(true[labelled], pred[labelled], 2)
    q, q_se = with_se(units, accuracy, n_boot, seed)
    mcc, mcc_se = with_se(units, gorodkin_mcc, n_boot, seed)
    return {"q2": q, "q2_se": q_se, "mcc": mcc, "mcc_se": mcc_se, "n": int(labelled.sum()),
            "unlabelled": int((~labelled).sum())}


def residue_metrics(true: dict[str, list], pred: dict[str, list], eval_mask: list | None,
                    n_boot: int = 1000, seed: int = 0) -> dict:
    """Q3, Q8 (where 8-state labels exist), disorder MCC and FPR; eval_mask limits the residues."""
    out = {}
    for task, k, names in (("ss3", 3, ("q3",)), ("ss8", 8, ("q8",)), ("disorder", 2, ("disorder_mcc", "disorder_fpr"))):
        if task not in pred or task not in true:
            continue
        pairs = [(t, p, None if eval_mask is None or task == "disorder" else eval_mask[i])
                 for i, (t, p) in enumerate(zip(true[task], pred[task])) if t is not None]
        if not pairs:
            continue
        units = unit_confusions([a for a, _, _ in pairs], [b for _, b, _ in pairs], k, [m for _, _, m in pairs])
        if units.sum() == 0:
            continue
        metrics = (accuracy,) if task != "disorder" else (gorodkin_mcc, false_positive_rate)
        for name, metric in zip(names, metrics):
            out[name], out[name + "_se"] = with_se(units, metric, n_boot, seed)
        out[f"{task}_residues"] = int(units.sum())
    return out
