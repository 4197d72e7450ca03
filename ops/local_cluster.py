"""A real multi-node Ray cluster on one machine, for tests and demos of `ray job submit`.

Ray's gRPC servers (GCS, raylet) bind every interface and have no switch to bind loopback only.
So when we are root we start the whole cluster inside a private network namespace that has
nothing but `lo`: nothing in it can be reached from outside the machine, and stopping the
cluster is exact (kill the namespace's processes) instead of `ray stop`, which would kill every
Ray on the machine. Without root we fall back to plain loopback addresses and kill the
processes that use our private temp dir.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

VENV_BIN = Path(sys.executable).parent


class ClusterError(RuntimeError):
    pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def netns_available() -> bool:
    return os.geteuid() == 0 and shutil.which("ip") is not None


class LocalCluster:
    """`num_nodes` Ray nodes (one head) on this machine; use as a context manager."""

    def __init__(self, num_nodes: int = 2, cpus_per_node: int = 2, use_netns: bool | None = None,
                 temp_dir: str | None = None):
        self.num_nodes = num_nodes
        self.cpus_per_node = cpus_per_node
        self.use_netns = netns_available() if use_netns is None else use_netns
        self.netns = f"protlm{os.getpid()}"
        # Ray puts unix sockets under the temp dir: keep the path short.
        self.temp_dir = temp_dir or f"/tmp/rc{os.getpid()}"
        self.gcs_port = _free_port()
        self.dashboard_port = _free_port()
        self.token = secrets.token_hex(32)
        self.started = False

    # --- addresses -------------------------------------------------------------------------
    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def env(self) -> dict:
        env = dict(os.environ)
        env["PATH"] = f"{VENV_BIN}:{env.get('PATH', '')}"
        env["RAY_ADDRESS"] = self.dashboard_url  # what `ray job` commands use
        env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        # Token authentication on every RPC: a fresh secret per cluster, held only in the
        # environment of the processes we start (never in a file or a log).
        env["RAY_AUTH_MODE"] = "token"
        env["RAY_AUTH_TOKEN"] = self.token
        env.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
        return env

    # --- running commands inside the cluster's network ----------------------------------------
    def command(self, args: list[str]) -> list[str]:
        return (["ip", "netns", "exec", self.netns] if self.use_netns else []) + list(args)

    def run(self, args: list[str], timeout: float = 600, check: bool = True, **kw) -> subprocess.CompletedProcess:
        proc = subprocess.run(self.command(args), env=kw.pop("env", None) or self.env(), text=True,
                              capture_output=True, timeout=timeout, **kw)
        if check and proc.returncode != 0:
            raise ClusterError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return proc

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> "LocalCluster":
        if self.use_netns:
            subprocess.run(["ip", "netns", "add", self.netns], check=True)
            self.started = True
            subprocess.run(["ip", "netns", "exec", self.netns, "ip", "link", "set", "lo", "up"], check=True)
        self.started = True
        ray = str(VENV_BIN / "ray")
        common = ["--node-ip-address=127.0.0.1", f"--num-cpus={self.cpus_per_node}",
                  "--disable-usage-stats"]
        self.run([ray, "start", "--head", f"--port={self.gcs_port}", "--dashboard-host=127.0.0.1",
                  f"--dashboard-port={self.dashboard_port}", f"--temp-dir={self.temp_dir}",
                  "--resources", json.dumps({"node_0": 1}), *common], timeout=180)
        for i in range(1, self.num_nodes):
            self.run([ray, "start", f"--address={self.address}",
                      "--resources", json.dumps({f"node_{i}": 1}), *common], timeout=180)
        self.wait_for_nodes()
        return self

    def wait_for_nodes(self, timeout: float = 120) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            proc = self.run([str(VENV_BIN / "ray"), "status", f"--address={self.address}"], check=False, timeout=60)
            if proc.returncode == 0 and proc.stdout.count("node_") >= self.num_nodes:
                return
            time.sleep(2)
        raise ClusterError(f"cluster at {self.address} did not show {self.num_nodes} nodes in {timeout}s")

    def pids(self) -> list[int]:
        if self.use_netns:
            out = subprocess.run(["ip", "netns", "pids", self.netns], capture_output=True, text=True).stdout
            return [int(p) for p in out.split()]
        out = subprocess.run(["pgrep", "-f", self.temp_dir], capture_output=True, text=True).stdout
        return [int(p) for p in out.split() if int(p) != os.getpid()]

    def listening_addresses(self) -> list[str]:
        """Local addresses of listening TCP sockets in the cluster's network (for security checks)."""
        out = self.run(["ss", "-Hltn"], check=False).stdout
        return [line.split()[3] for line in out.splitlines() if len(line.split()) >= 4]

    def stop(self) -> None:
        if not self.started:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = self.pids()
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            if pids and sig == signal.SIGTERM:
                time.sleep(3)
        if self.use_netns:
            subprocess.run(["ip", "netns", "del", self.netns], check=False)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        self.started = False

    def __enter__(self) -> "LocalCluster":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
