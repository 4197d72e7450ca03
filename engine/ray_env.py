"""Starting or joining Ray, the same way for every entry point."""
from __future__ import annotations

import os


def ensure_ray(num_cpus: int | None = None, log_to_driver: bool = True):
    """Join the cluster named by RAY_ADDRESS (set inside `ray job submit` jobs), else start a
    private local Ray on loopback without dashboard. `address="local"` matters: without it Ray
    would join any `ray start` cluster that happens to run on this machine."""
    import ray

    if ray.is_initialized():
        return ray
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=log_to_driver)
    else:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                 _node_ip_address="127.0.0.1", log_to_driver=log_to_driver, configure_logging=False)
    return ray
