"""PSSMs from MMseqs2 vs PSI-BLAST: speed and agreement on corpus proteins.

    nice -n 15 .venv/bin/python bench/bench_profiles.py [--n 500] [--psiblast-n 500] [--cpus 2]

N random proteins of ../shared/data/corpus/corpus_dedup.fasta (fixed seed) are the queries; the
whole corpus (44k proteins) is the database of both engines. Both run through
`data_prep.pssm_generate.generate_pssms` on one local Ray with --cpus CPUs: psiblast as one
1-thread task per query, mmseqs as --cpus chunks of 1-thread tasks (3 iterations each, e-value
0.001). The databases are built first and timed apart; the rates are queries per second of the
searches alone. With --psiblast-n < N, psiblast runs on a random subset of the N queries (its rate
is measured there) and the agreement uses the queries both ran; the output says so.

Agreement: mean per-residue KL(psiblast || mmseqs) / mean KL(psiblast || background) over the
residues where psiblast has information (`data_prep.profiles_compare`). Ends with one JSON line.
Besides wall-clock rates it reports the CPU seconds the tools themselves used per query (summed
over the tasks), the figure that holds when other jobs share the machine and that scales to
core-hours for a cluster.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from data_prep.make_sample import read_fasta, write_fasta  # noqa: E402
from data_prep.profiles_compare import kl_sums  # noqa: E402
from data_prep.profiles_mmseqs import MmseqsOptions, build_target  # noqa: E402
from data_prep.pssm_format import parse_pssm  # noqa: E402
from data_prep.pssm_generate import generate_pssms  # noqa: E402

SHARED = Path(os.environ.get("PROTLM_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
SEED = 14


def percentages(pssm_dir: Path, rid: str):
    f = pssm_dir / f"{rid}.pssm"
    return parse_pssm(f.read_bytes()).percent if f.is_file() else None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=500, help="queries (corpus proteins)")
    ap.add_argument("--psiblast-n", type=int, default=None, help="psiblast on this many of them (default all)")
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--sensitivity", type=float, default=7.5)
    ap.add_argument("--work", default=None, help="work directory (default: a new temporary one)")
    a = ap.parse_args()
    work = Path(a.work or tempfile.mkdtemp(prefix="bench_profiles_"))
    work.mkdir(parents=True, exist_ok=True)
    corpus_fasta = SHARED / "corpus" / "corpus_dedup.fasta"
    corpus = read_fasta(corpus_fasta)
    rng = np.random.default_rng(SEED)
    pick = np.sort(rng.choice(len(corpus), a.n, replace=False))
    queries = [corpus[i] for i in pick]
    n_ps = min(a.psiblast_n or a.n, a.n)
    ps_queries = [queries[i] for i in np.sort(rng.choice(a.n, n_ps, replace=False))]
    write_fasta(work / "queries.fasta", queries)
    write_fasta(work / "queries_psiblast.fasta", ps_queries)
    residues = sum(len(s) for _, s in queries)

    from data_prep.ray_utils import ensure_ray

    ensure_ray(a.cpus)  # a private local Ray (address="local"): never a cluster running on this machine
    t = time.perf_counter()
    subprocess.run(["makeblastdb", "-in", str(corpus_fasta), "-dbtype", "prot", "-out", str(work / "blast" / "db")],
                   check=True, capture_output=True)
    blast_build = time.perf_counter() - t
    t = time.perf_counter()
    target = build_target("mmseqs", str(corpus_fasta), work / "mmseqs_target", a.cpus)
    mmseqs_build = time.perf_counter() - t

    opts = MmseqsOptions(sensitivity=a.sensitivity, threads=1, chunk_size=-(-a.n // a.cpus))
    t = time.perf_counter()
    mm = generate_pssms(str(work / "queries.fasta"), None, work / "mmseqs", engine="mmseqs", mmseqs=opts,
                        target_db=target)
    mm_s = time.perf_counter() - t
    t = time.perf_counter()
    ps = generate_pssms(str(work / "queries_psiblast.fasta"), None, work / "psiblast", engine="psiblast",
                        target_db=str(work / "blast" / "db"))
    ps_s = time.perf_counter() - t

    num = den = rows = 0.0
    informative = {"psiblast": 0, "mmseqs": 0}
    for head, _ in ps_queries:
        rid = head.split()[0]
        p, q = percentages(work / "psiblast" / "pssm", rid), percentages(work / "mmseqs" / "pssm", rid)
        informative["psiblast"] += p is not None and bool(p.any())
        informative["mmseqs"] += q is not None and bool(q.any())
        if p is not None:
            k_pq, k_pb, r = kl_sums(p, q)
            num, den, rows = num + k_pq, den + k_pb, rows + r
    mm_rate, ps_rate = a.n / mm_s, n_ps / ps_s
    mm_cpu, ps_cpu = mm["search_cpu_s"] / a.n, ps["search_cpu_s"] / n_ps
    result = {
        "n": a.n, "psiblast_n": n_ps, "cpus": a.cpus, "query_residues": residues, "database": str(corpus_fasta),
        "database_proteins": len(corpus), "mmseqs_queries_per_s": round(mm_rate, 3),
        "psiblast_queries_per_s": round(ps_rate, 3), "speedup": round(mm_rate / ps_rate, 2),
        "mmseqs_cpu_s_per_query": round(mm_cpu, 4), "psiblast_cpu_s_per_query": round(ps_cpu, 4),
        "speedup_cpu": round(ps_cpu / mm_cpu, 2),
        "kl_ratio": round(num / den, 4), "kl_psiblast_mmseqs_per_residue": round(num / rows, 4),
        "kl_psiblast_background_per_residue": round(den / rows, 4), "residues_compared": int(rows),
        "with_profile_psiblast": round(ps["rows"] / n_ps, 4), "with_profile_mmseqs": round(mm["rows"] / a.n, 4),
        "informative_psiblast": round(informative["psiblast"] / n_ps, 4),
        "informative_mmseqs_same_queries": round(informative["mmseqs"] / n_ps, 4),
        "db_build_s": {"makeblastdb": round(blast_build, 1), "mmseqs_createdb_createindex": round(mmseqs_build, 1)},
        "search_s": {"psiblast": round(ps_s, 1), "mmseqs": round(mm_s, 1)}, "sensitivity": a.sensitivity,
        "iterations": 3, "load_average": os.getloadavg(),
    }
    sub = "" if n_ps == a.n else f" (psiblast on a random {n_ps} of the {a.n}; agreement on those)"
    print(f"queries: {a.n} corpus proteins, {residues} residues; database: the corpus, {len(corpus)} proteins{sub}")
    print(f"mmseqs   {result['mmseqs_queries_per_s']:8.3f} queries/s  ({mm_s:.0f} s; DB build {mmseqs_build:.0f} s)")
    print(f"psiblast {result['psiblast_queries_per_s']:8.3f} queries/s  ({ps_s:.0f} s; DB build {blast_build:.0f} s)")
    print(f"mmseqs   {mm_cpu:8.4f} CPU s/query; psiblast {ps_cpu:8.4f} CPU s/query (the tools' own CPU time)")
    print(f"speedup {result['speedup']}x in queries/s (target >= 20), {result['speedup_cpu']}x in CPU time per query")
    print(f"kl_ratio {result['kl_ratio']} = KL(psiblast||mmseqs) {result['kl_psiblast_mmseqs_per_residue']} / "
          f"KL(psiblast||background) {result['kl_psiblast_background_per_residue']} per residue, "
          f"{int(rows)} residues (target <= 0.5)")
    print(f"with a profile: psiblast {result['with_profile_psiblast']}, mmseqs {result['with_profile_mmseqs']}; "
          f"with an informative (non-zero) profile on the psiblast queries: psiblast "
          f"{result['informative_psiblast']}, mmseqs {result['informative_mmseqs_same_queries']}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
