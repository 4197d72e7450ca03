"""Compare runs side by side: like with like, as tables and plots a person reads.

    python -m ops.compare RUN_OR_DIR... --out DIR [--metrics ce,loss] [--x step|residues]

Arguments are training run directories (<storage_path>/<name>, with metrics.jsonl), finetune
results (results.json or its dir), folders holding either, or `entity/project/run_id` paths read
through the W&B API (online runs; needs WANDB_API_KEY). ops/runs.py says what is read.

Training runs are compared within their kind only (a biLSTM with a biLSTM, never with the
encoder; an LA head with LA heads): per kind one figure with a panel per metric, and a table of each metric's last and
best value plus the config keys whose values differ. Finetune results become bar charts, a panel
per metric, one bar per embedder and method with the bootstrap standard error as its error bar.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from pathlib import Path

from engine.errors import run_cli
from engine.tracking import metric_goal

from .runs import ResultRows, RunData, load

# Bookkeeping keys that are never default curves (their goal is "last" anyway, except these).
NOT_CURVES = {"best_eval_loss", "best_step", "best_epoch", "evals_since_best"}
MAX_PANELS = 9
# Downstream metrics as bars: (key, label); the standard error is `<key>_se`.
RESULT_METRICS = (("q10", "Q10"), ("mcc", "MCC (location)"), ("membrane_q2", "membrane Q2"),
                  ("membrane_mcc", "membrane MCC"), ("q3", "Q3"), ("q8", "Q8"),
                  ("disorder_mcc", "disorder MCC"))


def _fmt(value, width: int = 48) -> str:
    """A table cell: 4 significant digits; long values (paths, lists) keep their end."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    text = str(value)
    return text if len(text) <= width else "…" + text[-(width - 1):]


def labels(runs: list[RunData]) -> list[str]:
    """Run names, or where two runs share a name, their paths below the runs' common folder."""
    names = [r.name for r in runs]
    if len(set(names)) == len(names):
        return names
    common = os.path.commonpath([r.source for r in runs]) if all(r.source for r in runs) else ""
    return [os.path.relpath(r.source, common) if names.count(r.name) > 1 and common else r.name for r in runs]


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(runs: list[RunData]) -> dict[str, list]:
    """Config keys (flattened with '.') whose values differ between the runs; keys that only
    name the run itself (storage paths, commit) are left out."""
    flats = [_flat(r.config) for r in runs]
    keys = sorted(set().union(*flats)) if flats else []
    same = lambda k: len({json.dumps(f.get(k), sort_keys=True, default=str) for f in flats}) == 1  # noqa: E731
    return {k: [f.get(k) for f in flats] for k in keys
            if not same(k) and k not in {"ray.name", "ray.storage_path", "wandb.dir", "git_commit"}}


def kind(run: RunData) -> str:
    """What a run trains: its job type, plus the head for finetune runs (LA, MLP, CNN)."""
    model = run.config.get("model")
    head = model.get("head") if isinstance(model, dict) else None
    return " ".join(filter(None, [run.job_type or "run", head]))


def by_kind(runs: list[RunData]) -> dict[str, list[RunData]]:
    groups: dict[str, list[RunData]] = {}
    for run in runs:
        groups.setdefault(kind(run), []).append(run)
    return groups


def default_metrics(runs: list[RunData]) -> list[str]:
    """Losses and accuracies (metrics with a goal) that every run of the group logs: the total
    loss first (unless the runs' loss weights differ), then held-out metrics, at most MAX_PANELS
    (--metrics picks others)."""
    common = set.intersection(*(set(r.metric_keys()) for r in runs))
    keys = [k for k in common if metric_goal(k) != "last" and k not in NOT_CURVES]
    if len({json.dumps(r.config.get("loss"), sort_keys=True, default=str) for r in runs}) > 1:
        keys = [k for k in keys if k not in ("loss", "joint")]  # different objectives: totals are not comparable
    order = lambda k: (k not in ("loss", "joint"), "eval" not in k and "valid" not in k, "/" in k, k)  # noqa: E731
    return sorted(keys, key=order)[:MAX_PANELS]


