"""Pretrain benchmarks, measured in one run (results: docs/benchmarks.md).

1. Padding efficiency (real residues / padded positions) of the residue-budget batches on the
   real corpus (44k proteins), with the demo and PEvoLM batching settings. Target >= 0.9.
2. Training throughput (residues/s) of the Ray Train + DeepSpeed step vs the same model on the
   same batches in a plain single-process PyTorch loop (AdamW, clipping, schedule). Target >= 0.9x.
   Ray runs ONE worker with all the machine's cores, so both sides use the same CPUs (on a 2-core
   box, 2 workers would just split the cores). Each side trains `warmup` steps, then is timed over
   the next `steps` steps (the engine's own residues/s report of that window).
   Sizes: demo model, and PEvoLM size (2048 cells / 256 projection; few, smaller batches on CPU).
   `--local` runs the engine side in this process (engine.loop.run_plain: the same worker function
   and DeepSpeed, without Ray) for machines without Ray; the output names the path it took.
3. With --gpu, where the time goes: the rate of making the batches alone (in-process, no model),
   and of the plain loop with its batches already on the GPU (the GPU alone); `--profile` prints
   the top GPU kernels of a few such steps (which LSTM kernels, in which dtype). On a GPU the
   plain loop that the engine is compared with computes as the engine does (bf16 weights, the
   DeepSpeed bf16 arithmetic); with bf16 autocast instead, PyTorch runs cuDNN LSTMs in fp16.

    .venv/bin/python bench/bench_pretrain.py            # CPU
    .venv/bin/python bench/bench_pretrain.py --gpu      # one GPU, bf16, PEvoLM size at full batch
                                                        # (target >= 200k residues/s on an H100)
    python bench/bench_pretrain.py --gpu --local --data SHARDS   # a GPU machine without Ray
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from engine.epoch import plan_lengths, settings_from  # noqa: E402
from engine.loop import lr_lambda  # noqa: E402
from engine.stream import Feed  # noqa: E402
from pretrain import config as pretrain_config  # noqa: E402
from data_prep.fasta_read import fasta_lengths  # noqa: E402
from pretrain.config import CONFIG_DIR  # noqa: E402
from pretrain.task import BiLSTMTask  # noqa: E402

SHARED = Path(os.environ.get("PROTLM_SHARED_DATA", REPO.parent / "shared" / "data"))


def corpus_lengths() -> np.ndarray:
    return fasta_lengths(SHARED / "corpus" / "corpus_dedup.fasta")


def padding(name: str, cfg) -> float:
    d = cfg.data
    lengths = corpus_lengths()
    t0 = time.perf_counter()
    plan = plan_lengths(lengths, settings_from(cfg))
    ms = 1000 * (time.perf_counter() - t0)
    print(f"padding  {name:7s} budget={d.residues_per_batch} max_length={d.max_length}: {len(lengths)} proteins, "
          f"{plan.stats.long_proteins} windowed, {plan.batches} batches, planned in {ms:.0f} ms, "
          f"efficiency {plan.padding_efficiency:.3f} (target >= 0.9)")
    return plan.padding_efficiency


def engine_batches(cfg, task, n: int):
    """The first `n` batches of the engine's plan for rank 0 of 1, made in-process."""
    feed = Feed(task.train_data(), cfg, task, rank=0, world=1)
    plan = feed.plan(0)
    assert plan.batches >= n, f"not enough batches in one epoch for the benchmark ({plan.batches} < {n})"
    return feed.batches(plan, 0)


def batching_rate(cfg, n: int) -> float:
    """Residues/s of making `n` batches (read, window, collate) in this process, no model."""
    batches = engine_batches(cfg, BiLSTMTask(cfg), n)
    start = time.perf_counter()
    residues = sum(b.residues for b in itertools.islice(batches, n))
    return residues / (time.perf_counter() - start)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


