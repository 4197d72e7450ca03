"""Results tables (Markdown + JSON) and Weights & Biases logging (offline without an API key)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

# Columns of the per-protein table: (header, key, se key); values are shares shown in percent.
PROTEIN_COLUMNS = (("Q10 %", "q10", "q10_se"), ("MCC", "mcc", "mcc_se"),
                   ("membrane Q2 %", "membrane_q2", "membrane_q2_se"), ("membrane MCC", "membrane_mcc", "membrane_mcc_se"))
RESIDUE_COLUMNS = (("Q3 %", "q3", "q3_se"), ("Q8 %", "q8", "q8_se"),
                   ("disorder MCC", "disorder_mcc", "disorder_mcc_se"), ("disorder FPR", "disorder_fpr", "disorder_fpr_se"))
PERCENT = {"q10", "q3", "q8", "membrane_q2"}


def _cell(row: dict, key: str, se_key: str) -> str:
    value = row.get(key)
    if value is None:
        return "–"
    scale = 100.0 if key in PERCENT else 1.0
    digits = 1 if key in PERCENT else 3
    text = f"{value * scale:.{digits}f}"
    if row.get(se_key) is not None:
        text += f" ± {row[se_key] * scale:.{digits}f}"
    return text


def markdown_table(rows: list[dict], per_residue: bool = False) -> str:
    """rows: {"embedder", "method", metrics...}; ± is the bootstrap standard error."""
    columns = RESIDUE_COLUMNS if per_residue else PROTEIN_COLUMNS
    first = ["embedder", "method"] + (["test set"] if per_residue else [])
    lines = ["| " + " | ".join(first + [c[0] for c in columns]) + " |",
             "|" + "---|" * (len(first) + len(columns))]
    for row in rows:
        cells = [row.get("embedder", ""), row.get("method", "")] + ([row.get("test_set", "")] if per_residue else [])
        lines.append("| " + " | ".join(cells + [_cell(row, k, s) for _, k, s in columns]) + " |")
    return "\n".join(lines) + "\n"


def write_results(rows: list[dict], out: str | Path, title: str, per_residue: bool = False, notes: str = "") -> str:
    """results.json + results.md under `out`; returns the Markdown."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    text = f"# {title}\n\n" + markdown_table(rows, per_residue) + ("\n" + notes.strip() + "\n" if notes else "")
    (out / "results.md").write_text(text)
    return text


def log_results(rows: list[dict], config: dict, wandb_cfg, name: str, group: str, out: str | Path) -> str:
    """The results table and the location confusion matrices as one run of the engine's tracker
    (W&B offline unless WANDB_API_KEY is set; metrics.jsonl and run.json under `out`); the per-seed
    training runs (their curves) are tracked by the engine itself."""
    from dataclasses import replace

    from engine.tracking import Tracker, wandb_mode

    from data_prep.labels import LOCATIONS

    cfg = replace(wandb_cfg, group=group or wandb_cfg.group, dir=wandb_cfg.dir or str(out))
    tracker = Tracker(cfg, config, Path(out), name, rank=0, job_type="finetune-results")
    flat = {f"{row.get('test_set', 'test')}/{row['method']}/{k}": v for row in rows for k, v in row.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}
    tracker.log(flat, 0)
    for row in rows:  # per-protein rows carry the location confusion matrix (confusion_<method>.png)
        if row.get("confusion") is not None:
            tracker.log_confusion(f"{row.get('test_set', 'test')}/{row['method']}/confusion", row["confusion"],
                                  list(LOCATIONS), 0)
    tracker.finish()
    return wandb_mode(cfg.mode)


def confusion_png(c: np.ndarray | list, labels: list[str], path, title: str = "") -> None:
    """Row-normalised confusion matrix with counts, written with matplotlib's Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = np.asarray(c, dtype=np.float64)
    rows = c.sum(axis=1, keepdims=True)
    share = np.divide(c, rows, out=np.zeros_like(c), where=rows > 0)
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    for i in range(c.shape[0]):
        for j in range(c.shape[1]):
            ax.text(j, i, int(c[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if share[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
