"""Results tables (Markdown + JSON) and Weights & Biases logging (offline without an API key)."""
from __future__ import annotations

import json
import os
from pathlib import Path

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


def log_wandb(rows: list[dict], config: dict, name: str, group: str, out: str | Path) -> str | None:
    """One W&B run with the config and every row's metrics; offline unless WANDB_API_KEY is set."""
    try:
        import wandb
    except ImportError:
        return None
    mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
    run = wandb.init(project=os.environ.get("WANDB_PROJECT", "protlm-finetune"), name=name, group=group,
                     config=config, mode=mode, dir=str(out), reinit="finish_previous")
    for row in rows:
        prefix = f"{row.get('test_set', 'test')}/{row['method']}"
        run.summary.update({f"{prefix}/{k}": v for k, v in row.items() if isinstance(v, (int, float))})
    run.finish()
    return mode
