"""Weights & Biases from rank 0 only (the progress line is engine.logs.StepProgress).

The run carries the full config, the git commit, group, tags and a job type (the task's kind,
e.g. "bilstm", "encoder", "finetune-head"). Without WANDB_API_KEY (mode "auto") it runs offline;
the key itself is never copied into configs, logs or checkpoints (W&B reads it from the
environment). A restart of the same run (same storage path and name) continues the same W&B run id.
Every metric is plotted against `step` and summarised by its goal (min for losses, max for
accuracies), so W&B's run table shows best values, not last ones.

Rank 0 also writes what the project reads back itself, W&B or not (ops.compare reads these for
offline runs; W&B's own run files are its internal format):
  <run_dir>/metrics.jsonl   one JSON object per report, with "step"
  <run_dir>/run.json        name, group, tags, job_type and the full config
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RUN_FILE = "run.json"


def git_commit() -> str:
    """HEAD of the repository this code runs from, '+dirty' when it has local changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head + ("+dirty" if dirty else "")) if head else "unknown"


def wandb_mode(mode: str) -> str:
    if mode == "auto":
        return "online" if os.environ.get("WANDB_API_KEY") else "offline"
    return mode


class Tracker:
    """Logs metrics on rank 0 (W&B + metrics.jsonl); a no-op object on other ranks."""

    def __init__(self, wandb_cfg, config: dict, run_dir: Path, run_name: str, rank: int,
                 job_type: str | None = None):
        self.rank = rank
        self.run = None
        self.jsonl = None
        self.goals: dict[str, str] = {}  # metric -> summary W&B keeps for it (define_metric)
        if rank != 0:
            return
        # A plain local copy of every report (first/last loss for scripts, curves for tests).
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        self.jsonl = Path(run_dir) / "metrics.jsonl"
        job_type = job_type or config.get("task") or "train"
        config = {**config, "git_commit": config.get("git_commit") or git_commit()}
        info = {"name": run_name, "group": wandb_cfg.group or run_name, "tags": list(wandb_cfg.tags),
                "job_type": job_type, "config": config}
        (Path(run_dir) / RUN_FILE).write_text(json.dumps(info, indent=2, default=str) + "\n")
        mode = wandb_mode(wandb_cfg.mode)
        if mode == "disabled":
            return
        import wandb

        directory = Path(wandb_cfg.dir or run_dir)
        directory.mkdir(parents=True, exist_ok=True)
        run_id = hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:12]
        self.run = wandb.init(
            project=wandb_cfg.project, group=wandb_cfg.group or run_name, tags=list(wandb_cfg.tags),
            name=run_name, id=run_id, resume="allow", dir=str(directory), mode=mode, job_type=job_type,
            config=config, settings=wandb.Settings(silent=True, console="off"),
        )
        self.run.define_metric("step", hidden=True)

    def log(self, metrics: dict, step: int) -> None:
        if self.rank != 0:
            return
        with open(self.jsonl, "a") as fh:
            fh.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.run is not None:
            for key in metrics.keys() - self.goals.keys() - {"step"}:
                self.goals[key] = metric_goal(key)
                self.run.define_metric(key, step_metric="step", summary=self.goals[key])
            self.run.log({**metrics, "step": step}, step=step)

    def log_confusion(self, key: str, counts, labels: list[str], step: int) -> None:
        """A confusion matrix (counts[true][predicted]) as W&B's confusion-matrix chart."""
        if self.run is None:
            return
        import numpy as np
        import wandb

        counts = np.asarray(counts, dtype=np.int64)
        true, pred = np.nonzero(counts >= 0)
        reps = counts[true, pred]
        chart = wandb.plot.confusion_matrix(y_true=np.repeat(true, reps).tolist(),
                                            preds=np.repeat(pred, reps).tolist(), class_names=list(labels))
        self.run.log({key: chart}, step=step)

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


def metric_goal(key: str) -> str:
    """W&B summary of a metric: min for losses (ce, kl, perplexity), max for accuracies, else last."""
    parts = set(key.lower().replace("/", "_").split("_"))
    if parts & {"loss", "ce", "kl", "perplexity", "joint"} and not parts & {"se", "std", "step", "epoch"}:
        return "min"
    if parts & {"acc", "accuracy", "q2", "q3", "q8", "q10", "mcc"} and not parts & {"se", "std", "fpr"}:
        return "max"
    return "last"
