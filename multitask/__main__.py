"""Command line: `python -m multitask {train,eval,export} ...`.

  train  --config YAML [--set key=value ...] [--no-ray] [--export DIR] [--no-eval]
  eval   --run RUN_OR_CHECKPOINT [--config YAML] [--set ...] [--out DIR]
  export --run RUN_OR_CHECKPOINT --out DIR [--layers -1 -2 ...] [--mix mean|concat]

User errors (bad config key, missing shards, no checkpoint) print one line and exit 2.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

from engine.checkpoint import CheckpointError, export, resolve_checkpoint
from engine.config import ConfigError, add_override_args, from_dict, print_resolved
from engine.errors import run_cli
from engine.logs import result

from .config import EvalConfig, MultitaskConfig, load
from .embed import load_model
from .evaluate import eval_sets, evaluate, markdown_table, write_report

log = logging.getLogger("multitask")


def train(cfg: MultitaskConfig, use_ray: bool = True, final_eval: bool = True) -> dict:
    """Train (under Ray Train unless use_ray=False), then evaluate the last checkpoint on the test
    sets (eval.json / eval.md in the run directory). Returns the last metrics plus paths."""
    from .task import MultitaskTask, prepare, run_dir

    cfg = prepare(cfg)
    from engine.launch import train_task
    metrics = train_task(MultitaskTask, cfg, local=not use_ray)
    out = dict(metrics, run_dir=str(run_dir(cfg)))
    if final_eval:
        out["eval"] = evaluate_checkpoint(run_dir(cfg), cfg.eval, out_dir=run_dir(cfg))
    return out


def evaluate_checkpoint(path: str | Path, eval_cfg: EvalConfig | None = None, out_dir: str | Path | None = None) -> dict:
    """Whole-protein evaluation of a run's latest checkpoint (or a checkpoint / export dir)."""
    path = Path(path)
    ckpt = path if (path / "model.safetensors").is_file() else resolve_checkpoint(path)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, config = load_model(ckpt, device)
    if eval_cfg is None:
        saved = config.get("train", {}).get("config", {}).get("eval")
        if saved is None:
            raise ConfigError(f"{ckpt}/config.json: has no eval section; pass --config")
        eval_cfg = from_dict(EvalConfig, saved, f"{ckpt}/config.json", "eval.")
    sets = eval_sets(eval_cfg.ss_test or None, eval_cfg.deeploc_test or None)
    if not sets:
        raise ConfigError("eval.ss_test / eval.deeploc_test: both empty, nothing to evaluate")
    start = time.perf_counter()
    results = evaluate(model, sets, device, eval_cfg.residues_per_batch, eval_cfg.protein_max_length)
    from .task import trained_ss8
    sources = config.get("train", {}).get("config", {}).get("mixture", {}).get("sources", [])
    untrained = [] if not sources or trained_ss8([s["path"] for s in sources]) else ["ss8"]
    for r in results.values():
        for key in ("q8", "n_ss8") if untrained else ():
            r.pop(key, None)
    extra = {"checkpoint": str(ckpt), "step": config.get("train", {}).get("step"), "untrained_heads": untrained,
             "protein_max_length": eval_cfg.protein_max_length,
             "seconds": round(time.perf_counter() - start, 1)}
    json_path, md_path = write_report(results, out_dir or (ckpt if path == ckpt else path), extra)
    result(markdown_table(results))
    log.info(f"evaluation written to {json_path} and {md_path}")
    return results


def export_run(path: str | Path, out: str | Path, layers: list[int] | None = None, mix: str | None = None) -> Path:
    """Consolidated export of a run's latest checkpoint; optionally set the embedding layer mix."""
    out = export(path, out)
    cfg_path = out / "config.json"
    config = json.loads(cfg_path.read_text())
    if config.get("kind") != "encoder":
        raise CheckpointError(f"{cfg_path}: kind {config.get('kind')!r} is not a multitask encoder")
    if layers is not None or mix is not None:
        emb = config.setdefault("embedding", {})
        if layers is not None:
            emb["layers"] = layers
        if mix is not None:
            emb["mix"] = mix
        cfg_path.write_text(json.dumps(config, indent=2) + "\n")
    from .embed import load_embedder
    load_embedder(out)  # proves the export loads (and the layer choice is valid) before we say so
    log.info(f"exported {out}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m multitask", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train the encoder with MLM + supervised heads")
    t.add_argument("--config", required=True, help="YAML config (multitask/configs/*.yaml)")
    add_override_args(t)
    t.add_argument("--no-ray", action="store_true", help="train in this process without Ray (debugging)")
    t.add_argument("--no-eval", action="store_true", help="skip the final test-set evaluation")
    t.add_argument("--export", metavar="DIR", help="also export the final model to DIR")
    e = sub.add_parser("eval", help="evaluate a run / checkpoint / export on the test sets")
    e.add_argument("--run", required=True, help="run directory (<storage_path>/<name>), checkpoint or export directory")
    e.add_argument("--config", help="take the eval section from this YAML instead of the checkpoint's config")
    add_override_args(e)
    e.add_argument("--out", help="where eval.json / eval.md go (default: the run directory)")
    x = sub.add_parser("export", help="consolidated weights + config + tokenizer for finetune")
    x.add_argument("--run", required=True, help="run directory (<storage_path>/<name>) or one checkpoint directory")
    x.add_argument("--out", required=True, help="export directory")
    x.add_argument("--layers", type=int, nargs="+", help="hidden states to embed with (0 = embeddings, -1 = last)")
    x.add_argument("--mix", choices=["mean", "concat"], help="how several layers combine")
    args = p.parse_args(argv)
    def body():
        if args.command in ("train", "eval") and args.dry_run:
            if not args.config:
                raise ConfigError("--dry-run needs --config (the eval section is otherwise read from the checkpoint)")
            print_resolved(load(args.config, args.set))
            return 0
        if args.command == "train":
            cfg = load(args.config, args.set)
            run = train(cfg, use_ray=not args.no_ray, final_eval=not args.no_eval)
            log.info(f"run directory {run['run_dir']}")
            if args.export:
                export_run(run["run_dir"], args.export)
        elif args.command == "eval":
            eval_cfg = load(args.config, args.set).eval if args.config else None
            evaluate_checkpoint(args.run, eval_cfg, args.out)
        else:
            export_run(args.run, args.out, args.layers, args.mix)

    return run_cli(body, "multitask")

if __name__ == "__main__":
    sys.exit(main())
