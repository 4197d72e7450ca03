"""Embedding extraction speed and memory.

Model: a small randomly initialised biLSTM LM from pretrain.model (hidden 256, projection 64,
so 128-dim per layer, sum of 3 layers as SeqVec) exported per docs/contracts.md; trained
weights would run at the same speed. Data: the first N proteins of the real DeepLoc test file.

1. Speed: `python -m finetune embed` machinery (residue-budget length-sorted batches,
   inference mode; in-process and through Ray Data with one actor) vs a batch-size-1 fp32
   loop over the same proteins (torch.no_grad, one protein per forward pass).
2. Memory: peak RSS of a fresh process embedding one real protein concatenated to 4,000 and
   to 35,000 residues with windows of 4,000 (bilstm and a random 2-layer encoder, whose
   attention would need O(L^2) memory without windows).

Usage: python bench/bench_embed.py [--proteins 300] [--device cuda] [--local] [--hidden 2048 --proj 256]
(--local: no Ray Data run, for machines without Ray; --hidden/--proj: the biLSTM's size, e.g.
PEvoLM's 2048/256; on a GPU both sides run there.)
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

SHARED = Path(os.environ.get("PROTLM_SHARED_DATA", REPO.parent / "shared" / "data")) / "deeploc"


def make_bilstm(path: Path, hidden: int = 256, proj: int = 64) -> Path:
    from safetensors.torch import save_file

    from data_prep.vocab import save_tokenizer, vocab_hash
    from pretrain.model import BiLSTMConfig, BiLSTMLM

    torch.manual_seed(0)
    cfg = BiLSTMConfig(hidden=hidden, proj=proj, input_proj=proj, dropout=0.0)
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in BiLSTMLM(cfg).state_dict().items()}, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps({"kind": "bilstm", "model": asdict(cfg), "embedding": {},
                                                  "vocab_hash": vocab_hash()}))
    save_tokenizer(path)
    return path


def make_encoder(path: Path) -> Path:
    from safetensors.torch import save_file

    from data_prep.vocab import save_tokenizer, vocab_hash
    from multitask.model import ModelConfig, MultitaskEncoder

    torch.manual_seed(0)
    cfg = ModelConfig(dim=128, layers=2, heads=4, dropout=0.0)
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in MultitaskEncoder(cfg).state_dict().items()}, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps({"kind": "encoder", "model": cfg.__dict__, "embedding": {},
                                                  "vocab_hash": vocab_hash()}))
    save_tokenizer(path)
    return path


def batch1_loop(embedder, token_arrays) -> float:
    t0 = time.perf_counter()
    with torch.no_grad():
        for t in token_arrays:
            tokens = torch.from_numpy(t.astype(np.int64))[None]
            embedder.embed(tokens, torch.tensor([len(t)])).cpu().numpy()
    return time.perf_counter() - t0


def _peak_rss_child(export: str, length: int, queue, threads: int) -> None:
    from data_prep.vocab import encode
    from finetune.config import EmbedConfig
    from finetune.embedders import load_embedder
    from finetune.extract import BatchEmbedder
    from test_finetune_data import read_fasta

    torch.set_num_threads(threads)
    seq = read_fasta(SHARED / "deeploc_test_set.fasta")[0][1]
    tokens = encode((seq * (length // len(seq) + 1))[:length])
    embedder = load_embedder(export)
    t0 = time.perf_counter()
    (out,), _ = BatchEmbedder(embedder, EmbedConfig(batch_residues=16000, chunk_residues=4000)).embed([tokens])
    queue.put((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, out.nbytes / 2**20,
               time.perf_counter() - t0))


def peak_rss(export: Path, length: int, threads: int) -> tuple[float, float, float]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_peak_rss_child, args=(str(export), length, queue, threads))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--proteins", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: stable timings on a shared 2-core machine; both sides use the same)")
    ap.add_argument("--device", default="cpu", help="where both sides embed (cpu, cuda)")
    ap.add_argument("--local", action="store_true", help="skip the Ray Data run (machines without Ray)")
    ap.add_argument("--hidden", type=int, default=256, help="biLSTM cell size")
    ap.add_argument("--proj", type=int, default=64, help="biLSTM projection size")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from data_prep.shards import read_table, residue_arrays
    from finetune.config import EmbedConfig
    from finetune.embedders import load_embedder
    from finetune.extract import BatchEmbedder, run_embed
    from test_finetune_data import deeploc_shards

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bilstm, encoder = make_bilstm(tmp / "bilstm", args.hidden, args.proj), make_encoder(tmp / "encoder")
        shards = deeploc_shards(SHARED / "deeploc_test_set.fasta", tmp / "shards", limit=args.proteins)
        flat, offsets, _ = residue_arrays(read_table(shards).column("tokens"), np.uint8)
        token_arrays = [flat[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
        residues = sum(len(t) for t in token_arrays)
        embedder = load_embedder(str(bilstm), args.device)
        print(f"model: random biLSTM (pretrain.model.BiLSTMLM hidden {args.hidden}, proj {args.proj}, dim {embedder.dim}); "
              f"{len(token_arrays)} DeepLoc test proteins, {residues} residues; device {args.device}"
              + (f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else ""))
        BatchEmbedder(embedder, EmbedConfig()).embed(token_arrays[:8])  # warm-up (cuDNN plans, allocator)

        base = batch1_loop(embedder, token_arrays)
        print(f"batch-size-1 fp32 loop: {base:.1f}s ({residues / base:,.0f} residues/s)")
        cfg = EmbedConfig(batch_residues=16000, max_batch_size=64)
        t0 = time.perf_counter()
        BatchEmbedder(embedder, cfg).embed(token_arrays)
        local = time.perf_counter() - t0
        print(f"finetune BatchEmbedder (residue-budget batches, fp32, in-process): {local:.1f}s ({residues / local:,.0f} residues/s)")
        bf16 = EmbedConfig(batch_residues=16000, max_batch_size=64, dtype="bfloat16")
        t0 = time.perf_counter()
        BatchEmbedder(embedder, bf16).embed(token_arrays)
        local_bf16 = time.perf_counter() - t0
        print(f"finetune BatchEmbedder (residue-budget batches, bf16 autocast, in-process): {local_bf16:.1f}s "
              f"({residues / local_bf16:,.0f} residues/s)"
              + (" [cuDNN runs the LSTMs in fp16 under autocast]" if args.device.startswith("cuda") else ""))
        if args.local:
            print(f"RATIO embed_speedup_inprocess_fp32 = {base / local:.1f}x; inprocess_bf16 = {base / local_bf16:.1f}x "
                  f"(target >= 5x)")
            return
        cfg = EmbedConfig(batch_residues=16000, max_batch_size=64, num_actors=2, rows_per_task=64, dtype="bfloat16")

        import ray
        ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False, configure_logging=False)
        from ray.data import DataContext
        DataContext.get_current().enable_progress_bars = False
        t0 = time.perf_counter()
        run_embed(str(bilstm), shards, tmp / "emb", cfg)
        via_ray = time.perf_counter() - t0
        ray.shutdown()
        print(f"python -m finetune embed path (Ray Data, 2 actors of 1 CPU, bf16, Parquet written): {via_ray:.1f}s "
              f"({residues / via_ray:,.0f} residues/s, includes Ray Data start-up)")
        print(f"RATIO embed_speedup_inprocess_fp32 = {base / local:.1f}x; inprocess_bf16 = {base / local_bf16:.1f}x; "
              f"ray_data_2_actors_bf16 = {base / via_ray:.1f}x (target >= 5x)")

        for name, export in (("bilstm", bilstm), ("encoder", encoder)):
            for length in (4000, 35000):
                rss, out_mb, secs = peak_rss(export, length, args.threads)
                print(f"memory {name} L={length}: process peak RSS {rss:.0f} MiB (output array {out_mb:.0f} MiB), {secs:.1f}s")
        print("(an unwindowed encoder on 35,000 residues would need "
              f"{35001**2 * 4 * 4 / 2**30:.0f} GiB for one layer's fp32 attention scores alone)")


if __name__ == "__main__":
    main()