def group_table(runs: list[RunData], metrics: list[str]) -> dict:
    rows = []
    for run, label in zip(runs, labels(runs)):
        row = {"run": label, "group": run.group, "source": run.source,
               "steps": int(run.history[-1].get("step", len(run.history))) if run.history else 0}
        for m in metrics:
            _, ys = run.series(m)
            best = (min if metric_goal(m) == "min" else max)(ys) if ys else None
            row[m] = {"last": ys[-1], "best": best} if ys else None
        rows.append(row)
    return {"metrics": metrics, "runs": rows, "config_differences": config_differences(runs)}


def result_rows(results: list[ResultRows]) -> list[dict]:
    """Rows of every results file, each once (merged tables repeat their inputs' rows). Rows of
    different experiments that share an embedder, method and test set are told apart by the
    results file's folder."""
    seen, rows, where = set(), [], {}
    for res in results:
        for row in res.rows:
            text = json.dumps(row, sort_keys=True, default=str)
            if text not in seen:
                seen.add(text)
                rows.append(dict(row))
                key = (row.get("embedder", ""), row["method"], row.get("test_set", ""))
                where.setdefault(key, []).append((rows[-1], Path(res.source).parent))
    for entries in where.values():
        if len(entries) > 1:
            common = os.path.commonpath([str(d) for _, d in entries])
            for row, folder in entries:
                row["embedder"] = f"{row.get('embedder', '')} ({os.path.relpath(folder, common)})"
    return rows


def comparison(runs: list[RunData], results: list[ResultRows], metrics: list[str] | None = None) -> dict:
    groups = {}
    for name, members in by_kind(runs).items():
        chosen = [m for m in metrics if any(r.series(m)[1] for r in members)] if metrics else default_metrics(members)
        groups[name] = group_table(members, chosen)
    rows = result_rows(results)
    shown = [(k, label) for k, label in RESULT_METRICS if any(r.get(k) is not None for r in rows)]
    return {"training": groups, "results": [_result_cells(r, shown) for r in rows],
            "result_metrics": [k for k, _ in shown]}


def _result_cells(row: dict, shown) -> dict:
    cells = {"embedder": row.get("embedder", ""), "method": row["method"], "test_set": row.get("test_set", ""),
             "seeds": row.get("seeds", 1)}
    for key, _ in shown:
        cells[key] = row.get(key)
        cells[f"{key}_se"] = row.get(f"{key}_se")
    return cells


