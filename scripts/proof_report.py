"""docs/results.md + docs/results.json from a proof run's outputs (scripts/proof.sh, stage report).

Reads the finetune results (DeepLoc LA/MLP/AT/majority, CNN per secondary-structure set), the
biLSTM's held-out cross-entropy, the layer choice, the CE-only ablation and the multitask run's
own evaluation; checks the issue-11 targets and says which were met. Nothing here is typed in:
every number comes from a file the run wrote, and a missing file is reported as missing.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
from pathlib import Path

EMBEDDERS = ("onehot", "bilstm", "multitask")
DEEPLOC_METHODS = ("la", "mlp", "at", "majority")
SS_SETS = ("cb513", "ts115", "casp12", "flip")


def load(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def rows_of(path: Path) -> list[dict]:
    data = load(path)
    return (data["rows"] if isinstance(data, dict) else data) or []


def seed_row(row: dict, seed: int) -> dict:
    """One seed's figures of a results row (the row of a one-seed run is that seed's)."""
    one = next((p for p in row.get("per_seed", []) if p.get("seed") == seed), None)
    return {"test_set": row.get("test_set"), **one} if one else row


def pm(row: dict | None, key: str, percent: bool = True) -> str:
    """'mean ± SE', accuracies in percent and MCCs as fractions ('–' when the metric does not exist)."""
    if not row or row.get(key) is None:
        return "–"
    se = row.get(f"{key}_se")
    if percent:
        return f"{100 * row[key]:.1f}" + (f" ± {100 * se:.1f}" if se is not None else "")
    return f"{row[key]:.3f}" + (f" ± {se:.3f}" if se is not None else "")


def table(header: list[str], rows: list[list]) -> list[str]:
    """Markdown table lines."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
           ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def present(section: dict, keys) -> list[tuple[str, str, dict]]:
    """(embedder, key, row) for every result of a section that exists, in table order."""
    return [(emb, key, section[emb][key]) for emb in EMBEDDERS for key in keys if section.get(emb, {}).get(key)]


def machine() -> dict:
    cpu = ""
    if Path("/proc/cpuinfo").is_file():
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else ""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    return {"cpus": os.cpu_count(), "cpu": cpu, "python": platform.python_version(), "commit": commit}


def curve(metrics_file: Path, key: str, points: int = 8) -> list[dict]:
    """A few evenly spaced (step, value) points of a run's training log: the learning curve."""
    if not metrics_file.is_file():
        return []
    log = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    log = list({r["step"]: r for r in log if key in r}.values())  # a resumed run logs some steps twice
    if not log:
        return []
    idx = sorted({round(i * (len(log) - 1) / max(points - 1, 1)) for i in range(points)})
    return [{"step": log[i]["step"], key: log[i][key]} for i in idx]


def stage_times(path: Path) -> list[dict]:
    """Seconds per stage, summed over the invocations of proof.sh (a resumed stage adds up)."""
    total: dict[str, int] = {}
    for line in path.read_text().splitlines() if path.is_file() else []:
        t = json.loads(line)
        total[t["stage"]] = total.get(t["stage"], 0) + t["seconds"]
    return [{"stage": k, "seconds": v} for k, v in total.items()]


def collect(proof: Path) -> dict:
    f = proof / "finetune"
    choice = load(f / "bilstm_choice.json") or {}
    chosen = choice.get("chosen", "bilstm")
    names = {"onehot": "onehot", "bilstm": chosen, "multitask": "multitask"}
    deeploc, ss = {}, {}
    for label, name in names.items():
        deeploc[label] = {r["method"]: r for r in rows_of(f / "deeploc" / name / "results.json")
                          + rows_of(f / "deeploc_la" / name / "results.json")}
        ss[label] = {r["test_set"]: r for r in rows_of(f / "ss" / name / "results.json")}
        if not ss[label] and label == "bilstm":  # only the layer-choice run finished: say so
            ss[label] = {r["test_set"]: {**r, "from_layer_choice": True}
                         for r in rows_of(f / "choose" / name / "results.json")}
    # the ablation: the main biLSTM (CE+KL) against the CE-only one, each CNN on seed 0 (the ablation's
    # only seed), the same MLP seeds
    ablation = {label: {"lm": load(f / f"lm_{run}.json"),
                        "ss": {r["test_set"]: seed_row(r, 0) for r in rows_of(f / "ss" / name / "results.json")},
                        "mlp": {r["method"]: r for r in rows_of(f / "deeploc" / name / "results.json")}.get("mlp"),
                        "steps": max((p["step"] for p in curve(proof / "ray" / run / "metrics.jsonl", "ce")), default=None)}
                for label, name, run in (("CE+KL", chosen, "bilstm"), ("CE only", "ablation_ce", "ablation_ce"))}
    corpus = load(proof / "data" / "corpus" / "manifest.json") or {}
    mt_eval = load(proof / "ray" / "multitask" / "eval.json") or {}
    return {
        "machine": machine(),
        "layer_choice": choice,
        "deeploc": deeploc,
        "ss": ss,
        "lm": {"bilstm": load(f / "lm_bilstm.json")},
        "ablation": ablation if ablation["CE only"]["lm"] else {},
        "corpus_with_pssm": (corpus["rows"] - corpus["without_pssm"]) if "without_pssm" in corpus else None,
        "corpus_rows": corpus.get("rows"),
        "multitask_heads": mt_eval.get("results", {}),
        "curves": {"biLSTM CE+KL, next-residue CE": curve(proof / "ray" / "bilstm" / "metrics.jsonl", "ce"),
                   "biLSTM CE+KL, KL to the PSSM": curve(proof / "ray" / "bilstm" / "metrics.jsonl", "kl"),
                   "biLSTM CE-only, next-residue CE": curve(proof / "ray" / "ablation_ce" / "metrics.jsonl", "ce"),
                   "multitask, total loss": curve(proof / "ray" / "multitask" / "metrics.jsonl", "loss"),
                   "multitask, ss3 CE": curve(proof / "ray" / "multitask" / "metrics.jsonl", "loss/ss3"),
                   "multitask, location CE": curve(proof / "ray" / "multitask" / "metrics.jsonl", "loss/location"),
                   "multitask, MLM CE": curve(proof / "ray" / "multitask" / "metrics.jsonl", "loss/mlm")},
        "timings": stage_times(proof / "timings.jsonl"),
    }


