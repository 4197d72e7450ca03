"""`python -m finetune embed | deeploc | ss | table` (docs/finetune.md)."""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path

from engine.ray_env import ensure_ray

from .errors import FinetuneError


def _config(args):
    from .config import load_config

    cfg = load_config(args.config)
    data = {k: getattr(args, k) for k in ("train", "valid", "test") if getattr(args, k, None)}
    train = {k: getattr(args, k) for k in ("epochs", "num_workers", "seeds") if getattr(args, k, None) is not None}
    return replace(cfg, data=replace(cfg.data, **data), train=replace(cfg.train, **train))


def _init_ray(num_cpus: int | None):
    import ray

    if not ray.is_initialized():
        ensure_ray(num_cpus, log_to_driver=False)
        from ray.data import DataContext
        DataContext.get_current().enable_progress_bars = False


def cmd_embed(args) -> None:
    from .config import load_config, EmbedConfig
    from .extract import run_embed

    cfg = load_config(args.config).embed if args.config else EmbedConfig()
    if args.num_actors:
        cfg = replace(cfg, num_actors=args.num_actors)
    if not args.local:
        _init_ray(args.num_cpus)
    manifest = run_embed(args.model, args.data, args.out, cfg, hdf5=args.hdf5, use_ray=not args.local)
    print(f"[finetune] embedded {manifest['rows']} proteins ({manifest['residues']} residues, dim {manifest['dim']}, "
          f"{manifest['chunked']} chunked) with {manifest['model']} in {manifest['seconds']}s -> {args.out}")


def _finish(rows, args, cfg, per_residue: bool):
    from .experiment import git_commit
    from .report import log_wandb, write_results

    name = args.name or Path(args.out).name
    text = write_results(rows, args.out, f"{'Per-residue' if per_residue else 'DeepLoc'} results: {name}", per_residue)
    if not args.no_wandb:
        mode = log_wandb(rows, {**asdict(cfg), "git_commit": git_commit(), "embedder": name},
                         name=name, group=args.group, out=args.out)
        print(f"[finetune] W&B run logged ({mode})")
    print(text)


def cmd_deeploc(args) -> None:
    from .experiment import run_protein

    cfg = _config(args)
    if cfg.train.num_workers > 0:
        _init_ray(args.num_cpus)
    rows = run_protein(cfg, args.out, args.name or Path(args.out).name, tuple(args.methods.split(",")))
    _finish(rows, args, cfg, per_residue=False)


def cmd_ss(args) -> None:
    from .experiment import run_residue

    cfg = _config(args)
    if cfg.model.head != "cnn":
        cfg = replace(cfg, model=replace(cfg.model, head="cnn"))
    if cfg.train.num_workers > 0:
        _init_ray(args.num_cpus)
    rows = run_residue(cfg, args.out, args.name or Path(args.out).name)
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
    print(write_results(rows, args.out, args.title, per_residue, notes=args.notes or ""))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m finetune", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("embed", help="per-residue + pooled embeddings of a shard dir")
    p.add_argument("--model", required=True, help="'onehot' or an exported model dir (config.json kind bilstm|encoder)")
    p.add_argument("--data", required=True, help="data_prep shard dir (needs a tokens column)")
    p.add_argument("--out", required=True, help="output embedding shard dir")
    p.add_argument("--hdf5", help="also write one HDF5 file, one dataset per protein id")
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
        p.add_argument("--epochs", type=int)
        p.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], help="e.g. 0,1,2")
        p.add_argument("--num-workers", type=int, help="Ray Train workers (0 = one plain process)")
        p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray started here")
        p.add_argument("--group", default="finetune", help="W&B group")
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
    try:
        args.func(args)
    except FinetuneError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
