"""A local training run (no RAY_ADDRESS) can be reached on loopback only.

The test starts `python -m pretrain train` with a small config, and while it trains lists every
listening TCP socket (IPv4 and IPv6) that the run's processes own: Ray's GCS, raylet, core
workers and agents, the torch.distributed store and gloo. Each must be bound to a loopback
address or live in a network namespace whose only interface is `lo` (engine.launch trains local
runs in one, because Ray 2.60 binds every interface and has no setting to change that)."""
from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from conftest import REPO
from engine.launch import network_needs, process_tree, unshare_command

SMALL = ["model.embed_dim=16", "model.input_proj=32", "model.hidden=64", "model.proj=32",
         "data.residues_per_batch=2048", "data.max_length=256", "optim.warmup_steps=2", "wandb.mode=offline"]


def descendants(root: int) -> list[int]:
    """Every process below `root` (only what this test started)."""
    return list(process_tree(root))


def decode(hex_addr: str) -> str:
    """An address of /proc/net/tcp{,6} (little-endian 32-bit words) as text."""
    raw = bytes.fromhex(hex_addr)
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(words))


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def _readlink(path: Path) -> str:
    try:
        return os.readlink(path)
    except OSError:  # closed meanwhile
        return ""


def listening_sockets(pids: list[int]) -> list[dict]:
    """(process, address, port, interfaces of its network namespace) of each listening TCP socket."""
    out = []
    for pid in pids:
        try:
            inodes = {link[8:-1] for link in map(_readlink, Path(f"/proc/{pid}/fd").iterdir())
                      if link.startswith("socket:[")}
            name = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            netns = os.readlink(f"/proc/{pid}/ns/net")
            interfaces = {line.split(":")[0].strip() for line in Path(f"/proc/{pid}/net/dev").read_text().splitlines()[2:]}
            tables = [Path(f"/proc/{pid}/net/{t}").read_text().splitlines()[1:] for t in ("tcp", "tcp6")]
        except OSError:
            continue  # the process ended meanwhile
        for line in (row for table in tables for row in table):
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # TCP_LISTEN, owned by this process
                addr, port = fields[1].split(":")
                out.append({"pid": pid, "name": name, "address": decode(addr), "port": int(port, 16),
                            "netns": netns, "interfaces": interfaces})
    return out


def test_local_run_listens_on_loopback_only(shared_data, tmp_path):
    from _pretrain_shards import build_shards

    assert unshare_command(), "this test needs `unshare --net` (root, or user namespaces for non-root users)"
    shards = build_shards(shared_data, tmp_path / "shards", n_pssm=20, n_plain=40)
    cmd = [sys.executable, "-m", "pretrain", "train", "--config", str(REPO / "pretrain/configs/demo.yaml"),
           "--data", str(shards), "--set", *SMALL, f"ray.storage_path={tmp_path / 'runs'}", "ray.name=lo",
           "ray.num_workers=2", "train.max_steps=8", "train.log_every=1", "train.checkpoint_every=100"]
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "WANDB_API_KEY", "PROTLM_PRIVATE_NETWORK")}
    log = tmp_path / "train.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=fh, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 300
        while "[engine] step 1/" not in log.read_text() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None, f"the run ended before it trained:\n{log.read_text()[-3000:]}"
        sockets = listening_sockets(descendants(proc.pid))  # while training: every server is up
        assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            for pid in [*descendants(proc.pid), proc.pid]:
                os.kill(pid, 9)
            proc.wait()
    assert "private network namespace" in log.read_text()
    owners = {s["name"] for s in sockets}
    assert len(sockets) >= 8 and any("gcs_server" in o for o in owners) and any("raylet" in o for o in owners) \
        and any("RayTrainWorker" in o for o in owners), sockets  # Ray's servers and the training workers seen
    exposed = [s for s in sockets if not ipaddress.ip_address(s["address"]).is_loopback and s["interfaces"] != {"lo"}]
    assert not exposed, "reachable beyond loopback:\n" + "\n".join(f"{s['name']} {s['address']}:{s['port']}" for s in exposed)
    own_netns = os.readlink("/proc/self/ns/net")
    assert all(s["netns"] != own_netns for s in sockets)  # none of them in this machine's network


def test_runs_that_need_the_network_are_named_without_their_uris():
    from pretrain import config as pretrain_config
    from pretrain.config import CONFIG_DIR

    base = ["wandb.mode=offline", "data.train=/data/shards"]
    assert network_needs(pretrain_config.load(CONFIG_DIR / "demo.yaml", base)) == []
    cfg = pretrain_config.load(CONFIG_DIR / "demo.yaml", base + ["ray.storage_path=s3://bucket/runs?endpoint_override=http://x"])
    assert network_needs(cfg) == ["ray.storage_path=s3://..."]
    cfg = pretrain_config.load(CONFIG_DIR / "demo.yaml", ["wandb.mode=online", "data.train=gs://b/shards"])
    assert network_needs(cfg) == ["W&B online", "data.train=gs://..."]


def test_killing_a_local_run_ends_its_private_network_child_and_ray(shared_data, tmp_path):
    """SIGTERM to the command (a timeout, a scheduler) ends the training child and its Ray too."""
    from _pretrain_shards import build_shards

    shards = build_shards(shared_data, tmp_path / "shards", n_pssm=20, n_plain=40)
    cmd = [sys.executable, "-m", "pretrain", "train", "--config", str(REPO / "pretrain/configs/demo.yaml"),
           "--data", str(shards), "--set", *SMALL, f"ray.storage_path={tmp_path / 'runs'}", "ray.name=kill"]
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "WANDB_API_KEY", "PROTLM_PRIVATE_NETWORK")}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started: list[int] = []
    try:
        deadline = time.time() + 300
        while proc.poll() is None and time.time() < deadline:
            started = descendants(proc.pid)
            if any(b"raylet" in Path(f"/proc/{p}/cmdline").read_bytes() for p in started if Path(f"/proc/{p}").exists()):
                break
            time.sleep(0.5)
        assert proc.poll() is None and started, "the run ended before its Ray started"
        proc.terminate()
        assert proc.wait(timeout=90) == 143  # it ended its child, cleaned up and exited as terminated
        deadline = time.time() + 60
        while time.time() < deadline and any(Path(f"/proc/{p}").exists() for p in started):
            time.sleep(0.5)
        alive = {p: _read(Path(f"/proc/{p}/cmdline"))[:120] for p in started
                 if "Z" not in _read(Path(f"/proc/{p}/stat")).rsplit(b")", 1)[-1].decode().split()[:1]}
        alive = {p: c for p, c in alive.items() if c}  # (gone, or a zombie: no command line)
        assert not alive, f"still running after the command was killed: {alive}"
        left = [d for d in Path(tempfile.gettempdir()).glob("protlm-launch-*")
                if str(tmp_path).encode() in _read(d / "job.pkl")]
        assert not left, left  # the job handed to the child (its config) was removed
    finally:
        for pid in [*descendants(proc.pid), *started, proc.pid]:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        proc.wait()
