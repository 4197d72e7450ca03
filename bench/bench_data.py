"""Streaming training input, measured in one run (results: docs/benchmarks.md).

The shared corpus (44,331 proteins) is written as shards by `python -m data_prep fasta`, and a 16x
copy of them (every row repeated with a unique id). Then:

- rss_ratio_16x: peak RSS of a training process (the demo biLSTM, batches streamed through Ray
  Data, `--steps` AdamW steps) on the 16x shards / on the 1x shards. Target <= 1.15.
- first_step_ratio_16x: seconds from opening the shards to the first optimizer step, 16x / 1x
  (planning reads the `length` column of the rank's row groups). Target <= 1.5.
- throughput_ratio: residues/s of training steps whose batches come from the Ray Data stream /
  from a list made before the loop (the same plan), in alternating blocks of 5 steps in one
  process, so that both see the same load on a shared machine. Target >= 0.9.
- read_fraction_world8: Parquet bytes rank r of 8 reads in one epoch (its row groups' `length`
  and `tokens` column chunks, planning included) / the bytes of those columns in all row groups;
  the largest over ranks. Target <= 1.1/8 = 0.1375.
- plan_seconds_60m: seconds to plan one epoch over 60 M synthetic protein lengths (one rank).
- fasta_mres_per_core: FASTA ingest, M residues/s per core (bench_fasta.py's figure).

The training processes are separate processes, one at a time, each with its own local Ray.
Ends with one JSON line.

    .venv/bin/python bench/bench_data.py [--steps 20] [--skip-fasta]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

import numpy as np  # noqa: E402

SHARED = Path(os.environ.get("PROTLM_SHARED_DATA", REPO.parent / "shared" / "data"))
PY = sys.executable


def write_shards(out: Path) -> tuple[Path, Path]:
    """1x shards via the CLI; 16x by repeating each data file's rows with new ids."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from data_prep.shards import write_parquet

    one, many = out / "x1", out / "x16"
    subprocess.run([PY, "-m", "data_prep", "fasta", str(SHARED / "corpus" / "corpus_dedup.fasta"),
                    "--out", str(one)], check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    (many / "data").mkdir(parents=True)
    manifest = json.loads((one / "manifest.json").read_text())
    for copy in range(16):
        for f in sorted((one / "data").glob("*.parquet")):
            table = pq.read_table(f)
            ids = pa.array([f"{i}_{copy}" for i in table.column("id").to_pylist()])
            write_parquet(table.set_column(table.schema.get_field_index("id"), "id", ids),
                          many / "data" / f"c{copy:02d}-{f.name}")
    manifest.update(rows=manifest["rows"] * 16, residues=manifest["residues"] * 16,
                    input_records=manifest["input_records"] * 16,
                    rejected={k: v * 16 for k, v in manifest["rejected"].items()})
    (many / "manifest.json").write_text(json.dumps(manifest))
    return one, many


def demo_config(shards: Path, storage: Path):
    from pretrain import config as pretrain_config
    from pretrain.config import CONFIG_DIR

    return pretrain_config.load(CONFIG_DIR / "demo.yaml", [f"data.train={shards}", f"ray.storage_path={storage}",
                                                            "model.pssm_head=false", "wandb.mode=disabled"])


def child(shards: Path, steps: int, mode: str) -> dict:
    """One training process on the demo biLSTM. "stream": `steps` batches through Ray Data (peak
    RSS, time to the first step, residues/s). "both": blocks of 5 steps taken in turn from batches
    held in memory and from the Ray Data stream (the same plan), so both paths run under the same
    load on a shared machine; residues/s of each."""
    import ray
    import torch

    from engine.stream import Feed
    from pretrain.task import BiLSTMTask

    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False, configure_logging=False,
             _node_ip_address="127.0.0.1")
    torch.manual_seed(0)
    t0 = time.perf_counter()
    cfg = demo_config(shards, Path(tempfile.mkdtemp()))
    task = BiLSTMTask(cfg)
    feed = Feed(task.train_data(), cfg, task, rank=0, world=1, use_ray=True)
    plan = feed.plan(0)
    model = task.build_model()
    optim = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr)

    def step(ready) -> int:
        loss, _ = task.loss(model, ready.tensors)
        optim.zero_grad()
        loss.backward()
        optim.step()
        return ready.residues

    stream = feed.batches(plan, 0)
    step(next(stream))  # startup: planning, the first reads, the first step
    first_step = time.perf_counter() - t0
    out = {"first_step_s": first_step, "peak_rss_mb": 0.0}
    if mode == "stream":
        start, residues = time.perf_counter(), 0
        for _, ready in zip(range(steps), stream):
            residues += step(ready)
        out["residues_per_s"] = residues / (time.perf_counter() - start)
    else:
        local = Feed(task.train_data(), cfg, task, rank=0, world=1).batches(plan, 0)
        held = [next(local) for _ in range(steps + 1)][1:]  # the same batches, made before the loop
        totals = {"memory": [0, 0.0], "stream": [0, 0.0]}
        for block in range(0, steps, 5):
            for name, source in (("memory", iter(held[block:block + 5])), ("stream", stream)):
                start = time.perf_counter()
                for _, ready in zip(range(5), source):
                    totals[name][0] += step(ready)
                totals[name][1] += time.perf_counter() - start
        out.update({f"{k}_residues_per_s": n / t for k, (n, t) in totals.items()})
    stream.close()  # stop the Ray Data pipeline
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def run_child(shards: Path, steps: int, mode: str) -> dict:
    out = subprocess.run([PY, __file__, "--child", str(shards), "--steps", str(steps), "--mode", mode],
                         capture_output=True, text=True, cwd=REPO)
    if out.returncode:
        raise SystemExit(f"training process on {shards} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def read_fraction(shards: Path, world: int = 8) -> float:
    """Largest share of the needed columns' bytes that one of `world` ranks reads in one epoch."""
    from engine.epoch import plan_epoch, settings_from
    from engine.sources import Source, open_source

    settings = settings_from(demo_config(shards, Path(tempfile.mkdtemp())))
    columns = ["length", "tokens"]
    index = open_source(Source(str(shards), ["tokens"]))
    total = sum(index.read_bytes(c, columns) for c in range(len(index.rows)))
    chunk_of = {(index.files[int(index.file[c])], int(index.group[c])): c for c in range(len(index.rows))}
    worst = 0.0
    for rank in range(world):
        plan = plan_epoch([index], [1.0], 0, settings, seed=0, epoch=0, rank=rank, world=world, fillers=False)
        chunks = [chunk_of[p, g] for w in plan.windows for p, g in zip(w.paths, w.groups)]
        # planning reads the length column of these row groups, training their tokens
        read = sum(index.read_bytes(c, columns) for c in chunks)
        worst = max(worst, read / total)
    return worst


def plan_seconds(proteins: int = 60_000_000) -> float:
    from engine.epoch import PlanSettings, plan_lengths

    rng = np.random.default_rng(0)
    lengths = np.clip(rng.lognormal(5.5, 0.6, proteins), 30, 35000).astype(np.int64)
    t0 = time.perf_counter()
    plan = plan_lengths(lengths, PlanSettings(8192, 256, 512, "window", 1.05, 1, 8))
    seconds = time.perf_counter() - t0
    print(f"plan     60M synthetic proteins: {plan.batches} batches in {seconds:.1f} s "
          f"(padding efficiency {plan.padding_efficiency:.3f})")
    return seconds


def fasta_figure() -> float:
    out = subprocess.run([PY, str(REPO / "bench" / "bench_fasta.py")], check=True, capture_output=True, text=True,
                         cwd=REPO)
    line = json.loads(next(x for x in reversed(out.stdout.splitlines()) if x.startswith("{")))
    return line["ray_residues_per_s_per_core"] / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--skip-fasta", action="store_true", help="leave out the FASTA ingest figure")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="stream", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.steps, args.mode)), flush=True)
        # Measured; skip Ray's teardown, which can abort a process whose Ray Data stream was cut
        # mid-epoch ("core worker has already been shutdown") and would make the run look failed.
        os._exit(0)
    print(f"machine: {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        one, many = write_shards(Path(tmp))
        fraction = read_fraction(one)
        print(f"reads    one of 8 ranks reads {fraction:.4f} of the length+tokens bytes (target <= 0.1375)")
        x1 = run_child(one, args.steps, "stream")
        x16 = run_child(many, args.steps, "stream")
        both = run_child(one, 4 * args.steps, "both")
    for name, r in (("1x stream", x1), ("16x stream", x16)):
        print(f"train    {name:10s}: peak RSS {r['peak_rss_mb']:.0f} MiB, first step after {r['first_step_s']:.1f} s, "
              f"{r['residues_per_s']:.0f} residues/s")
    print(f"train    1x, {4 * args.steps} steps in blocks of 5, in turn: held in memory "
          f"{both['memory_residues_per_s']:.0f} residues/s, streamed {both['stream_residues_per_s']:.0f} residues/s")
    result = {
        "rss_ratio_16x": x16["peak_rss_mb"] / x1["peak_rss_mb"],
        "read_fraction_world8": fraction,
        "first_step_ratio_16x": x16["first_step_s"] / x1["first_step_s"],
        "throughput_ratio": both["stream_residues_per_s"] / both["memory_residues_per_s"],
        "plan_seconds_60m": plan_seconds(),
    }
    if not args.skip_fasta:
        result["fasta_mres_per_core"] = fasta_figure()
    print(json.dumps({k: round(v, 4) for k, v in result.items()}))


if __name__ == "__main__":
    main()