PRECISIONS = {
    "fp32": "fp32",
    "bf16": "bf16 weights (the engine's DeepSpeed bf16 arithmetic)",
    # PyTorch's autocast casts cuDNN RNNs to fp16 whatever its dtype (aten/src/ATen/cudnn/AutocastRNN.cpp)
    "autocast": "bf16 autocast (cuDNN runs the LSTMs in fp16 under autocast)",
}


def plain_loop(cfg, warmup: int, steps: int, device: str, precision: str = "fp32", on_device: bool = False,
               profile: bool = False) -> float:
    """The reference: same task, model, batches, optimizer and schedule; no Ray, no DeepSpeed.
    `precision`: a key of PRECISIONS. `on_device`: the batches are made and copied to the device
    before the loop (the device's own rate, no host batching in the timed steps); `profile`: print
    the top kernels of the timed steps (profiling slows them: the rate is then not a measurement)."""
    torch.manual_seed(cfg.train.seed)
    task = BiLSTMTask(cfg)
    model = task.build_model().to(device, torch.bfloat16 if precision == "bf16" else torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.optim, cfg.train.max_steps))
    batches = engine_batches(cfg, task, warmup + steps)
    to_device = lambda b: (b.residues, {k: v.to(device) for k, v in b.tensors.items()})  # noqa: E731
    if on_device:
        batches = [to_device(b) for b in itertools.islice(batches, warmup + steps)]
    else:
        batches = map(to_device, batches)
    residues, start = 0, None
    prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
                                  if device.startswith("cuda") else None) if profile else None
    for i, (n, batch) in zip(range(warmup + steps), batches):
        if i == warmup:
            sync(device)
            start = time.perf_counter()
            if prof is not None:
                prof.__enter__()
        with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=precision == "autocast"):
            loss, _ = task.loss(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.deepspeed.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if i >= warmup:
            residues += n
    sync(device)
    rate = residues / (time.perf_counter() - start)
    if prof is not None:
        prof.__exit__(None, None, None)
        sort = "self_cuda_time_total" if device.startswith("cuda") else "self_cpu_time_total"
        print(f"profile  {steps} steps, plain loop, {PRECISIONS[precision]}, batches on the device:")
        print(prof.key_averages().table(sort_by=sort, row_limit=15, max_name_column_width=70))
    return rate


ENGINE_PATHS = {False: "Ray Train (1 worker) + DeepSpeed", True: "engine.loop.run_plain (DeepSpeed in-process, no Ray)"}


def engine_run(cfg, warmup: int, steps: int, local: bool) -> float:
    """The engine (Ray Train with 1 worker, or in-process with `local`) with DeepSpeed; the
    engine's own residues/s of the timed window."""
    from engine.launch import train_task
    train_task(BiLSTMTask, cfg, local=local)
    log = [json.loads(x) for x in (Path(cfg.ray.storage_path) / cfg.ray.name / "metrics.jsonl").read_text().splitlines()]
    timed = [m for m in log if m["step"] == warmup + steps]
    assert timed and math.isclose(timed[-1]["residues_per_s"], timed[-1]["residues_per_s"])
    return timed[-1]["residues_per_s"]


def throughput(name: str, preset: str, shards: Path, storage: Path, warmup: int, steps: int, extra: list[str],
               gpu: bool, local: bool, profile: bool = False) -> float:
    cpus = os.cpu_count() or 1
    overrides = [f"data.train={shards}", f"ray.storage_path={storage}", f"ray.name=bench-{name}",
                 "ray.num_workers=1", f"ray.cpus_per_worker={1 if gpu else cpus}", f"ray.use_gpu={str(gpu).lower()}",
                 f"train.max_steps={warmup + steps}", f"train.log_every={warmup}", f"train.checkpoint_every={10**6}",
                 "wandb.mode=disabled", "deepspeed.grad_accum_steps=1", "deepspeed.zero_stage=1",
                 f"deepspeed.bf16={'true' if gpu else 'false'}", "data.long_proteins=window", *extra]
    if steps != warmup:
        raise SystemExit("bench: steps must equal warmup (the engine reports every `warmup` steps)")
    cfg = pretrain_config.load(CONFIG_DIR / preset, overrides)
    if not gpu:
        torch.set_num_threads(cpus)
    device = "cuda" if gpu else "cpu"
    if gpu:
        # cuDNN sets up each new batch shape once per process: a first pass over the timed batches
        # puts every side after it on an equal footing (whichever loop ran first measured 25-55% slower)
        plain_loop(cfg, warmup, steps, device, "bf16")
        print(f"where    {name:7s}: making the batches alone (in-process, no model) "
              f"{batching_rate(cfg, warmup + steps):,.0f} res/s")
        if profile:
            on_gpu = {p: plain_loop(cfg, warmup, steps, device, p, on_device=True) for p in ("bf16", "autocast")}
            print(f"where    {name:7s}: plain loop with its batches already on the GPU: "
                  + ", ".join(f"{PRECISIONS[p]} {r:,.0f} res/s" for p, r in on_gpu.items()))
            for p in on_gpu:
                plain_loop(cfg, 2, 3, device, p, on_device=True, profile=True)
        print(f"speed    {name:7s}: plain PyTorch, {PRECISIONS['autocast']}: "
              f"{plain_loop(cfg, warmup, steps, device, 'autocast'):,.0f} res/s")
    precision = "bf16" if gpu else "fp32"
    ref = plain_loop(cfg, warmup, steps, device, precision)
    eng = engine_run(cfg, warmup, steps, local)
    print(f"speed    {name:7s} ({preset}, hidden {cfg.model.hidden}/proj {cfg.model.proj}, budget "
          f"{cfg.data.residues_per_batch}, {steps} timed steps after {warmup}): plain PyTorch, {PRECISIONS[precision]}: "
          f"{ref:,.0f} res/s, {ENGINE_PATHS[local]} {eng:,.0f} res/s, ratio {eng / ref:.2f}x (target >= 0.9x)")
    return eng


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true", help="one GPU, bf16, PEvoLM size at its full batch budget")
    parser.add_argument("--data", help="shard directory (default: real shards built from ../shared/data)")
    parser.add_argument("--local", action="store_true", help=f"engine side as {ENGINE_PATHS[True]}")
    parser.add_argument("--steps", type=int, default=5, help="timed steps of each side, after as many warm-up steps")
    parser.add_argument("--profile", action="store_true",
                        help="with --gpu: the plain loop with its batches on the GPU, and its top kernels")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides of the timed runs, e.g. deepspeed.zero_stage=0")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_pretrain_") as tmp:
        tmp = Path(tmp)
        if args.data:
            shards = Path(args.data)
        else:
            from _pretrain_shards import build_shards
            shards = build_shards(SHARED, tmp / "shards", n_pssm=200, n_plain=1200)
        print(f"machine: {os.cpu_count()} CPU cores, torch {torch.__version__}, "
              f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}; engine path: "
              f"{ENGINE_PATHS[args.local]}")
        effs = []
        if (SHARED / "corpus" / "corpus_dedup.fasta").is_file():
            effs = [padding("demo", pretrain_config.load(CONFIG_DIR / "demo.yaml")),
                    padding("pevolm", pretrain_config.load(CONFIG_DIR / "pevolm.yaml"))]
        else:
            print(f"padding  skipped: no corpus at {SHARED} (set PROTLM_SHARED_DATA)")
        if args.gpu:
            pev = throughput("pevolm", "pevolm.yaml", shards, tmp / "runs", args.steps, args.steps, args.set, gpu=True,
                             local=args.local, profile=args.profile)
            print(f"gpu      PEvoLM size bf16: {pev:,.0f} residues/s per GPU (target >= 200,000 on an H100)")
        else:
            throughput("demo", "demo.yaml", shards, tmp / "runs", args.steps, args.steps, args.set, gpu=False,
                       local=args.local)
            throughput("pevolm", "pevolm.yaml", shards, tmp / "runs", 2, 2,
                       ["data.residues_per_batch=2048", "data.max_batch_size=64", *args.set], gpu=False, local=args.local)
        if effs:
            print(f"padding efficiency min {min(effs):.3f} (target >= 0.9)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
