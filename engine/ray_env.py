"""Starting or joining Ray, the same way for every entry point, and quietly: Ray's own messages go
to the log file and Ray's session directory, not the terminal (engine.logs)."""
from __future__ import annotations

import logging
import os
import sys

# Settings every process of ours wants, set before Ray starts (its workers inherit them).
RAY_ENV = {
    "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
    "RAY_DATA_NON_TTY_PROGRESS_LOG_INTERVAL": "15",  # Ray Data's progress where stdout is no terminal
    # DeepSpeed JIT-builds its CPU shared-memory all-reduce into ~/.cache/torch_extensions/<name>,
    # keyed by name only: two environments (a clone's venv beside another) rebuilt it in turn, a
    # minute or more each time. One cache per environment.
    "TORCH_EXTENSIONS_DIR": os.path.join(sys.prefix, "torch_extensions"),
}


def set_process_env() -> None:
    """RAY_ENV's defaults in this process (before Ray starts or DeepSpeed loads its ops)."""
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)


def ensure_ray(num_cpus: int | None = None, log_to_driver: bool = True):
    """Join the cluster named by RAY_ADDRESS (set inside `ray job submit` jobs), else start a
    private local Ray on loopback without dashboard. `address="local"` matters: without it Ray
    would join any `ray start` cluster that happens to run on this machine. Workers' output
    reaches this driver filtered: only this project's lines (engine.logs.forward_worker_lines)."""
    import ray

    from .logs import forward_worker_lines, quiet_ray

    if ray.is_initialized():
        return ray
    set_process_env()
    quiet_ray()
    if os.environ.get("RAY_ADDRESS"):
        context = ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=log_to_driver,
                           configure_logging=False)
    else:
        context = ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                           _node_ip_address="127.0.0.1", log_to_driver=log_to_driver, configure_logging=False)
    if log_to_driver and not os.environ.get("RAY_ADDRESS"):  # a cluster job's log keeps all of Ray's
        forward_worker_lines()
    session = (getattr(context, "address_info", None) or {}).get("session_dir")
    if session:
        logging.getLogger("ray").info("Ray session logs: %s/logs", session)
    return ray
