"""Evaluation on the test sets: Q3/Q8 and disorder MCC per secondary-structure set (CB513, TS115,
CASP12, FLIP test), Q10 and Q2 on the DeepLoc test set. Whole proteins, no cropping, no masking.
Results go to `eval.json` and `eval.md` in the run directory.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from engine.batching import pack_batches

from .data import ProteinSet, collate, get_example, load_proteins
from .metrics import Confusion, summarize

SS_ORDER = ("cb513", "ts115", "casp12", "flip")


def eval_sets(ss_test: str | Path | None, deeploc_test: str | Path | None) -> dict[str, ProteinSet]:
    """Named evaluation sets: one per `dataset` value of the ss test shard, plus `deeploc`."""
    sets: dict[str, ProteinSet] = {}
    if ss_test:
        ps = load_proteins(ss_test)
        names = ps.dataset if ps.dataset is not None else np.full(len(ps), ps.name, dtype=object)
        rows_test = ps.split == "test" if ps.split is not None else np.ones(len(ps), bool)
        for name in sorted(set(names[rows_test]), key=lambda n: (SS_ORDER + (n,)).index(n)):
            sets[name] = ps.subset(np.flatnonzero((names == name) & rows_test), name=name)
    if deeploc_test:
        ps = load_proteins(deeploc_test)
        rows = np.flatnonzero(ps.split == "test") if ps.split is not None else np.arange(len(ps))
        sets["deeploc"] = ps.subset(rows, name="deeploc")
    return sets


def length_batches(lengths: np.ndarray, residue_budget: int) -> list[np.ndarray]:
    """Rows grouped by length so that rows * longest <= budget (a long protein goes alone): the
    engine's packer without length noise."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(lengths) == 0:
        return []
    return pack_batches(lengths, max(residue_budget, int(lengths.max())), len(lengths), 1.0, np.random.default_rng(0))


@torch.no_grad()
def evaluate_set(model, ps: ProteinSet, device="cpu", residue_budget: int = 16384,
                 protein_max_length: int = 0) -> dict[str, float]:
    """Metrics of one set. Whole proteins, except that per-protein sets (DeepLoc) may be cut to
    their first + last halves of `protein_max_length` residues (the DBMTL crop; 0 = whole)."""
    model.eval()
    crop = protein_max_length if protein_max_length and ps.kind == "deeploc" else None
    lengths = np.minimum(ps.lengths, crop) if crop else ps.lengths
    conf = {"ss3": Confusion(3), "ss8": Confusion(8), "disorder": Confusion(2),
            "location": Confusion(10), "membrane": Confusion(2)}
    for rows in length_batches(lengths, residue_budget):
        batch = collate([get_example(ps, int(r), crop, "ends") for r in rows])
        batch = {k: v.to(device) for k, v in batch.items()}
        out = model(batch["tokens"], batch["lengths"])
        counted = batch["eval_mask"] != 0  # -1 (no mask column) counts, 0 excluded
        conf["ss3"].update(out["ss3"].argmax(-1), batch["ss3"], counted)
        conf["ss8"].update(out["ss8"].argmax(-1), batch["ss8"], counted)
        conf["disorder"].update((out["disorder"] > 0).long(), batch["disorder"])
        conf["location"].update(out["location"].argmax(-1), batch["location"])
        conf["membrane"].update((out["membrane"] > 0).long(), batch["membrane"])
    return {"proteins": len(ps), **summarize(conf)}


def evaluate(model, sets: dict[str, ProteinSet], device="cpu", residue_budget: int = 16384,
             protein_max_length: int = 0) -> dict[str, dict]:
    was_training = model.training
    results = {name: evaluate_set(model, ps, device, residue_budget, protein_max_length) for name, ps in sets.items()}
    model.train(was_training)
    return results


COLUMNS = [("q3", "Q3"), ("q8", "Q8"), ("disorder_mcc", "disorder MCC"), ("q10", "Q10"), ("q2", "Q2")]


def markdown_table(results: dict[str, dict]) -> str:
    head = "| set | proteins | " + " | ".join(t for _, t in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 2)]
    for name, r in results.items():
        cells = [f"{r[k]:.3f}" if k in r else "–" for k, _ in COLUMNS]
        lines.append(f"| {name} | {r['proteins']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(results: dict[str, dict], run_dir: str | Path, extra: dict | None = None) -> tuple[Path, Path]:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    js, md = run_dir / "eval.json", run_dir / "eval.md"
    js.write_text(json.dumps({"results": results, **(extra or {})}, indent=2) + "\n")
    md.write_text("# Multitask evaluation\n\n" + markdown_table(results))
    return js, md
