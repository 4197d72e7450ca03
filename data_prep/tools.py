"""External programs (psiblast, makeblastdb, mmseqs): locate them and run them with clear errors."""
from __future__ import annotations

import resource
import shutil
import subprocess

from .errors import DataPrepError

INSTALL_HINT = {
    "psiblast": "install NCBI BLAST+ (Debian/Ubuntu: apt-get install ncbi-blast+)",
    "makeblastdb": "install NCBI BLAST+ (Debian/Ubuntu: apt-get install ncbi-blast+)",
    "mmseqs": "install MMseqs2 (Debian/Ubuntu: apt-get install mmseqs2, or conda install -c bioconda mmseqs2)",
}


def require(tool: str) -> str:
    """Absolute path of `tool` on PATH, or a DataPrepError telling how to install it."""
    path = shutil.which(tool)
    if path is None:
        raise DataPrepError(f"{tool}: not found on PATH; {INSTALL_HINT.get(tool, 'install it')}")
    return path


def run_tool(args: list[str], *, what: str) -> subprocess.CompletedProcess:
    """Run a command; a non-zero exit becomes one DataPrepError line with the tool's last stderr line."""
    proc = subprocess.run(args, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines() or ["no output"])[-1]
        raise DataPrepError(f"{what}: {args[0]} exited with {proc.returncode}: {last}")
    return proc


def child_cpu_seconds() -> float:
    """CPU seconds (user + system) of this process's finished children: the tools' own cost,
    which on a shared machine says more than wall time (docs/benchmarks.md)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
