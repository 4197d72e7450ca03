"""Starting (or joining) Ray for the data_prep commands."""
from __future__ import annotations

import logging
import os


def ensure_ray(num_cpus: int | None = None):
    """Use the running Ray (tests, clusters via RAY_ADDRESS) or start a quiet local one."""
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    import ray

    if not ray.is_initialized():
        kwargs = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
        if os.environ.get("RAY_ADDRESS"):
            ray.init(**kwargs)
        else:
            ray.init(num_cpus=num_cpus, _node_ip_address="127.0.0.1", **kwargs)
    from ray.data import DataContext

    logging.getLogger("ray.data").setLevel(logging.WARNING)

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    return ray
