"""Pretrain benchmarks, measured in one run (results: docs/benchmarks.md).

1. Padding efficiency (real residues / padded positions) of the residue-budget batches on the
   real corpus (44k proteins), with the demo and PEvoLM batching settings. Target >= 0.9.
2. Training throughput (residues/s) of the Ray Train + DeepSpeed step vs the same model on the
   same batches in a plain single-process PyTorch loop (AdamW, clipping, schedule). Target >= 0.9x.
   Ray runs ONE worker with all the machine's cores, so both sides use the same CPUs (on a 2-core
   box, 2 workers would just split the cores). Each side trains `warmup` steps, then is timed over
   the next `steps` steps (the engine's own residues/s report of that window).
   Sizes: demo model, and PEvoLM size (2048 cells / 256 projection; few, smaller batches on CPU).

    .venv/bin/python bench/bench_pretrain.py            # CPU
    .venv/bin/python bench/bench_pretrain.py --gpu      # one GPU, bf16, PEvoLM size at full batch
                                                        # (target >= 200k residues/s on an H100)
"""
from __future__ import annotations

import argparse
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


def plain_loop(cfg, warmup: int, steps: int, device: str, bf16: bool) -> float:
    """The reference: same task, model, batches, optimizer and schedule; no Ray, no DeepSpeed."""
    torch.manual_seed(cfg.train.seed)
    task = BiLSTMTask(cfg)
    model = task.build_model().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.optim, cfg.train.max_steps))
    feed = Feed(task.train_data(), cfg, task, rank=0, world=1)  # the engine's batches, made in-process
    plan = feed.plan(0)
    assert plan.batches >= warmup + steps, "not enough batches in one epoch for the benchmark"
    residues, start = 0, None
    for i, b in zip(range(warmup + steps), feed.batches(plan, 0)):
        if i == warmup:
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
        batch = {k: v.to(device) for k, v in b.tensors.items()}
        with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=bf16):
            loss, _ = task.loss(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.deepspeed.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if i >= warmup:
            residues += b.residues
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return residues / (time.perf_counter() - start)


def engine_run(cfg, warmup: int, steps: int) -> float:
    """Ray Train (1 worker) + DeepSpeed; the engine's residues/s of the timed window."""
    from engine.launch import launch

    launch(BiLSTMTask, cfg)
    log = [json.loads(x) for x in (Path(cfg.ray.storage_path) / cfg.ray.name / "metrics.jsonl").read_text().splitlines()]
    timed = [m for m in log if m["step"] == warmup + steps]
    assert timed and math.isclose(timed[-1]["residues_per_s"], timed[-1]["residues_per_s"])
    return timed[-1]["residues_per_s"]


def throughput(name: str, preset: str, shards: Path, storage: Path, warmup: int, steps: int, extra: list[str],
               gpu: bool) -> float:
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
    ref = plain_loop(cfg, warmup, steps, device, bf16=gpu)
    eng = engine_run(cfg, warmup, steps)
    print(f"speed    {name:7s} ({preset}, hidden {cfg.model.hidden}/proj {cfg.model.proj}, budget "
          f"{cfg.data.residues_per_batch}, {steps} timed steps after {warmup}): plain PyTorch {ref:,.0f} res/s, "
          f"Ray Train + DeepSpeed {eng:,.0f} res/s, ratio {eng / ref:.2f}x (target >= 0.9x)")
    return eng


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true", help="one GPU, bf16, PEvoLM size at its full batch budget")
    parser.add_argument("--data", help="shard directory (default: real shards built from ../shared/data)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_pretrain_") as tmp:
        tmp = Path(tmp)
        if args.data:
            shards = Path(args.data)
        else:
            from _pretrain_shards import build_shards
            shards = build_shards(SHARED, tmp / "shards", n_pssm=200, n_plain=1200)
        print(f"machine: {os.cpu_count()} CPU cores, torch {torch.__version__}, "
              f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}")
        effs = [padding("demo", pretrain_config.load(CONFIG_DIR / "demo.yaml")),
                padding("pevolm", pretrain_config.load(CONFIG_DIR / "pevolm.yaml"))]
        if args.gpu:
            pev = throughput("pevolm", "pevolm.yaml", shards, tmp / "runs", 5, 5, [], gpu=True)
            print(f"gpu      PEvoLM size bf16: {pev:,.0f} residues/s per GPU (target >= 200,000 on an H100)")
        else:
            throughput("demo", "demo.yaml", shards, tmp / "runs", 5, 5, [], gpu=False)
            throughput("pevolm", "pevolm.yaml", shards, tmp / "runs", 2, 2,
                       ["data.residues_per_batch=2048", "data.max_batch_size=64"], gpu=False)
        print(f"padding efficiency min {min(effs):.3f} (target >= 0.9)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
