"""Side-by-side comparison of W&B runs: a Markdown/JSON table and PNG plots.

    python -m ops.compare RUN_OR_DIR... --out DIR [--metrics train/loss,eval/q3] [--x _step]

Each argument is an offline run directory, a folder holding runs (e.g. a `wandb/` dir), or an
`entity/project/run_id` path read through the W&B API (needs WANDB_API_KEY).
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

from .wandb_runs import RunData, RunReadError, load_runs


def _fmt(value) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def config_differences(runs: list[RunData]) -> dict[str, list]:
    """Config keys whose values are not the same in every run (flattened with '.')."""
    def flat(d, prefix=""):
        out = {}
        for k, v in d.items():
            if isinstance(v, dict):
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[f"{prefix}{k}"] = v
        return out

    flats = [flat(r.config) for r in runs]
    keys = sorted(set().union(*flats)) if flats else []
    return {k: [f.get(k) for f in flats] for k in keys
            if len({json.dumps(f.get(k), sort_keys=True, default=str) for f in flats}) > 1}


def comparison(runs: list[RunData], metrics: list[str] | None = None) -> dict:
    metrics = metrics or sorted(set().union(*(r.metric_keys() for r in runs)))
    rows = []
    for run in runs:
        row = {"run": run.name, "id": run.run_id, "group": run.group, "steps": len(run.history)}
        for m in metrics:
            _, ys = run.series(m)
            row[m] = {"last": ys[-1], "min": min(ys), "max": max(ys)} if ys else None
        rows.append(row)
    history_keys = set(metrics)
    summary_keys = sorted({k for r in runs for k, v in r.summary.items()
                           if k not in history_keys and isinstance(v, (int, float))})
    return {"metrics": metrics, "runs": rows,
            "summary": {r.name: {k: r.summary.get(k) for k in summary_keys} for r in runs},
            "summary_keys": summary_keys, "config_differences": config_differences(runs)}


def to_markdown(table: dict) -> str:
    lines = ["# Run comparison", ""]
    head = ["run", "group", "logged steps"] + [f"{m} (last / min)" for m in table["metrics"]]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table["runs"]:
        cells = [row["run"], row["group"] or "-", str(row["steps"])]
        for m in table["metrics"]:
            v = row[m]
            cells.append("-" if v is None else f"{_fmt(v['last'])} / {_fmt(v['min'])}")
        lines.append("| " + " | ".join(cells) + " |")
    if table["summary_keys"]:
        lines += ["", "## Final metrics (run summary)", ""]
        head = ["run"] + table["summary_keys"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for name, values in table["summary"].items():
            lines.append("| " + " | ".join([name] + [_fmt(values[k]) if values[k] is not None else "-"
                                                     for k in table["summary_keys"]]) + " |")
    if table["config_differences"]:
        lines += ["", "## Config differences", ""]
        names = [r["run"] for r in table["runs"]]
        lines += ["| key | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
        for key, values in table["config_differences"].items():
            lines.append(f"| {key} | " + " | ".join(_fmt(v) for v in values) + " |")
    return "\n".join(lines) + "\n"


def plot_curves(runs: list[RunData], metrics: list[str], out: Path, x_key: str) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for metric in metrics:
        fig, ax = plt.subplots(figsize=(6, 4))
        drawn = 0
        for run in runs:
            xs, ys = run.series(metric, x_key)
            if ys:
                ax.plot(xs, ys, label=run.name, marker="." if len(ys) < 30 else None)
                drawn += 1
        if drawn:
            ax.set_xlabel(x_key)
            ax.set_ylabel(metric)
            ax.set_title(metric)
            ax.legend(fontsize="small")
            fig.tight_layout()
            path = out / f"curve_{re.sub(r'[^A-Za-z0-9_.-]+', '_', metric)}.png"
            fig.savefig(path, dpi=100)
            paths.append(path)
        plt.close(fig)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.compare", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run dirs, folders of runs, or entity/project/run_id")
    parser.add_argument("--out", required=True, type=Path, help="output folder for comparison.md/.json and PNGs")
    parser.add_argument("--metrics", default="", help="comma-separated history keys (default: all numeric)")
    parser.add_argument("--x", default="_step", help="history key for the x axis (default _step)")
    args = parser.parse_args(argv)
    try:
        runs = load_runs(args.runs)
    except (RunReadError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    metrics = [m for m in args.metrics.split(",") if m] or None
    table = comparison(runs, metrics)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "comparison.md").write_text(to_markdown(table))
    (args.out / "comparison.json").write_text(json.dumps(table, indent=2, default=str) + "\n")
    plots = plot_curves(runs, table["metrics"], args.out, args.x)
    print(f"compared {len(runs)} runs: {args.out / 'comparison.md'} and {len(plots)} plots")
    return 0


if __name__ == "__main__":
    sys.exit(main())
