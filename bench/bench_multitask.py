"""Multitask training benchmark: engine (Ray Train + DeepSpeed) vs a plain PyTorch loop.

Prints, from one run:
  * training-step throughput of 1 Ray Train worker (DeepSpeed, the real `python -m multitask train`
    path) / a plain single-process PyTorch loop over the same model and the same batches
    (target >= 0.9). The 2-core box is shared with other jobs, so throughput is taken per window
    of a few steps (the engine's own metrics.jsonl; the plain loop's windows before and after the
    Ray run) and the ratio is given for the best windows (least disturbed) and for the medians;
  * padding efficiency of the training batches (real residues / padded positions, target >= 0.9);
  * on a GPU: model FLOPs utilisation in bf16 (6 * params * tokens + attention term, over the
    GPU's dense bf16 peak; target >= 40% on an H100) of the base model (30 x 1024): (a) a plain
    loop on full 512-residue rows (no padding, flash attention), (b) the engine (DeepSpeed bf16)
    and the same plain loop on the real mixture's residue-budget batches (32,768 residues).
    Without a GPU the code of (a) runs on the CPU with a tiny model (no MFU is claimed) so that it
    stays correct.

The engine side is Ray Train (1 worker); `--local` runs it in this process instead
(engine.loop.run_plain: the same worker function and DeepSpeed, no Ray), for machines without Ray.
On a GPU the plain loop runs there too, in bf16 autocast (the engine's `bf16: auto`).

Usage: python bench/bench_multitask.py [--steps 40] [--data DIR] [--local]  (DIR holds corpus/,
ss_train/, deeploc_train/ shard dirs, e.g. runs/demo/data; default: built from ../shared/data into
a temp dir)
"""
from __future__ import annotations

import argparse
import itertools
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


def bench_config(data: Path, storage: Path, name: str, steps: int, workers: int, preset: str = "demo.yaml",
                 extra: tuple[str, ...] = ()):
    return load(REPO / "multitask/configs" / preset, [
        f"mixture.sources=[{{path: {data}/corpus, weight: 0.4}}, {{path: {data}/ss_train, weight: 0.3}}, "
        f"{{path: {data}/deeploc_train, weight: 0.3}}]",
        "eval.ss_test=", "eval.deeploc_test=", f"train.max_steps={steps}", f"train.log_every={WINDOW}",
        f"train.checkpoint_every={steps}", f"ray.storage_path={storage}", f"ray.name={name}",
        f"ray.num_workers={workers}", "ray.cpus_per_worker=2", "ray.local_num_cpus=2", "wandb.mode=disabled", *extra])


def engine_windows(cfg, local: bool) -> tuple[list[float], dict]:
    """Train `cfg` through the engine (Ray Train, or run_plain with `local`); the residues/s of
    each logged window (the first, warm-up, left out) and the last metrics."""
    from engine.launch import train_task
    metrics = train_task(MultitaskTask, cfg, local=local)
    log = Path(cfg.ray.storage_path) / cfg.ray.name / "metrics.jsonl"
    history = [json.loads(line) for line in log.read_text().splitlines()]
    return [h["residues_per_s"] for h in history if "residues_per_s" in h][1:], metrics


