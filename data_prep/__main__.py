"""`python -m data_prep`: raw files -> Parquet shards. Each subcommand maps to one plain function.

  fasta IN... --out DIR                 FASTA (plain/gzip) -> sequence shards (Ray Data)
  pssm IN... --out DIR [--sequences D [--join-on sequence]]  PSI-BLAST ASCII PSSMs -> PSSM shards (or joined to sequences)
  pssm generate --fasta F --db DB --out DIR [--engine mmseqs]   PSSMs for every query (Ray tasks)
  labels deeploc|flip|netsurfp ...      labelled sets -> deeploc / ss shards
  split --train DIR --eval DIR... --out DIR   drop training homologs of eval sequences (MMseqs2)
  merge IN... --out DIR                 concatenate shard directories of one kind
  tokenizer --out DIR                   write tokenizer.json

Errors a user can cause end in one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from engine.errors import run_cli
from engine.logs import result as write_result

from .errors import DataPrepError


def _cmd_fasta(a):
    from .fasta import FastaOptions, convert_fasta

    return convert_fasta(a.inputs, a.out, FastaOptions(min_length=a.min_length, max_length=a.max_length,
                                                       dedupe=a.dedupe, shard_size=a.shard_size,
                                                       block_size=a.block_size_mb << 20))


def _cmd_pssm(a):
    from .pssm import convert_pssm

    return convert_pssm(a.inputs, a.out, a.sequences, join_on=a.join_on)


def _cmd_pssm_generate(a):
    from .profiles_mmseqs import MmseqsOptions
    from .pssm_generate import generate_pssms

    opts = MmseqsOptions(sensitivity=a.sensitivity, max_seqs=a.max_seqs, threads=a.threads, e_profile=a.e_profile,
                         chunk_size=a.chunk_size, split_memory_limit=a.split_memory_limit,
                         low_complexity=a.mask_low_complexity)
    return generate_pssms(a.fasta, a.db, a.out, iterations=a.iterations, evalue=a.evalue, engine=a.engine,
                          mmseqs=opts, target_db=a.target_db)


def _cmd_deeploc(a):
    from .labels import labels_deeploc

    return labels_deeploc(a.inputs, a.out)


def _cmd_flip(a):
    from .labels import labels_flip

    splits = set(a.splits.split(",")) if a.splits else None
    if splits and not splits <= {"train", "valid", "test"}:
        raise DataPrepError(f"--splits: unknown split(s) {sorted(splits - {'train', 'valid', 'test'})}")
    return labels_flip(a.directory, a.out, splits)


def _cmd_netsurfp(a):
    from .labels import labels_netsurfp

    return labels_netsurfp(a.inputs, a.out)


def _cmd_split(a):
    from .split import split_homologs

    return split_homologs(a.train, a.eval, a.out, a.min_identity, a.coverage, a.threads)


def _cmd_merge(a):
    from .merge import merge

    return merge(a.inputs, a.out)


def _cmd_tokenizer(a):
    from .vocab import save_tokenizer

    return {"tokenizer": str(save_tokenizer(a.out))}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m data_prep", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs for a local Ray (default: all)")
    sub = p.add_subparsers(dest="command", required=True)

    f = sub.add_parser("fasta", help="FASTA (plain or .gz) -> sequence shards")
    f.add_argument("inputs", nargs="+", help="FASTA files")
    f.add_argument("--out", required=True)
    f.add_argument("--min-length", type=int, default=1, help="reject shorter sequences (too_short)")
    f.add_argument("--max-length", type=int, default=None, help="reject longer sequences (too_long)")
    f.add_argument("--dedupe", action="store_true", help="reject later records with an id already written")
    f.add_argument("--shard-size", type=int, default=100_000, help="max rows per Parquet shard")
    f.add_argument("--block-size-mb", type=int, default=32, help="byte range per parallel task (MiB)")
    f.set_defaults(func=_cmd_fasta)

    s = sub.add_parser("pssm", help="ASCII PSSMs -> PSSM shards ('pssm generate --help' to make them)")
    s.add_argument("inputs", nargs="+", help="PSSM files or directories of them")
    s.add_argument("--out", required=True)
    s.add_argument("--sequences", default=None, help="sequence shard dir to join the PSSMs to")
    s.add_argument("--join-on", choices=["id", "sequence"], default="id",
                   help="match PSSM to sequence rows by id (file name up to the first '.') or by residues")
    s.set_defaults(func=_cmd_pssm)

    g = sub.add_parser("pssm-generate", help="same as 'pssm generate': PSSMs for every query (psiblast or mmseqs)")
    g.add_argument("--fasta", required=True, help="query FASTA")
    g.add_argument("--db", default=None, help="FASTA to build the target database from (or --target-db)")
    g.add_argument("--out", required=True)
    g.add_argument("--engine", choices=["psiblast", "mmseqs"], default="psiblast")
    g.add_argument("--iterations", type=int, default=3)
    g.add_argument("--evalue", type=float, default=None,
                   help="e-value of the hits in the PSSM (default: psiblast 0.001, mmseqs 0.01)")
    g.add_argument("--e-profile", type=float, default=0.1,
                   help="mmseqs --e-profile: hits that shape the next iteration's profile")
    g.add_argument("--sensitivity", type=float, default=7.5, help="mmseqs -s (1 fast .. 7.5 sensitive)")
    g.add_argument("--max-seqs", type=int, default=1000, help="mmseqs --max-seqs per query and iteration")
    g.add_argument("--threads", type=int, default=1, help="mmseqs threads (and Ray CPUs) per chunk task")
    g.add_argument("--chunk-size", type=int, default=1000, help="mmseqs: queries per Ray task")
    g.add_argument("--split-memory-limit", default="", help="mmseqs --split-memory-limit, e.g. 4G")
    g.add_argument("--mask-low-complexity", action="store_true",
                   help="mmseqs: keep its low-complexity masking and compositional bias correction (off by default)")
    g.add_argument("--target-db", default=None,
                   help="an existing DB prefix to search instead of building one from --db (mmseqs: createdb + "
                        "createindex; psiblast: makeblastdb), on storage every node reads")
    g.set_defaults(func=_cmd_pssm_generate)

    lab = sub.add_parser("labels", help="labelled sets -> shards").add_subparsers(dest="labels", required=True)
    d = lab.add_parser("deeploc", help="DeepLoc FASTA -> per-protein labels")
    d.add_argument("inputs", nargs="+")
    d.add_argument("--out", required=True)
    d.set_defaults(func=_cmd_deeploc)
    fl = lab.add_parser("flip", help="FLIP secondary-structure dir -> per-residue labels")
    fl.add_argument("directory")
    fl.add_argument("--out", required=True)
    fl.add_argument("--splits", default=None, help="comma list of train,valid,test to keep (default all)")
    fl.set_defaults(func=_cmd_flip)
    n = lab.add_parser("netsurfp", help="NetSurfP-2.0 CSVs -> per-residue labels (split test)")
    n.add_argument("inputs", nargs="+")
    n.add_argument("--out", required=True)
    n.set_defaults(func=_cmd_netsurfp)

    sp = sub.add_parser("split", help="drop training sequences homologous to evaluation sequences (MMseqs2)")
    sp.add_argument("--train", required=True, help="training shard dir")
    sp.add_argument("--eval", required=True, nargs="+", help="evaluation shard dirs")
    sp.add_argument("--out", required=True)
    sp.add_argument("--min-identity", type=float, default=0.3)
    sp.add_argument("--coverage", type=float, default=0.8)
    sp.add_argument("--threads", type=int, default=1)
    sp.set_defaults(func=_cmd_split)

    m = sub.add_parser("merge", help="concatenate shard dirs of one kind")
    m.add_argument("inputs", nargs="+")
    m.add_argument("--out", required=True)
    m.set_defaults(func=_cmd_merge)

    t = sub.add_parser("tokenizer", help="write tokenizer.json")
    t.add_argument("--out", required=True)
    t.set_defaults(func=_cmd_tokenizer)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    for i, arg in enumerate(argv[:-1]):  # "pssm generate ..." is spelled as a two-word command
        if arg == "pssm" and argv[i + 1] == "generate":
            argv[i:i + 2] = ["pssm-generate"]
            break
    args = build_parser().parse_args(argv)
    results = []

    def body():
        if args.num_cpus:
            from .ray_utils import ensure_ray

            ensure_ray(args.num_cpus)
        results.append(args.func(args))

    code = run_cli(body, "data_prep")
    if code:
        return code
    result = results[0]
    summary = {k: result[k] for k in ("kind", "rows", "input_records", "rejected") if k in result} or result
    if "rows" in summary:
        rejected = ", ".join(f"{n} {why}" for why, n in (summary.get("rejected") or {}).items()) or "none rejected"
        what = " ".join(filter(None, (args.command, getattr(args, "labels", None))))
        logging.getLogger("data_prep").info(f"{what}: {summary['rows']} rows ({rejected}) -> {getattr(args, 'out', None)}")
    write_result(json.dumps({"out": getattr(args, "out", None), **summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
