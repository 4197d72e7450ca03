"""Weights & Biases from rank 0 only (the progress line is engine.logs.StepProgress).

The run carries the full config, the git commit, group and tags from the config. Without
WANDB_API_KEY (mode "auto") it runs offline; the key itself is never copied into configs, logs or
checkpoints (W&B reads it from the environment). Rank 0 also appends every report to
`<storage_path>/<name>/metrics.jsonl`. A restart of the same run (same storage path and
name) continues the same W&B run id.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


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

    def __init__(self, wandb_cfg, config: dict, run_dir: Path, run_name: str, rank: int):
        self.rank = rank
        self.run = None
        self.jsonl = None
        if rank != 0:
            return
        # A plain local copy of every report (first/last loss for scripts, curves for tests).
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        self.jsonl = Path(run_dir) / "metrics.jsonl"
        mode = wandb_mode(wandb_cfg.mode)
        if mode == "disabled":
            return
        import wandb

        directory = Path(wandb_cfg.dir or run_dir)
        directory.mkdir(parents=True, exist_ok=True)
        run_id = hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:12]
        self.run = wandb.init(
            project=wandb_cfg.project, group=wandb_cfg.group or run_name, tags=list(wandb_cfg.tags),
            name=run_name, id=run_id, resume="allow", dir=str(directory), mode=mode,
            config={**config, "git_commit": config.get("git_commit") or git_commit()},
            settings=wandb.Settings(silent=True, console="off"),
        )

    def log(self, metrics: dict, step: int) -> None:
        if self.rank != 0:
            return
        with open(self.jsonl, "a") as fh:
            fh.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.run is not None:
            self.run.log(metrics, step=step)

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
