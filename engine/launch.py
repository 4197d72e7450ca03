"""Ray Train launcher around `engine.loop.train_worker`.

Joins a running cluster when RAY_ADDRESS is set (e.g. under `ray job submit`), else starts a local
Ray on 127.0.0.1 without dashboard. One TorchTrainer run per call:
ScalingConfig(num_workers, use_gpu), RunConfig(storage_path, name, FailureConfig(max_failures)).
Starting the same (storage_path, name) again resumes from its latest checkpoint: Ray Train keeps
a snapshot of reported checkpoints in the run folder and hands the newest to `get_checkpoint()`;
a worker failure during the run restarts all workers from it (up to `max_failures` times).

Local runs listen on loopback only. Ray 2.60's servers (GCS, raylet, core workers, agents) and
torch.distributed's store bind every interface and have no bind-address setting, so when `launch`
would start a local Ray itself (no RAY_ADDRESS, no Ray in this process) it trains in a child
process inside a private network namespace that has nothing but `lo` (`unshare --net`; as a
non-root user `unshare --user --map-root-user --net`). A run that needs the outside network (W&B
online, object-store URIs) cannot live there: its child runs on the host network with Ray's token
authentication, and says so; so does one on a machine where namespaces are refused, and
PROTLM_PRIVATE_NETWORK=0 asks for the host network explicitly.
"""
from __future__ import annotations

import fcntl
import logging
import math
import os
import pickle
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
from dataclasses import replace
from pathlib import Path

from .checkpoint import is_uri, join_path
from .config import ExperimentConfig, to_dict
from .errors import UserError
from .logs import child_env, log_file
from .ray_env import ensure_ray

log = logging.getLogger(__name__)


class LaunchError(UserError, RuntimeError):
    """Training failed under Ray; the message carries the worker's error in one line."""


def _worker_entry(config: dict) -> None:
    from .loop import train_worker

    train_worker(config["task_cls"], config["cfg"], under_ray=True, faults=config["faults"])


PRIVATE_NETWORK = "PROTLM_PRIVATE_NETWORK"  # "0": host network; "child": set in the training child


def train_task(task_cls, cfg: ExperimentConfig, *, local: bool = False, faults=None) -> dict:
    """Train under Ray Train (`launch`), or with `local` in this process without Ray
    (`engine.loop.run_plain`: the same worker function and DeepSpeed); returns the last metrics."""
    if local:
        from .loop import run_plain
        return run_plain(task_cls, cfg, faults=faults)
    return launch(task_cls, cfg, faults=faults)


def launch(task_cls, cfg: ExperimentConfig, *, faults=None) -> dict:
    """Train under Ray Train; returns rank 0's last reported metrics plus the checkpoint path.
    `faults` (engine.loop.Faults) are test hooks: an injected failure, an early stop.
    A run that starts its own local Ray trains in a child process, in a private network namespace
    when it can (module docstring)."""
    import ray

    cfg = with_absolute_paths(cfg)
    if os.environ.get("RAY_ADDRESS") or ray.is_initialized() or os.environ.get(PRIVATE_NETWORK) == "child":
        return _launch(task_cls, cfg, faults)
    needs = network_needs(cfg)
    host = os.environ.get(PRIVATE_NETWORK) == "0"
    unshare = None if needs or host else unshare_command()
    if unshare is None:
        why = (f"it needs the network ({', '.join(needs)})" if needs else f"{PRIVATE_NETWORK}=0" if host else
               "no private network namespace can be created here (unshare --net refused)")
        log.info(f"local Ray on the host network because {why}: its ports bind every interface "
                 f"(Ray's own with token authentication; README, 'Local runs')")
    return _launch_in_child(unshare, task_cls, cfg, faults)


