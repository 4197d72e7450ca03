"""Starting (or joining) Ray for the data_prep commands."""
from __future__ import annotations


def ensure_ray(num_cpus: int | None = None):
    """Use the running Ray (tests, clusters via RAY_ADDRESS) or start a local one whose messages
    go to the log file (engine.logs); Ray Data's own progress bars show the ingest."""
    from engine.ray_env import ensure_ray as start_or_join

    ray = start_or_join(num_cpus, log_to_driver=False)
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = True
    ctx.print_on_execution_start = False
    return ray


def use_all_cpus(ds):
    """`ds` (a one-map pipeline: items -> map) may run a task on every CPU. Ray Data reserves
    half of the CPUs per operator for the rest of a pipeline by default; these pipelines have no
    rest, so on 2 CPUs the reservation ran one task at a time (bench/bench_fasta.py measured it)."""
    ds.context.op_resource_reservation_enabled = False
    return ds