def targets(r: dict) -> list[dict]:
    """The issue-11 targets, each with its numbers and whether it was met (None: not measured)."""
    def get(section, embedder, key, metric):
        row = r[section].get(embedder, {}).get(key)
        return None if not row or row.get(metric) is None else row[metric]

    out = []

    def gap(name, a, b, need):
        diff = None if a is None or b is None else a - b
        out.append({"target": name, "value": diff, "threshold": need,
                    "met": None if diff is None else diff >= need})

    gap("multitask - one-hot, CB513 Q3 (CNN), points", *(None if v is None else 100 * v for v in (
        get("ss", "multitask", "cb513", "q3"), get("ss", "onehot", "cb513", "q3"))), 3.0)
    gap("multitask - one-hot, DeepLoc Q10 (LA), points", *(None if v is None else 100 * v for v in (
        get("deeploc", "multitask", "la", "q10"), get("deeploc", "onehot", "la", "q10"))), 2.0)
    gap("biLSTM - one-hot, CB513 Q3 (CNN), points (not below)", *(None if v is None else 100 * v for v in (
        get("ss", "bilstm", "cb513", "q3"), get("ss", "onehot", "cb513", "q3"))), 0.0)
    lm = r["lm"].get("bilstm") or {}
    below = None if "ce" not in lm else lm["unigram_ce"] - lm["ce"]
    out.append({"target": "unigram CE - biLSTM held-out CE (nats)", "value": below, "threshold": 0.0,
                "strict": True, "met": None if below is None else below > 0})
    return out


