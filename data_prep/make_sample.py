"""Build the bundled demo sample under sample/ from ../shared/data (deterministic).

    python -m data_prep.make_sample [--shared ../shared/data] [--out sample]

Selections use a fixed seed; PSSMs are made by this project's own `pssm generate` (psiblast,
3 iterations) for some sample proteins against the sample corpus as the database, and stored
gzip-compressed (the `pssm` command reads .gz transparently). See sample/README.md.
"""
from __future__ import annotations

import argparse
import gzip
import shutil
import tempfile
from pathlib import Path

import numpy as np

SEED = 20240601
N_CORPUS = 3000
N_PSSM = 200
PSSM_MAX_LENGTH = 400
FLIP_COUNTS = {"train": 600, "valid": 150, "test": 100}


def read_fasta(path: Path) -> list[tuple[str, str]]:
    """(header line without '>', sequence) pairs; the sample sources are all well-formed."""
    records, head, parts = [], None, []
    for line in path.read_text().splitlines():
        if line.startswith(">"):
            if head is not None:
                records.append((head, "".join(parts)))
            head, parts = line[1:], []
        else:
            parts.append(line.strip())
    if head is not None:
        records.append((head, "".join(parts)))
    return records


def write_fasta(path: Path, records: list[tuple[str, str]], width: int = 60) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for head, seq in records:
            f.write(f">{head}\n")
            for i in range(0, len(seq), width):
                f.write(seq[i:i + width] + "\n")


def make_sample(shared: Path, out: Path, n_pssm: int = N_PSSM, engine: str = "psiblast") -> None:
    rng = np.random.default_rng(SEED)
    out.mkdir(parents=True, exist_ok=True)

    corpus = read_fasta(shared / "corpus" / "corpus_dedup.fasta")
    pick = np.sort(rng.choice(len(corpus), N_CORPUS, replace=False))
    sample_corpus = [corpus[i] for i in pick]
    write_fasta(out / "corpus.fasta", sample_corpus)

    (out / "deeploc").mkdir(exist_ok=True)
    for name in ("deeploc_our_val_set.fasta", "deeploc_test_set.fasta"):
        shutil.copyfile(shared / "deeploc" / name, out / "deeploc" / name)

    flip = shared / "secondary_structure" / "flip"
    labels = read_fasta(flip / "sampled.fasta")
    split_of = {}
    for head, _ in labels:
        rid, *fields = head.split()
        kv = dict(f.split("=", 1) for f in fields)
        split_of[rid] = "test" if kv["SET"] == "test" else ("valid" if kv["VALIDATION"] == "True" else "train")
    chosen = set()
    for split, n in FLIP_COUNTS.items():
        ids = sorted(r for r, s in split_of.items() if s == split)
        chosen.update(ids[i] for i in rng.choice(len(ids), n, replace=False))
    for name in ("sequences.fasta", "sampled.fasta", "mask.fasta"):
        recs = [r for r in read_fasta(flip / name) if r[0].split()[0] in chosen]
        write_fasta(out / "flip" / name, recs, width=10**9)  # FLIP files keep one line per record

    (out / "netsurfp").mkdir(exist_ok=True)
    for name in ("CASP12_HHblits.csv", "TS115_HHblits.csv"):
        shutil.copyfile(shared / "secondary_structure" / "netsurfp" / name, out / "netsurfp" / name)

    # PSSMs made here with psiblast, for sample proteins of moderate length.
    from .pssm_generate import generate_pssms

    short = [i for i, (_, s) in enumerate(sample_corpus) if len(s) <= PSSM_MAX_LENGTH]
    queries = [sample_corpus[i] for i in np.sort(rng.choice(short, n_pssm, replace=False))]
    pssm_out = out / "pssm"
    shutil.rmtree(pssm_out, ignore_errors=True)
    pssm_out.mkdir()
    with tempfile.TemporaryDirectory(prefix="dp_sample_") as tmp:
        write_fasta(Path(tmp) / "queries.fasta", queries)
        manifest = generate_pssms(str(Path(tmp) / "queries.fasta"), str(out / "corpus.fasta"), Path(tmp) / "gen",
                                  engine=engine)
        for f in sorted((Path(tmp) / "gen" / "pssm").glob("*.pssm")):
            with open(f, "rb") as src, gzip.GzipFile(pssm_out / (f.name + ".gz"), "wb", mtime=0) as dst:
                shutil.copyfileobj(src, dst)
    print(f"sample: {len(sample_corpus)} corpus sequences, {manifest['rows']} PSSMs "
          f"({manifest['rejected']} without), FLIP {FLIP_COUNTS}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "sample"))
    ap.add_argument("--engine", choices=["psiblast", "mmseqs"], default="psiblast",
                    help="PSSM engine (the bundled sample was made with psiblast)")
    a = ap.parse_args()
    from .ray_utils import ensure_ray

    ensure_ray(2)
    make_sample(Path(a.shared), Path(a.out), engine=a.engine)


if __name__ == "__main__":
    main()
