"""A real one-node SLURM cluster on this machine (munged, slurmctld, slurmd), for tests of the
sbatch template.

slurmctld and slurmd listen on every interface, so the cluster lives in a private network
namespace that has only `lo` (root only, like ops/local_cluster.py): nothing in it can be reached
from outside, and stopping it is exact (the namespace's processes, then the namespace). Every
file (munge key and socket, slurm.conf, state, logs) is under one private directory; the node
is `CPUs=2` without cgroups (`ProctrackType=proctrack/linuxproc`, `TaskPlugin=task/none`).
Debian: `apt-get install slurmctld slurmd slurm-client munge` (`make sysdeps`).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch")


class SlurmError(RuntimeError):
    pass


def missing_tools() -> list[str]:
    return [tool for tool in (*DAEMONS, "ip") if shutil.which(tool) is None]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalSlurm:
    """Use as a context manager; `run(args)` runs a command inside the cluster's network."""

    def __init__(self, directory: str | Path, cpus: int = 2):
        if os.geteuid() != 0:
            raise SlurmError("a local SLURM cluster needs root (slurmd, and the private network namespace)")
        if missing_tools():
            raise SlurmError(f"missing {', '.join(missing_tools())}: run `make sysdeps` "
                             f"(apt-get install slurmctld slurmd slurm-client munge iproute2)")
        self.dir = Path(directory).resolve()
        self.cpus = cpus
        self.node = socket.gethostname().split(".")[0]
        self.netns = f"protlmslurm{os.getpid()}"
        self.conf = self.dir / "slurm.conf"
        self.procs: list[subprocess.Popen] = []
        self.started = False

    # --- configuration -------------------------------------------------------------------------
    def _write_files(self) -> None:
        d = self.dir
        for sub in ("state", "spool", "log"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        key = d / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self.conf.write_text("\n".join([
            "ClusterName=protlm",
            f"SlurmctldHost={self.node}(127.0.0.1)",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={d / 'munge.socket'}",
            f"StateSaveLocation={d / 'state'}",
            f"SlurmdSpoolDir={d / 'spool'}",
            f"SlurmctldPidFile={d / 'slurmctld.pid'}",
            f"SlurmdPidFile={d / 'slurmd.pid'}",
            f"SlurmctldLogFile={d / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={d / 'log' / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "SchedulerType=sched/builtin",
            "SwitchType=switch/none",
            "MpiDefault=none",
            "JobCompType=jobcomp/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "ReturnToService=2",
            "KillWait=5",  # seconds between SIGTERM and SIGKILL when a step ends
            f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} State=UNKNOWN",
            f"PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP",
        ]) + "\n")
        # slurmd initialises a cgroup plugin even when nothing uses it; autodetect fails where no
        # cgroup file system is mounted, the v1 plugin only looks when a cgroup feature is used
        (d / "cgroup.conf").write_text("CgroupPlugin=cgroup/v1\nCgroupAutomount=no\n")

    def env(self) -> dict:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    # --- commands inside the namespace ---------------------------------------------------------
    def command(self, args: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *args]

    def run(self, args: list[str], timeout: float = 60, check: bool = True, **kw) -> subprocess.CompletedProcess:
        proc = subprocess.run(self.command(args), env=kw.pop("env", None) or self.env(), text=True,
                              capture_output=True, timeout=timeout, **kw)
        if check and proc.returncode != 0:
            raise SlurmError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        return proc

    def _daemon(self, args: list[str], log: str) -> None:
        with open(self.dir / "log" / log, "ab") as out:
            self.procs.append(subprocess.Popen(self.command(args), env=self.env(), stdout=out, stderr=subprocess.STDOUT))

    # --- lifecycle -----------------------------------------------------------------------------
    def start(self) -> "LocalSlurm":
        self._write_files()
        subprocess.run(["ip", "netns", "add", self.netns], check=True)
        self.started = True
        subprocess.run(["ip", "netns", "exec", self.netns, "ip", "link", "set", "lo", "up"], check=True)
        # Slurm binds with getaddrinfo(AF_INET, AI_ADDRCONFIG), which glibc answers only when an IPv4
        # address other than 127.0.0.1 exists; a second loopback address is one (still only `lo`)
        subprocess.run(["ip", "netns", "exec", self.netns, "ip", "addr", "add", "127.0.0.2/8", "dev", "lo"], check=True)
        d = self.dir
        self._daemon(["munged", "-F", "--force", f"--socket={d / 'munge.socket'}", f"--key-file={d / 'munge.key'}",
                      f"--pid-file={d / 'munged.pid'}", f"--log-file={d / 'log' / 'munged.log'}",
                      f"--seed-file={d / 'munged.seed'}"], "munged.out")
        self._wait(lambda: (d / "munge.socket").exists(), "munged did not create its socket")
        self._daemon(["slurmctld", "-D", "-i", "-f", str(self.conf)], "slurmctld.out")
        self._daemon(["slurmd", "-D", "-f", str(self.conf)], "slurmd.out")
        self._wait(self._node_idle, f"node {self.node} did not become idle")
        return self

    def _node_idle(self) -> bool:
        out = self.run(["sinfo", "-h", "-N", "-o", "%T"], check=False, timeout=30).stdout.strip()
        return out == "idle"

    def _wait(self, ready, what: str, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if any(p.poll() is not None for p in self.procs):
                raise SlurmError(f"{what}: a daemon exited\n{self.logs()}")
            if ready():
                return
            time.sleep(0.5)
        raise SlurmError(f"{what} in {timeout}s\n{self.logs()}")

    def logs(self) -> str:
        return "\n".join(f"== {f.name}\n{f.read_text(errors='replace')[-1500:]}"
                         for f in sorted((self.dir / "log").glob("*")) if f.is_file())

    def pids(self) -> list[int]:
        out = subprocess.run(["ip", "netns", "pids", self.netns], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def stop(self) -> None:
        """Stop exactly what runs in the namespace (daemons, jobs), then remove the namespace."""
        if not self.started:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = self.pids()
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.time() + 10
            while pids and self.pids() and time.time() < deadline:
                time.sleep(0.3)
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        subprocess.run(["ip", "netns", "del", self.netns], check=False)
        self.started = False

    def __enter__(self) -> "LocalSlurm":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
