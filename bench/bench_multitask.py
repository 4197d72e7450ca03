"""Multitask training benchmark: engine (Ray Train + DeepSpeed) vs a plain PyTorch loop.

Prints, from one run:
  * training-step throughput of 1 Ray Train worker (DeepSpeed, the real `python -m multitask train`
    path) / a plain single-process PyTorch loop over the same model and the same batches
    (target >= 0.9). The 2-core box is shared with other jobs, so throughput is taken per window
    of a few steps (the engine's own metrics.jsonl; the plain loop's windows before and after the
    Ray run) and the ratio is given for the best windows (least disturbed) and for the medians;
  * padding efficiency of the training batches (real residues / padded positions, target >= 0.9);
  * on a GPU: model FLOPs utilisation in bf16 (6 * params * tokens + attention term, over the
    GPU's dense bf16 peak; target >= 40% on an H100). Without a GPU the same code path runs on
    the CPU with a tiny model (no MFU is claimed) so that it stays correct.

Usage: python bench/bench_multitask.py [--steps 40] [--data DIR]  (DIR holds corpus/, ss_train/,
deeploc_train/ shard dirs, e.g. runs/demo/data; default: built from ../shared/data into a temp dir)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

from engine.loop import lr_lambda  # noqa: E402
from engine.stream import Feed  # noqa: E402
from multitask.config import load  # noqa: E402
from multitask.model import ModelConfig, MultitaskEncoder, flops_per_token  # noqa: E402
from multitask.task import MultitaskTask, prepare  # noqa: E402

SHARED = Path(os.environ.get("PROTLM_SHARED_DATA", REPO.parent / "shared" / "data"))
WINDOW = 4  # steps per throughput window
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense bf16 tensor-core peak, FLOP/s


def build_shards(out: Path) -> Path:
    """Training shards from the real data through data_prep (corpus: first 3000 sequences)."""
    from data_prep.fasta import convert_fasta
    from data_prep.labels import labels_deeploc, labels_flip

    out.mkdir(parents=True, exist_ok=True)
    sample = out / "corpus.fasta"
    with open(SHARED / "corpus/corpus_dedup.fasta") as src, open(sample, "w") as dst:
        n = 0
        for line in src:
            n += line.startswith(">")
            if n > 3000:
                break
            dst.write(line)
    convert_fasta([str(sample)], out / "corpus")
    labels_deeploc([str(SHARED / "deeploc/deeploc_our_val_set.fasta")], out / "deeploc_train")
    labels_flip(SHARED / "secondary_structure/flip", out / "ss_train", {"train", "valid"})
    return out


def bench_config(data: Path, storage: Path, name: str, steps: int, workers: int):
    return load(REPO / "multitask/configs/demo.yaml", [
        f"mixture.sources=[{{path: {data}/corpus, weight: 0.4}}, {{path: {data}/ss_train, weight: 0.3}}, "
        f"{{path: {data}/deeploc_train, weight: 0.3}}]",
        "eval.ss_test=", "eval.deeploc_test=", f"train.max_steps={steps}", f"train.log_every={WINDOW}",
        f"train.checkpoint_every={steps}", f"ray.storage_path={storage}", f"ray.name={name}",
        f"ray.num_workers={workers}", "ray.cpus_per_worker=2", "ray.local_num_cpus=2", "wandb.mode=disabled"])


def plain_loop(cfg, steps: int, window: int) -> list[float]:
    """Residues/s per window of `window` steps (the first window, warm-up, left out): plain
    PyTorch, same model and batches as the engine's rank 0 (same plan, same collate and rng
    seeds), AdamW + clipping + schedule."""
    task = MultitaskTask(cfg)
    feed = Feed(task.train_data(), cfg, task, rank=0, world=1)  # the engine's batches, made in-process
    batches = [b for _, b in zip(range(steps), feed.batches(feed.plan(0), 0))]
    model = task.build_model().train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                            weight_decay=cfg.optim.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.optim, cfg.train.max_steps))
    rates, residues, start = [], 0, time.perf_counter()
    for i, b in enumerate(batches):
        if i and i % window == 0:
            if i > window:
                rates.append(residues / (time.perf_counter() - start))
            start, residues = time.perf_counter(), 0
        loss, _ = task.loss(model, b.tensors)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.deepspeed.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        residues += b.residues
    rates.append(residues / (time.perf_counter() - start))
    return rates


def measure_mfu(cfg: ModelConfig, device: str, batch: int, length: int, steps: int) -> tuple[float, float]:
    """(achieved FLOP/s, tokens/s) of training steps in bf16 autocast on `device`."""
    torch.manual_seed(0)
    model = MultitaskEncoder(cfg).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")
    tokens = torch.randint(5, 25, (batch, length), device=device)
    lengths = torch.full((batch,), length, device=device)  # full rows: no mask -> flash kernel on GPU
    targets = torch.randint(5, 25, (batch, length), device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for i in range(steps + 3):
        if i == 3:
            sync()
            start = time.perf_counter()
        with torch.autocast(device, dtype=torch.bfloat16):
            out = model(tokens, lengths)
        loss = torch.nn.functional.cross_entropy(out["mlm"].float().flatten(0, 1), targets.flatten())
        loss = loss + out["ss3"].float().mean() + out["location"].float().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync()
    seconds = time.perf_counter() - start
    n_tokens = steps * batch * (length + 1)  # +1: the <cls> position
    flops = flops_per_token(cfg, model.num_params(non_embedding=True), length + 1) * n_tokens
    return flops / seconds, n_tokens / seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=48)
    ap.add_argument("--data", type=Path)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_multitask_"))
    data = args.data or build_shards(tmp / "data")
    cfg = prepare(bench_config(data, tmp / "runs", "ray1", args.steps, workers=1))
    print(f"model {cfg.model.dim}x{cfg.model.layers}, {args.steps} steps of <= {cfg.data.residues_per_batch} "
          f"residues, mixture {cfg.mixture.proteins_per_epoch} proteins from {data}")

    plain = plain_loop(cfg, args.steps, WINDOW)
    from engine.launch import launch
    metrics = launch(MultitaskTask, cfg)
    history = [json.loads(line) for line in (Path(metrics["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    engine = [h["residues_per_s"] for h in history if "residues_per_s" in h][1:]  # first window: warm-up
    plain += plain_loop(cfg, args.steps, WINDOW)
    task = MultitaskTask(cfg)
    plan = Feed(task.train_data(), cfg, task, rank=0, world=1).plan(0)
    # The box is shared with other jobs: compare the least-disturbed windows (best of N) and medians.
    print(f"plain PyTorch loop, {len(plain)} windows of {WINDOW} steps (before + after the Ray run): "
          f"best {max(plain):.0f}, median {np.median(plain):.0f} residues/s")
    print(f"Ray Train (1 worker) + DeepSpeed, {len(engine)} windows: best {max(engine):.0f}, "
          f"median {np.median(engine):.0f} residues/s")
    print(f"RATIO throughput engine / plain = {max(engine) / max(plain):.3f} best-of-windows, "
          f"{np.median(engine) / np.median(plain):.3f} median  (target >= 0.9)")
    print(f"RATIO padding efficiency = {plan.padding_efficiency:.3f} over a full epoch "
          f"({plan.batches} batches); in the Ray run {metrics['padding_efficiency']:.3f}  (target >= 0.9)")

    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
        base = load(REPO / "multitask/configs/base.yaml").model
        achieved, tps = measure_mfu(base, "cuda", batch=16, length=512, steps=10)
        mfu = f"{achieved / peak:.3f}" if peak else "unknown peak"
        print(f"GPU {name}: base model ({base.dim}x{base.layers}) bf16 {tps:.0f} tokens/s, "
              f"{achieved / 1e12:.1f} TFLOP/s; RATIO MFU = {mfu}  (target >= 0.40 on H100)")
    else:
        achieved, tps = measure_mfu(ModelConfig(dim=64, layers=2, heads=4), "cpu", batch=4, length=128, steps=2)
        print(f"no GPU: MFU not measured (the bf16 code path ran on CPU with a tiny model: {tps:.0f} tokens/s)")


if __name__ == "__main__":
    main()