def markdown(r: dict, seeds: int, tiny: bool) -> str:
    m = r["machine"]
    lines = ["# Proof run: do the trained models beat one-hot?", "",
             "Regenerate with `make proof` (scripts/proof.sh, about 4 hours on 2 idle CPU cores). Every number "
             "below is read from the run's output files by scripts/proof_report.py.", "",
             f"Machine: {m['cpus']} CPUs ({m['cpu']}), Python {m['python']}, commit {m['commit']}. "
             f"Seeds per trained head: {seeds}. ± = bootstrap standard error (1000 resamples of the test "
             "proteins), averaged over seeds.", ""]
    if tiny:
        lines += ["**Tiny settings (PROOF_TINY=1): the bundled sample and a few steps. These numbers test the "
                  "pipeline, not the science.**", ""]
    lines += ["## Targets", "", "| target | value | needed | met |", "|---|---|---|---|"]
    for t in r["targets"]:
        v = "–" if t["value"] is None else f"{t['value']:+.2f}"
        met = {True: "yes", False: "**no**", None: "not measured"}[t["met"]]
        need = f"> {t['threshold']:g}" if t.get("strict") else f"≥ {t['threshold']:g}"
        lines.append(f"| {t['target']} | {v} | {need} | {met} |")
    lines += ["", "## DeepLoc test set (2768 proteins): localisation Q10 and MCC, membrane Q2", "",
              "Trained on deeploc_our_val_set.fasta (10% stratified hold-out for early stopping).", "",
              *table(["embedding", "method", "seeds", "Q10", "MCC", "membrane Q2"],
                     [[emb, method, row.get("seeds", "–"), pm(row, "q10"), pm(row, "mcc", False), pm(row, "membrane_q2")]
                      for emb, method, row in present(r["deeploc"], DEEPLOC_METHODS)])]
    lines += ["", "## Secondary structure and disorder: SeqVec CNN on frozen embeddings", "",
              "Trained on FLIP train (FLIP validation split for early stopping). Q8 shows – because no "
              "8-state training labels exist (FLIP is 3-state).", "",
              *table(["embedding", "test set", "seeds", "Q3", "Q8", "disorder MCC"],
                     [[emb, name, row.get("seeds", "–"), pm(row, "q3"), pm(row, "q8"), pm(row, "disorder_mcc", False)]
                      for emb, name, row in present(r["ss"], SS_SETS)])]
    if any(r.get("from_layer_choice") for r in r["ss"].get("bilstm", {}).values()):
        lines += ["", "biLSTM rows: from the layer-choice run (one seed, a shorter CNN training); the "
                  "evaluation run with all seeds has not finished."]
    lines += ["", "## biLSTM language model", ""]
    for name, lm in r["lm"].items():
        if lm:
            lines.append(f"- {name}: held-out CE {lm['ce']:.4f} nats (perplexity {lm['perplexity']:.2f}) on "
                         f"{lm['proteins']} DeepLoc test proteins; unigram baseline {lm['unigram_ce']:.4f} "
                         f"(perplexity {lm['unigram_perplexity']:.2f}); difference {lm['ce_minus_unigram']:+.4f}.")
    choice = r["layer_choice"]
    if choice:
        dims = choice.get("dim", {})
        rule = (f" among the variants of at most {choice['max_dim']} dimensions (wider ones cost LA dim^2 per "
                "residue)" if "max_dim" in choice else "")
        lines += ["", f"Layer combination, chosen by the CNN's FLIP validation loss (one seed){rule}: "
                  f"**{choice['chosen']}** (" + ", ".join(
                      f"{k} {v:.4f}" + (f" at {dims[k]} dimensions" if k in dims else "")
                      for k, v in choice["validation_loss"].items()) + ")."]
        lines += [f"Not measured: {k}: {why}." for k, why in choice.get("not_measured", {}).items()]
    if r["ablation"]:
        a = r["ablation"]
        steps = {label: x["steps"] for label, x in a.items()}
        lines += ["", "### Does the PSSM term help? CE+KL vs CE-only (PEvoLM's question)", "",
                  "The main biLSTM (CE+KL) and a CE-only biLSTM with the same config, corpus and seed "
                  f"({steps['CE+KL']} and {steps['CE only']} steps), evaluated the same way: held-out CE on the "
                  "DeepLoc test proteins, the CNN on the chosen layers (seed 0 of each), the DeepLoc MLP."]
        if r.get("corpus_with_pssm") is not None:
            lines += [f"Training proteins with a PSSM (real, else MMseqs2-made): {r['corpus_with_pssm']} of "
                      f"{r['corpus_rows']}."]
        lines += ["", *table(["model", "held-out CE", "CB513 Q3", "TS115 Q3", "CASP12 Q3", "DeepLoc Q10 (MLP)"],
                             [[label, f"{x['lm']['ce']:.4f}" if x["lm"] else "–",
                               *(pm(x["ss"].get(s), "q3") for s in ("cb513", "ts115", "casp12")), pm(x["mlp"], "q10")]
                              for label, x in a.items()])]
        lines += ["", "Training curves side by side: `ops.compare` output in the run's finetune/compare_ce_kl/."]
    if r["multitask_heads"]:
        keys = ("q3", "q8", "disorder_mcc", "q10", "q2")
        lines += ["", "## The multitask encoder's own heads (whole proteins)", "",
                  *table(["set", "Q3", "Q8", "disorder MCC", "Q10", "Q2"],
                         [[name] + [pm(row, k, k != "disorder_mcc") for k in keys]
                          for name, row in r["multitask_heads"].items()])]
    lines += ["", "## Learning curves (training loss at evenly spaced logged steps)", ""]
    for name, points in r["curves"].items():
        if points:
            key = [k for k in points[0] if k != "step"][0]
            lines.append(f"- {name}: " + ", ".join(f"step {p['step']}: {p[key]:.3f}" for p in points))
    if r["timings"]:
        lines += ["", "## Time per stage", "",
                  *table(["stage", "minutes"], [[t["stage"], f"{t['seconds'] / 60:.1f}"] for t in r["timings"]])]
    notes = Path(__file__).resolve().parents[1] / "docs" / "results_discussion.md"
    if notes.is_file() and not tiny:
        lines += ["", notes.read_text().strip()]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proof", required=True, type=Path, help="the proof run's output dir (PROOF_OUT)")
    parser.add_argument("--out", required=True, help="path prefix: writes PREFIX.md and PREFIX.json")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()
    results = collect(args.proof)
    results["targets"] = targets(results)
    results.update(seeds=args.seeds, tiny=args.tiny)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    Path(f"{args.out}.md").write_text(markdown(results, args.seeds, args.tiny))
    print(f"[proof] {args.out}.md and {args.out}.json")
    for t in results["targets"]:
        print(f"[proof] target {t['target']}: {t['value']} (needed >= {t['threshold']}): met={t['met']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