def to_markdown(table: dict, plots: dict[str, str]) -> str:
    lines = ["# Run comparison", ""]
    for name, group in table["training"].items():
        lines += [f"## Training runs: {name}", ""]
        head = ["run", "steps"] + [f"{m} (last / best)" for m in group["metrics"]]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row in group["runs"]:
            cells = [row["run"], str(row["steps"])]
            cells += ["–" if row[m] is None else f"{_fmt(row[m]['last'])} / {_fmt(row[m]['best'])}"
                      for m in group["metrics"]]
            lines.append("| " + " | ".join(cells) + " |")
        diffs = group["config_differences"]
        if len(group["runs"]) > 1:
            lines += ["", "Config keys that differ:" if diffs else "No config key differs.", ""]
        if diffs:
            names = [r["run"] for r in group["runs"]]
            lines += ["| key | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
            lines += [f"| {k} | " + " | ".join(_fmt(v) for v in values) + " |" for k, values in diffs.items()]
        if name in plots:
            lines += ["", f"![{name} curves]({plots[name]})"]
        lines.append("")
    if table["results"]:
        keys = table["result_metrics"]
        lines += ["## Downstream results (± bootstrap standard error)", ""]
        head = ["embedder", "method", "test set"] + keys
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row in table["results"]:
            cells = [row["embedder"], row["method"], row["test_set"] or "–"]
            cells += [_fmt(row[k]) + (f" ± {_fmt(row[k + '_se'])}" if row.get(k + "_se") is not None else "")
                      for k in keys]
            lines.append("| " + " | ".join(cells) + " |")
        if "results" in plots:
            lines += ["", f"![downstream results]({plots['results']})"]
        lines.append("")
    return "\n".join(lines)


def _figure(panels: int, width: float = 4.2, height: float = 3.2):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(panels, 3)
    rows = math.ceil(panels / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.flat[panels:]:
        ax.set_visible(False)
    return plt, fig, list(axes.flat)


def plot_curves(runs: list[RunData], metrics: list[str], path: Path, x_key: str, title: str) -> Path | None:
    """One panel per metric, a line per run, x = optimizer step (or residues seen)."""
    if not metrics:
        return None
    plt, fig, axes = _figure(len(metrics))
    for ax, metric in zip(axes, metrics):
        for run, label in zip(runs, labels(runs)):
            xs, ys = run.series(metric, x_key)
            if ys:
                ax.plot(xs, ys, label=label, marker="." if len(ys) < 30 else None)
        ax.set_title(metric)
        ax.set_xlabel("residues seen" if x_key == "residues" else x_key)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_results(rows: list[dict], keys: list[str], path: Path) -> Path | None:
    """One panel per metric; bars grouped by embedder, one colour per method (and test set)."""
    if not rows or not keys:
        return None
    labels = dict(RESULT_METRICS)
    plt, fig, axes = _figure(len(keys))
    for ax, key in zip(axes, keys):
        have = [r for r in rows if r.get(key) is not None]
        embedders = list(dict.fromkeys(r["embedder"] for r in have))
        series = list(dict.fromkeys((r["method"], r["test_set"]) for r in have))
        width = 0.8 / max(len(series), 1)
        for i, (method, test_set) in enumerate(series):
            pick = {r["embedder"]: r for r in have if (r["method"], r["test_set"]) == (method, test_set)}
            xs = [j + (i - (len(series) - 1) / 2) * width for j, e in enumerate(embedders) if e in pick]
            ys = [pick[e][key] for e in embedders if e in pick]
            errs = [pick[e].get(f"{key}_se") or 0.0 for e in embedders if e in pick]
            ax.bar(xs, ys, width, yerr=errs, capsize=3, label=f"{method} {test_set}".strip())
        ax.set_xticks(range(len(embedders)), embedders, rotation=20, ha="right", fontsize=8)
        ax.set_title(labels.get(key, key))
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize="x-small")
    fig.suptitle("downstream metrics (error bars: ± bootstrap SE)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def run(args) -> int:
    runs, results = load(args.runs)
    metrics = [m for m in args.metrics.split(",") if m] or None
    table = comparison(runs, results, metrics)
    args.out.mkdir(parents=True, exist_ok=True)
    plots = {}
    groups = by_kind(runs)
    for name, group in table["training"].items():
        path = plot_curves(groups[name], group["metrics"], args.out / f"curves_{_slug(name)}.png", args.x,
                           f"{name} runs")
        if path:
            plots[name] = path.name
    path = plot_results(table["results"], table["result_metrics"], args.out / "results.png")
    if path:
        plots["results"] = path.name
    (args.out / "comparison.md").write_text(to_markdown(table, plots))
    (args.out / "comparison.json").write_text(json.dumps(table, indent=2, default=str) + "\n")
    shown = "; ".join(f"{k}: {', '.join(r['run'] for r in g['runs'])}" for k, g in table["training"].items())
    print(f"compared {len(runs)} training runs ({shown or 'none'}) and {len(table['results'])} result rows: "
          f"{args.out / 'comparison.md'}, plots {', '.join(plots.values()) or 'none'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.compare", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run dirs, results.json (dirs), folders of them, or entity/project/run_id")
    parser.add_argument("--out", required=True, type=Path, help="output folder: comparison.md/.json and PNGs")
    parser.add_argument("--metrics", default="",
                        help="comma-separated metrics to plot (default: the losses and accuracies every run logs)")
    parser.add_argument("--x", default="step", choices=["step", "residues"], help="x axis of the curves")
    args = parser.parse_args(argv)
    return run_cli(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
