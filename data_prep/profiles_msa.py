"""Query-anchored MSA (from `mmseqs result2msa`) -> weighted observed percentages, as PSI-BLAST reports them.

MMseqs2 14 keeps no probabilities in its profile DB (`result2profile` stores 20 int8 log-odds
scores per position, with pseudocounts mixed in), so the frequencies are computed here from the
alignment itself, the way PSI-BLAST's "weighted observed percentages" are defined:

* hits at least `NEAR_IDENTICAL` identical to the query (the query's own hit included) are dropped,
  as PSI-BLAST purges them;
* the query and the remaining hits get Henikoff position-based weights (1 / (distinct residues in
  the column * count of this residue there), averaged over the columns the sequence covers, so
  that a short fragment is not penalised for its length);
* a column's frequencies are the weight shares of the 20 standard residues among the sequences
  with a standard residue there; a column that no kept hit covers has no information: an all-zero
  row (PSI-BLAST writes zeros there too).

Percentages are rounded by largest remainder, so an informative row sums to exactly 100.
The result is written as a PSI-BLAST-layout ASCII PSSM (`write_ascii_pssm`), which `data_prep pssm`
reads like a psiblast file.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import DataPrepError
from .pssm_format import PSSM_ORDER

NEAR_IDENTICAL = 0.94  # PSI-BLAST's purge threshold for hits nearly identical to the query
GAP = 20  # code of '-' and of every non-standard letter (X, B, Z, U, O)
# Robinson & Robinson (1991) amino-acid frequencies, the background of BLOSUM62 and BLAST, PSSM order.
BACKGROUND = np.array([0.07805, 0.05129, 0.04487, 0.05364, 0.01925, 0.04264, 0.06295, 0.07377, 0.02199,
                       0.05142, 0.09019, 0.05744, 0.02243, 0.03856, 0.05203, 0.07120, 0.05841, 0.01330,
                       0.03216, 0.06441])
BACKGROUND = BACKGROUND / BACKGROUND.sum()

_CODE = np.full(256, GAP, np.uint8)
for _i, _c in enumerate(PSSM_ORDER):
    _CODE[ord(_c)] = _i


def encode_rows(rows: list[bytes], length: int, where: str) -> np.ndarray:
    """Aligned rows (query columns only) -> (N, length) codes 0..19 in PSSM order, GAP elsewhere."""
    if any(len(r) != length for r in rows):
        bad = next(r for r in rows if len(r) != length)
        raise DataPrepError(f"{where}: an aligned row has {len(bad)} columns, the query {length} "
                            "(expected mmseqs result2msa --msa-format-mode 2 output)")
    return _CODE[np.frombuffer(b"".join(rows), np.uint8).reshape(len(rows), length)]


def weighted_percent(msa: np.ndarray) -> np.ndarray:
    """msa: (N, L) codes, row 0 the query. Returns (L, 20) uint8 percentages, PSSM column order."""
    query, hits = msa[0], msa[1:]
    aligned = hits != GAP
    same = (hits == query[None, :]) & aligned
    identity = same.sum(1) / np.maximum(aligned.sum(1), 1)
    kept = np.vstack([query[None, :], hits[(identity < NEAR_IDENTICAL) & aligned.any(1)]])
    n, length = kept.shape
    percent = np.zeros((length, 20), np.uint8)
    covered = (kept[1:] != GAP).any(0)
    if n == 1 or not covered.any():
        return percent
    std = kept != GAP
    cols = np.broadcast_to(np.arange(length), kept.shape)
    counts = np.zeros((length, GAP + 1))
    np.add.at(counts, (cols[std], kept[std]), 1.0)
    distinct = (counts[:, :20] > 0).sum(1)
    share = np.zeros(kept.shape)
    share[std] = 1.0 / (distinct[cols[std]] * counts[cols[std], kept[std]])
    weight = share.sum(1) / np.maximum(std.sum(1), 1)
    freq = np.zeros((length, GAP + 1))
    np.add.at(freq, (cols[std], kept[std]), np.broadcast_to(weight[:, None], kept.shape)[std])
    freq = freq[:, :20]
    total = freq.sum(1)
    informative = covered & (total > 0)
    percent[informative] = round_to_100(freq[informative] / total[informative, None])
    return percent


def round_to_100(p: np.ndarray) -> np.ndarray:
    """Rows of probabilities -> integer percentages summing to exactly 100 (largest remainder)."""
    scaled = p * 100.0
    out = np.floor(scaled).astype(np.int64)
    missing = 100 - out.sum(1)
    order = np.argsort(-(scaled - out), axis=1, kind="stable")
    bump = np.arange(p.shape[1])[None, :] < missing[:, None]
    np.put_along_axis(out, order, np.take_along_axis(out, order, 1) + bump, 1)
    return out.astype(np.uint8)


def msa_percent(entry: bytes, where: str) -> tuple[str, np.ndarray]:
    """One result2msa entry (aligned FASTA, query first) -> (query residues, (L, 20) percentages)."""
    lines = entry.split(b"\n")
    rows, current = [], []
    for line in lines:
        if line.startswith(b">"):
            if current:
                rows.append(b"".join(current))
            current = []
        elif line:
            current.append(line.strip())
    if current:
        rows.append(b"".join(current))
    if not rows:
        raise DataPrepError(f"{where}: empty MSA entry")
    query = rows[0].decode().upper()
    return query, weighted_percent(encode_rows(rows, len(rows[0]), where))


HEADER = ("Last position-specific scoring matrix computed from an MMseqs2 MSA by data_prep: log-odds "
          "(half bits, 0.8 frequencies + 0.2 background; informational only), weighted observed "
          "percentages (rows sum to 100, all zero = no information), information per position, relative weight")


def write_ascii_pssm(path: Path, sequence: str, percent: np.ndarray) -> None:
    """PSI-BLAST `-out_ascii_pssm` layout (what `pssm_format.parse_pssm` reads): 20 log-odds, the 20
    percentages (the only columns the project uses), relative entropy in bits, and 0.00."""
    p = percent.astype(np.float64) / 100.0
    mixed = 0.8 * p + 0.2 * BACKGROUND
    zero = percent.sum(1) == 0
    mixed[zero] = BACKGROUND
    logodds = np.rint(2 * np.log2(mixed / BACKGROUND)).astype(int)
    with np.errstate(divide="ignore", invalid="ignore"):
        info = np.where(p > 0, p * np.log2(p / BACKGROUND), 0.0).sum(1)
    letters = "".join(f"{c:>4}" for c in PSSM_ORDER)
    out = ["", HEADER, f"         {letters}{letters}"]
    for i, res in enumerate(sequence):
        lo = "".join(f"{v:>4d}" for v in logodds[i])
        pc = "".join(f"{v:>4d}" for v in percent[i])
        out.append(f"{i + 1:>5d} {res} {lo} {pc}  {info[i]:.2f}     0.00")
    out += ["", "                      K         Lambda (not computed for MMseqs2 profiles)", ""]
    path.write_text("\n".join(out))
