"""Read runs to compare: what this project writes itself, or the public W&B API.

Local paths are read from the project's own files, never from W&B's internal run format:
  training run dir   <storage_path>/<name>/metrics.jsonl (one report per line, with "step") and
                     run.json (name, group, tags, job_type, config; engine.tracking writes both),
                     else the config.json of the run's latest checkpoint (runs made before run.json)
  finetune results   results.json (one row per embedder, method and test set, with bootstrap SEs)
  a folder           every training run dir and results.json below it (W&B and checkpoint
                     folders skipped)
`entity/project/run_id` is read with `wandb.Api()` (online runs; the key comes from WANDB_API_KEY).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import UserError

METRICS_FILE, RUN_FILE, RESULTS_FILE = "metrics.jsonl", "run.json", "results.json"
SKIPPED_DIRS = {"wandb", "hf_cache"}


class RunReadError(UserError, ValueError):
    """A run that cannot be read; the message names the path."""


@dataclass
class RunData:
    name: str
    run_id: str
    group: str = ""
    job_type: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)  # one dict per report, ordered by step
    source: str = ""

    def series(self, key: str, x_key: str = "step") -> tuple[list[float], list[float]]:
        """(x, y) of every report that has a numeric `key`; x_key "residues" is cumulative."""
        xs, ys, seen = [], [], 0.0
        for i, row in enumerate(self.history):
            seen += float(row.get("residues") or 0)
            value = row.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:
                xs.append(seen if x_key == "residues" else row.get(x_key, i))
                ys.append(float(value))
        return xs, ys

    def metric_keys(self) -> list[str]:
        return sorted({k for row in self.history for k, v in row.items()
                       if not k.startswith("_") and k != "step" and isinstance(v, (int, float))
                       and not isinstance(v, bool)})


@dataclass
class ResultRows:
    """Downstream results (finetune results.json): one dict per embedder, method (and test set)."""
    source: str
    rows: list[dict]


def read_run_dir(run_dir: str | Path) -> RunData:
    """A training run directory written by the engine (metrics.jsonl + run.json)."""
    run_dir = Path(run_dir)
    metrics = run_dir / METRICS_FILE
    if not metrics.is_file():
        raise RunReadError(f"{run_dir}: no {METRICS_FILE} (not a training run directory)")
    by_step: dict = {}
    for n, line in enumerate(metrics.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise RunReadError(f"{metrics}:{n}: not JSON ({err})") from None
        by_step[row.get("step", n)] = row  # a resumed run reports the steps after its checkpoint again
    info = _run_info(run_dir)
    config = info.get("config", {})
    return RunData(name=info.get("name", run_dir.name), run_id=str(run_dir), group=info.get("group", ""),
                   job_type=info.get("job_type") or config.get("task") or config.get("kind", ""),
                   tags=list(info.get("tags", [])), config=config,
                   history=[by_step[k] for k in sorted(by_step)], source=str(run_dir))


def _run_info(run_dir: Path) -> dict:
    """run.json, or for older runs the latest checkpoint's config.json (kind, model, train ...)."""
    path = run_dir / RUN_FILE
    if not path.is_file():
        from engine.checkpoint import latest_checkpoint

        ckpt = latest_checkpoint(run_dir)
        path = ckpt / "config.json" if ckpt is not None else None
        if path is None or not path.is_file():
            return {}
        export = json.loads(path.read_text())  # its "train" section holds the training config
        config = {**export.get("train", {}).get("config", {}), "task": export.get("kind", "")}
        return {"config": {**config, "git_commit": export.get("git_commit", "")}}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise RunReadError(f"{path}: not JSON ({err})") from None


def read_results(path: str | Path) -> ResultRows:
    path = Path(path)
    path = path / RESULTS_FILE if path.is_dir() else path
    try:
        rows = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise RunReadError(f"{path}: cannot read results ({err})") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "method" in r for r in rows):
        raise RunReadError(f"{path}: not a finetune results.json (a list of rows with 'method')")
    return ResultRows(str(path), rows)


def find_local(root: Path) -> tuple[list[Path], list[Path]]:
    """(training run dirs, results.json files) at or below `root`, sorted."""
    if (root / METRICS_FILE).is_file() and not (root / RESULTS_FILE).is_file():
        return [root], []
    # A finetune results dir's own metrics.jsonl is its table, not a training run; its heads' runs
    # and the results below a merged table (which repeats some of their rows) are still found.
    runs, results = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIPPED_DIRS and not d.startswith("checkpoint_"))
        here = Path(dirpath)
        if RESULTS_FILE in filenames:
            results.append(here / RESULTS_FILE)
        elif METRICS_FILE in filenames:
            runs.append(here)
    return sorted(runs), sorted(results)


def read_api_run(path: str) -> RunData:
    """`entity/project/run_id` through the public W&B API; the key comes from WANDB_API_KEY only."""
    if not os.environ.get("WANDB_API_KEY"):
        raise RunReadError(f"{path}: reading runs from the W&B API needs WANDB_API_KEY in the environment")
    import wandb

    try:
        api_run = wandb.Api().run(path)
        history = sorted((dict(row) for row in api_run.scan_history()),
                         key=lambda r: r.get("step", r.get("_step", 0)))
    except (wandb.errors.CommError, ValueError) as err:
        raise RunReadError(f"{path}: {err}") from None
    for row in history:
        row.setdefault("step", row.get("_step"))
    return RunData(name=api_run.name, run_id=api_run.id, group=api_run.group or "",
                   job_type=api_run.job_type or "", tags=list(api_run.tags), config=dict(api_run.config),
                   history=history, source=path)


def load_runs(specs: list[str]) -> list[RunData]:
    """Training runs of local paths or `entity/project/run_id` API paths (results are skipped)."""
    return load(specs)[0]


def load(specs: list[str]) -> tuple[list[RunData], list[ResultRows]]:
    """Training runs and finetune results of local paths or `entity/project/run_id` API paths."""
    runs, results = [], []
    for spec in specs:
        path = Path(spec)
        if path.is_file() and path.name == RESULTS_FILE:
            results.append(read_results(path))
        elif path.is_dir():
            run_dirs, result_files = find_local(path)
            if not run_dirs and not result_files:
                raise RunReadError(f"{spec}: no training run ({METRICS_FILE}) or {RESULTS_FILE} under this path")
            runs += [read_run_dir(d) for d in run_dirs]
            results += [read_results(f) for f in result_files]
        elif spec.count("/") == 2 and not path.exists() and not Path(spec.split("/")[0]).exists():
            runs.append(read_api_run(spec))  # entity/project/run_id (a local folder of that name wins)
        elif not path.exists():
            raise RunReadError(f"{spec}: no such file or directory")
        else:
            raise RunReadError(f"{spec}: not a run directory, a {RESULTS_FILE} or a folder of them")
    return runs, results