def plain_loop(cfg, steps: int, window: int, in_loop: bool = False, precision: str = "bf16") -> list[float]:
    """Residues/s per window of `window` steps (the first window, warm-up, left out): plain
    PyTorch, same model and batches as the engine's rank 0 (same plan, same collate and rng
    seeds), AdamW + clipping + schedule. `in_loop`: the batches are made inside the timed loop, as
    the in-process engine (run_plain) makes them; else before it (Ray Data makes them in other
    processes). On a GPU: `precision` "bf16" = bf16 weights (the engine's DeepSpeed bf16
    arithmetic) or "autocast" = fp32 weights under bf16 autocast; on a CPU fp32."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    task = MultitaskTask(cfg)
    feed = Feed(task.train_data(), cfg, task, rank=0, world=1)  # the engine's batches, made in-process
    batches = itertools.islice(feed.batches(feed.plan(0), 0), steps)
    if not in_loop:
        batches = list(batches)
    bf16_weights = device == "cuda" and precision == "bf16"
    model = task.build_model().to(device, torch.bfloat16 if bf16_weights else torch.float32).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                            weight_decay=cfg.optim.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.optim, cfg.train.max_steps))
    rates, residues, start = [], 0, time.perf_counter()
    for i, b in enumerate(batches):
        if i and i % window == 0:
            sync(device)
            if i > window:
                rates.append(residues / (time.perf_counter() - start))
            start, residues = time.perf_counter(), 0
        tensors = {k: v.to(device) if torch.is_tensor(v) else v for k, v in b.tensors.items()}
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda" and precision == "autocast"):
            loss, _ = task.loss(model, tensors)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.deepspeed.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        residues += b.residues
    sync(device)
    rates.append(residues / (time.perf_counter() - start))
    return rates


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure_mfu(cfg: ModelConfig, device: str, batch: int, length: int, steps: int, precision: str = "autocast",
                compile_blocks: bool = False, profile: bool = False) -> tuple[float, float]:
    """(achieved FLOP/s, tokens/s) of training steps on `device` on full rows (no padding mask, so
    SDPA may use the flash kernel). `precision`: "autocast" (fp32 weights, bf16 autocast) or
    "bf16" (bf16 weights, as DeepSpeed bf16 trains); `compile_blocks`: torch.compile each block
    (one graph shared by all blocks); `profile`: print the top kernels of the timed steps."""
    torch.manual_seed(0)
    model = MultitaskEncoder(cfg).to(device, torch.bfloat16 if precision == "bf16" else torch.float32).train()
    if compile_blocks:
        model.compile_blocks()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")
    tokens = torch.randint(5, 25, (batch, length), device=device)
    lengths = torch.full((batch,), length, device=device)  # full rows: no mask -> flash kernel on GPU
    targets = torch.randint(5, 25, (batch, length), device=device)
    prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) if profile else None
    for i in range(steps + 3):
        if i == 3:
            sync(device)
            start = time.perf_counter()
            if prof is not None:
                prof.__enter__()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "autocast"):
            out = model(tokens, lengths)
        loss = torch.nn.functional.cross_entropy(out["mlm"].float().flatten(0, 1), targets.flatten())
        loss = loss + out["ss3"].float().mean() + out["location"].float().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync(device)
    seconds = time.perf_counter() - start
    if prof is not None:
        prof.__exit__(None, None, None)
        print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=15, max_name_column_width=70))
    n_tokens = steps * batch * (length + 1)  # +1: the <cls> position
    flops = flops_per_token(cfg, model.num_params(non_embedding=True), length + 1) * n_tokens
    return flops / seconds, n_tokens / seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=48)
    ap.add_argument("--data", type=Path)
    ap.add_argument("--local", action="store_true", help="engine side in this process (engine.loop.run_plain), no Ray")
    ap.add_argument("--base-steps", type=int, default=4 * WINDOW, help="GPU: steps of the base model on real batches")
    ap.add_argument("--compile", action="store_true", help="GPU: also measure with torch.compile'd blocks (model.compile)")
    ap.add_argument("--only-real", action="store_true",
                    help="GPU: only the base model on real batches (no demo-size comparison, no full-row MFU)")
    ap.add_argument("--profile", action="store_true", help="GPU: top kernels of the 64-row bf16 MFU steps")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="GPU: config overrides of the base-model runs on real batches")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_multitask_"))
    data = args.data or build_shards(tmp / "data")
    cfg = prepare(bench_config(data, tmp / "runs", "ray1", args.steps, workers=1))
    print(f"model {cfg.model.dim}x{cfg.model.layers}, {args.steps} steps of <= {cfg.data.residues_per_batch} "
          f"residues, mixture {cfg.mixture.proteins_per_epoch} proteins from {data}")

    path = "engine.loop.run_plain (DeepSpeed in-process, no Ray)" if args.local else "Ray Train (1 worker) + DeepSpeed"
    print(f"device: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'}; engine path: {path}")

    if not (args.only_real and torch.cuda.is_available()):
        plain = plain_loop(cfg, args.steps, WINDOW, in_loop=args.local)
        engine, metrics = engine_windows(cfg, args.local)
        plain += plain_loop(cfg, args.steps, WINDOW, in_loop=args.local)
        task = MultitaskTask(cfg)
        plan = Feed(task.train_data(), cfg, task, rank=0, world=1).plan(0)
        # The box is shared with other jobs: compare the least-disturbed windows (best of N) and medians.
        print(f"plain PyTorch loop, {len(plain)} windows of {WINDOW} steps (before + after the engine run): "
              f"best {max(plain):.0f}, median {np.median(plain):.0f} residues/s")
        print(f"{path}, {len(engine)} windows: best {max(engine):.0f}, "
              f"median {np.median(engine):.0f} residues/s")
        print(f"RATIO throughput engine / plain = {max(engine) / max(plain):.3f} best-of-windows, "
              f"{np.median(engine) / np.median(plain):.3f} median  (target >= 0.9)")
        print(f"RATIO padding efficiency = {plan.padding_efficiency:.3f} over a full epoch "
              f"({plan.batches} batches); in the engine run {metrics['padding_efficiency']:.3f}  (target >= 0.9)")

    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
        base = load(REPO / "multitask/configs/base.yaml").model
        variants = [] if args.only_real else [("autocast", 16, False), ("bf16", 16, False), ("bf16", 64, False)]
        if args.compile and not args.only_real:
            variants.append(("bf16", 64, True))
        for precision, batch, compiled in variants:
            achieved, tps = measure_mfu(base, "cuda", batch=batch, length=512, steps=10, precision=precision,
                                        compile_blocks=compiled, profile=args.profile and batch == 64 and not compiled)
            mfu = f"{achieved / peak:.3f}" if peak else "unknown peak"
            print(f"GPU {name}: base model ({base.dim}x{base.layers}), {batch} x 512 full rows, "
                  f"{'bf16 weights' if precision == 'bf16' else 'bf16 autocast'}{', compiled blocks' if compiled else ''}: "
                  f"{tps:.0f} tokens/s, {achieved / 1e12:.1f} TFLOP/s; RATIO MFU = {mfu}  (target >= 0.40 on H100)")
        for compiled in (False, True) if args.compile else (False,):
            real_batches(data, tmp / "runs", args.base_steps, args.local, peak, compiled, overrides=tuple(args.set))
    else:
        achieved, tps = measure_mfu(ModelConfig(dim=64, layers=2, heads=4), "cpu", batch=4, length=128, steps=2)
        print(f"no GPU: MFU not measured (the bf16 code path ran on CPU with a tiny model: {tps:.0f} tokens/s)")


def real_batches(data: Path, storage: Path, steps: int, local: bool, peak: float | None, compiled: bool = False,
                 preset: str = "base.yaml", overrides: tuple[str, ...] = ()) -> None:
    """The base model on the real mixture's batches (base.yaml's 32,768-residue budget, 512-residue
    pieces, one micro-batch per step): the engine in bf16 and the plain loop with bf16 weights and
    in bf16 autocast; `compiled`: model.compile (each block torch.compile'd). MFU counts real
    residues only (not <cls> or padding) at the attention term of 512 positions."""
    cfg = prepare(bench_config(data, storage, "base-compiled" if compiled else "base", steps, 1, preset,
                               ("deepspeed.grad_accum_steps=1", "mixture.proteins_per_epoch=20000",
                                f"model.compile={str(compiled).lower()}", *overrides)))
    # cuDNN attention plans (and compiled graphs) are made once per batch shape and process: a first
    # pass over the same batches puts every side after it on an equal footing
    plain_loop(cfg, steps, WINDOW, in_loop=local)
    plain = {p: plain_loop(cfg, steps, WINDOW, in_loop=local, precision=p)
             for p in (("bf16",) if compiled else ("bf16", "autocast"))}
    engine, metrics = engine_windows(cfg, local)
    model = cfg.model
    per_residue = flops_per_token(model, MultitaskEncoder(model).num_params(non_embedding=True), cfg.data.max_length)
    runs = [(f"plain loop, {'bf16 weights' if p == 'bf16' else 'bf16 autocast'}", r) for p, r in plain.items()]
    for name, rates in runs + [("engine, DeepSpeed bf16", engine)]:
        rate = float(np.median(rates))
        mfu = f"{rate * per_residue / peak:.3f}" if peak else "unknown peak"
        print(f"base model, real batches{', compiled blocks' if compiled else ''}, {name}: median of {len(rates)} "
              f"windows {rate:,.0f} residues/s, {rate * per_residue / 1e12:.1f} TFLOP/s, MFU {mfu}")
    print(f"RATIO base model{' (compiled blocks)' if compiled else ''} engine / plain bf16 weights (medians) = "
          f"{np.median(engine) / np.median(plain['bf16']):.3f}; padding efficiency {metrics['padding_efficiency']:.3f}")


if __name__ == "__main__":
    main()
