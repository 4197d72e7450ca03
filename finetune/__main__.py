"""`python -m finetune embed | deeploc | ss | table` (docs/finetune.md)."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path

from engine.errors import run_cli
from engine.logs import result
from engine.ray_env import ensure_ray

from .errors import FinetuneError

log = logging.getLogger("finetune")


def _config(args):
    from .config import load_config

    cfg = load_config(args.config, args.set or ())
    data = {k: getattr(args, k) for k in ("train", "valid", "test") if getattr(args, k, None)}
    train = {"max_epochs": args.epochs} if args.epochs is not None else {}
    if args.seeds is not None:
        train["seeds"] = args.seeds
    ray = {"num_workers": args.num_workers} if args.num_workers is not None else {}
    return replace(cfg, data=replace(cfg.data, **data), train=replace(cfg.train, **train), ray=replace(cfg.ray, **ray))


def _init_ray(num_cpus: int | None):
    import ray

    if not ray.is_initialized():
        ensure_ray(num_cpus)  # heads train on Ray Train workers: their progress lines come through
        from ray.data import DataContext
        ctx = DataContext.get_current()
        ctx.enable_progress_bars = True  # Ray Data's own progress for extraction (engine.logs shows it)
        ctx.print_on_execution_start = False


def cmd_embed(args) -> None:
    from .config import EmbedConfig, load_config
    from .extract import run_embed

    cfg = load_config(args.config).embed if args.config else EmbedConfig()
    if args.num_actors:
        cfg = replace(cfg, num_actors=args.num_actors)
    if len(args.data) > 1 and args.hdf5:
        raise FinetuneError("--hdf5 takes one --data directory")
    if not args.local:
        _init_ray(args.num_cpus)
    # several shard dirs share one Ray start; each goes to OUT/<its name>
    outs = [args.out] if len(args.data) == 1 else [str(Path(args.out) / Path(d).name) for d in args.data]
    for data, out in zip(args.data, outs):
        manifest = run_embed(args.model, data, out, cfg, hdf5=args.hdf5, use_ray=not args.local)
        log.info(f"embedded {manifest['rows']} proteins ({manifest['residues']} residues, dim {manifest['dim']}, "
                 f"{manifest['chunked']} chunked) with {manifest['model']} in {manifest['seconds']}s -> {out}")
        result(json.dumps({"out": out, **{k: manifest.get(k) for k in ("rows", "residues", "dim", "chunked", "seconds")}}))


def _finish(rows, args, cfg, per_residue: bool):
    from engine.config import to_dict
    from .report import log_results, write_results

    name = args.name or Path(args.out).name
    text = write_results(rows, args.out, f"{'Per-residue' if per_residue else 'DeepLoc'} results: {name}", per_residue)
    if not args.no_wandb:
        mode = log_results(rows, {**to_dict(cfg), "embedder": name}, cfg.wandb, name=f"{name}-results",
                           group=args.group, out=args.out)
        log.info(f"W&B results run logged ({mode})")
    result(text)


def _prepare(args):
    cfg = _config(args)
    if args.no_wandb:
        cfg = replace(cfg, wandb=replace(cfg.wandb, mode="disabled"))
    cfg = replace(cfg, wandb=replace(cfg.wandb, group=args.group or cfg.wandb.group))
    if not args.local:
        _init_ray(args.num_cpus)
    return cfg


def cmd_deeploc(args) -> None:
    from .experiment import run_protein

    cfg = _prepare(args)
    rows = run_protein(cfg, args.out, args.name or Path(args.out).name, tuple(args.methods.split(",")), local=args.local)
    _finish(rows, args, cfg, per_residue=False)


def cmd_ss(args) -> None:
    from .experiment import run_residue

    cfg = _prepare(args)
    rows = run_residue(cfg, args.out, args.name or Path(args.out).name, local=args.local)
    _finish(rows, args, cfg, per_residue=True)


def cmd_table(args) -> None:
    from .report import write_results

    rows = []
    for path in args.results:
        p = Path(path)
        p = p / "results.json" if p.is_dir() else p
        if not p.is_file():
            raise FinetuneError(f"{p}: results file not found")
        rows += json.loads(p.read_text())
    methods = args.methods.split(",") if args.methods else None
    if methods:
        rows = sorted((r for r in rows if r["method"] in methods), key=lambda r: methods.index(r["method"]))
    per_residue = bool(rows) and "test_set" in rows[0]
    result(write_results(rows, args.out, args.title, per_residue, notes=args.notes or ""))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m finetune", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("embed", help="per-residue + pooled embeddings of a shard dir")
    p.add_argument("--model", required=True, help="'onehot' or an exported model dir (config.json kind bilstm|encoder)")
    p.add_argument("--data", required=True, nargs="+", help="data_prep shard dir(s) (need a tokens column)")
    p.add_argument("--out", required=True, help="output embedding shard dir (with several --data: OUT/<name of each>)")
    p.add_argument("--hdf5", help="also write the per-residue HDF5 file (one dataset per protein id; "
                   "OUT/reduced_embeddings_file.h5, one per-protein vector per id, is always written)")
    p.add_argument("--config", help="YAML whose `embed:` section sets batching, chunking, actors")
    p.add_argument("--num-actors", type=int, help="Ray Data actor pool size (overrides the config)")
    p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray started here")
    p.add_argument("--local", action="store_true", help="embed in this process, without Ray")
    p.set_defaults(func=cmd_embed)

    for name, helptext, func in (("deeploc", "LA, MLP, annotation transfer, majority on DeepLoc embeddings", cmd_deeploc),
                                 ("ss", "per-residue CNN (ss3, ss8, disorder) on secondary-structure embeddings", cmd_ss)):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--config", help="experiment YAML (finetune/configs/*.yaml)")
        p.add_argument("--train", help="training embedding dir (overrides data.train)")
        p.add_argument("--valid", help="validation embedding dir (else data.holdout_fraction of train)")
        p.add_argument("--test", help="test embedding dir (evaluation only)")
        p.add_argument("--out", required=True, help="results dir: results.md/json, models, confusion PNGs")
        p.add_argument("--name", help="embedder name shown in tables (default: the out dir's name)")
        p.add_argument("--epochs", type=int, help="overrides train.max_epochs")
        p.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], help="e.g. 0,1,2")
        p.add_argument("--num-workers", type=int, help="Ray Train workers (overrides ray.num_workers)")
        p.add_argument("--local", action="store_true", help="train in this process without Ray (engine.loop.run_plain)")
        p.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. optim.lr=1e-3 train.patience=30")
        p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray started here")
        p.add_argument("--group", default="", help="W&B group (default: wandb.group, else the out dir's name)")
        p.add_argument("--no-wandb", action="store_true", help="skip W&B logging")
        if name == "deeploc":
            p.add_argument("--methods", default="la,mlp,at,majority", help="comma list of la,mlp,at,majority")
        p.set_defaults(func=func)

    p = sub.add_parser("table", help="merge results.json files into one table")
    p.add_argument("results", nargs="+", help="results.json files or dirs holding one")
    p.add_argument("--out", required=True, help="dir for the merged results.md/json")
    p.add_argument("--title", default="Results")
    p.add_argument("--methods", help="keep and order these methods, e.g. la,mlp,at,majority")
    p.add_argument("--notes", help="text appended under the table")
    p.set_defaults(func=cmd_table)

    args = parser.parse_args(argv)
    return run_cli(lambda: args.func(args), "finetune")


if __name__ == "__main__":
    sys.exit(main())