def _launch(task_cls, cfg: ExperimentConfig, faults) -> dict:
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.base_trainer import TrainingFailedError
    from ray.train.torch import TorchConfig, TorchTrainer

    r = cfg.ray
    # a local Ray also needs CPUs for the Ray Data tasks that read each worker's batches
    read = math.ceil(cfg.data.read_tasks * cfg.data.read_cpus)
    ensure_ray(r.local_num_cpus or r.num_workers * (r.cpus_per_worker + read))
    storage = r.storage_path
    trainer = TorchTrainer(
        _worker_entry,
        train_loop_config={"task_cls": task_cls, "cfg": cfg, "faults": faults},
        torch_config=TorchConfig(backend="nccl" if r.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=r.num_workers, use_gpu=r.use_gpu,
                                     resources_per_worker={"CPU": r.cpus_per_worker}),
        run_config=RunConfig(name=r.name, storage_path=storage,
                             failure_config=FailureConfig(max_failures=r.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=r.num_to_keep)),
    )
    try:
        result = trainer.fit()
    except TrainingFailedError as err:
        _raise_root(err, f"run {storage}/{r.name} failed")
    if result.error is not None:
        _raise_root(result.error, f"run {storage}/{r.name} failed")
    out = dict(result.metrics or {})
    run_dir = join_path(storage, r.name)  # a URI keeps its query (endpoint_override=...) at the end
    ckpt = result.checkpoint
    out["checkpoint"] = (join_path(run_dir, Path(ckpt.path).name) if is_uri(storage) else ckpt.path) if ckpt else None
    out["run_dir"] = run_dir
    return out


def network_needs(cfg: ExperimentConfig) -> list[str]:
    """Why a run needs the outside network: W&B online, object-store URIs (config keys named,
    never values: a URI may carry secrets)."""
    from .tracking import wandb_mode

    needs = ["W&B online"] if wandb_mode(cfg.wandb.mode) == "online" else []

    def walk(node, key: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{key}.{k}" if key else str(k))
        elif isinstance(node, (list, tuple)):
            for i, v in enumerate(node):
                walk(v, f"{key}[{i}]")
        elif isinstance(node, str) and "://" in node and not node.startswith("file://"):
            needs.append(f"{key}={node.split('://', 1)[0]}://...")

    walk(to_dict(cfg), "")
    return needs


def unshare_command() -> list[str] | None:
    """The `unshare` prefix that gives a child a network namespace of its own, or None where the
    system refuses (no util-linux, no user namespaces for non-root users)."""
    exe = shutil.which("unshare")
    if exe is None or not sys.platform.startswith("linux"):
        return None
    cmd = [exe, "--net"] if os.geteuid() == 0 else [exe, "--user", "--map-root-user", "--net"]
    cmd.append("--")
    probe = subprocess.run([*cmd, "true"], capture_output=True)
    return cmd if probe.returncode == 0 else None


def _launch_in_child(unshare: list[str] | None, task_cls, cfg: ExperimentConfig, faults) -> dict:
    """`launch` in a child process: inside a new network namespace (only `lo`) with `unshare`, else
    on the host network with Ray's token authentication (a fresh token in the child's environment
    only: Ray reads it when it is imported, so it must be there before). The child's output is
    ours; its result or user error comes back through a private temp dir."""
    env = {**os.environ, PRIVATE_NETWORK: "child"}
    if unshare:
        log.info("local run in a private network namespace: Ray and torch.distributed listen on its "
                 "loopback only")
    elif not env.get("RAY_AUTH_MODE"):
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    env, console_fds = child_env(env)  # the child shows on our terminal and writes our log file
    with tempfile.TemporaryDirectory(prefix="protlm-launch-") as tmp:
        Path(tmp, "job.pkl").write_bytes(pickle.dumps((task_cls, cfg, faults)))
        entry = "import sys; from engine.launch import _child; _child(sys.argv[1], sys.argv[2] == 'netns', int(sys.argv[3]))"
        child = subprocess.Popen([*(unshare or []), sys.executable, "-c", entry, tmp, "netns" if unshare else "host",
                                  str(os.getpid())], env=env, pass_fds=console_fds)
        main = threading.current_thread() is threading.main_thread()  # only there can Python handle signals
        previous = signal.signal(signal.SIGTERM, _terminated) if main else None
        try:
            code = child.wait()
        except BaseException as err:  # Ctrl-C reached the child too (give its Ray time); SIGTERM did not
            tree = process_tree(child.pid)
            if isinstance(err, _Terminated):
                child.terminate()
            try:
                child.wait(timeout=60)
            finally:
                if child.poll() is None:
                    child.kill()
                _kill(tree)  # Ray's agents outlive their raylet by a while; nothing of this run may stay
            raise
        finally:
            if main:
                signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
        result = Path(tmp, "result.pkl")
        if result.is_file():
            kind, value = pickle.loads(result.read_bytes())
            if kind == "error":
                raise value
            return value
    raise RuntimeError(f"training in a child process failed (exit {code}); its traceback is above "
                       f"(and in {log_file() or 'the log file'})")


class _Terminated(SystemExit):
    """SIGTERM while the training child runs: end it, clean up, exit 143."""


def _terminated(signum, frame):
    raise _Terminated(128 + signum)


def process_tree(root: int) -> dict[int, str]:
    """Every process below `root` (Linux /proc), as pid -> start time (to recognise a reused pid)."""
    parent, start = {}, {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        pid = int(stat.parent.name)
        parent[pid], start[pid] = int(fields[1]), fields[19]
    tree, todo = {}, [root]
    while todo:
        pid = todo.pop()
        for kid in (p for p, pp in parent.items() if pp == pid):
            tree[kid] = start[kid]
            todo.append(kid)
    return tree


def _kill(tree: dict[int, str]) -> None:
    """SIGKILL the processes of a `process_tree` snapshot that still run (same pid, same start)."""
    for pid, start in tree.items():
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19] == start:
                os.kill(pid, signal.SIGKILL)
        except (OSError, IndexError):
            pass


def _child(tmp: str, netns: bool, parent: int) -> None:
    """The training child: loopback up in a fresh namespace, then `launch` as usual. It ends with
    its parent (killed or timed out): SIGTERM on the parent's death, and Ray's own processes end
    with this driver."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before prctl
        sys.exit(1)
    if netns:
        _loopback_up()
    task_cls, cfg, faults = pickle.loads(Path(tmp, "job.pkl").read_bytes())
    from .logs import setup_child
    setup_child()
    try:
        out = ("ok", launch(task_cls, cfg, faults=faults))
    except UserError as err:
        out = ("error", err)
    Path(tmp, "result.pkl").write_bytes(pickle.dumps(out))


def _loopback_up() -> None:
    """`ip link set lo up` without iproute2: SIOCGIFFLAGS / SIOCSIFFLAGS on `lo`."""
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    ifreq = "16sh22x"  # struct ifreq: name, flags, rest of the union (40 bytes)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        name, flags = struct.unpack(ifreq, fcntl.ioctl(s, siocgifflags, struct.pack(ifreq, b"lo", 0)))
        fcntl.ioctl(s, siocsifflags, struct.pack(ifreq, name, flags | iff_up))


def with_absolute_paths(cfg: ExperimentConfig) -> ExperimentConfig:
    """Relative paths mean "from where the user ran the command"; Ray Train workers run elsewhere
    (their own working directory, possibly another node), so resolve them before shipping."""
    def absolute(path: str) -> str:
        return str(Path(path).resolve()) if path and "://" not in path else path

    return replace(cfg,
                   data=replace(cfg.data, train=absolute(cfg.data.train), valid=absolute(cfg.data.valid)),
                   ray=replace(cfg.ray, storage_path=absolute(cfg.ray.storage_path)),
                   deepspeed=replace(cfg.deepspeed, config=absolute(cfg.deepspeed.config)),
                   wandb=replace(cfg.wandb, dir=absolute(cfg.wandb.dir)))


def _raise_root(err: BaseException, what: str):
    """Ray wraps a worker's exception (and its restarts) in its own; a user-caused one (UserError:
    bad data, bad key) becomes one LaunchError line, anything else is a bug and keeps its traceback."""
    root = err
    while root.__cause__ is not None:
        root = root.__cause__
    if isinstance(root, UserError):
        text = str(root).strip().splitlines()
        raise LaunchError(f"{what}: {text[-1] if text else type(root).__name__}") from err
    raise err
