"""What other tools open as they are: `datasets.load_dataset` on shard directories,
`AutoTokenizer.from_pretrained` on exports, h5py on both embedding HDF5 files (the bio_embeddings
convention), the console scripts, and what the W&B runs carry (job type, metric goals, the
finetune confusion matrix)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import REPO, SAMPLE
from data_prep.labels import LOCATIONS, labels_deeploc
from data_prep.shards import read_manifest, read_table
from data_prep.vocab import MASK_ID, PAD_ID, UNK_ID, encode
from finetune.data import load_embeddings
from finetune.extract import REDUCED_HDF5, run_embed

BAD_RECORDS = ">BAD1 Nucleus-S\nMKV1*Q\n>BAD2 Nucleus-S\n\n"  # a digit in the sequence; an empty one


def _load_dataset(path, *args):
    import datasets

    datasets.disable_progress_bars()
    return datasets.load_dataset(str(path), *args, cache_dir=str(Path(path).parent / "hf_cache"))


@pytest.fixture(scope="module")
def deeploc_dir(tmp_path_factory):
    """Real DeepLoc shards (the bundled sample's test set) with two rejected records."""
    root = tmp_path_factory.mktemp("interop")
    fasta = root / "deeploc.fasta"
    fasta.write_text((SAMPLE / "deeploc" / "deeploc_test_set.fasta").read_text() + BAD_RECORDS)
    labels_deeploc([str(fasta)], root / "deeploc")
    return root / "deeploc"


def test_load_dataset_reads_exactly_the_written_rows(deeploc_dir):
    manifest = read_manifest(deeploc_dir)
    assert sum(manifest["rejected"].values()) == 2 and (deeploc_dir / "README.md").is_file()
    ds = _load_dataset(deeploc_dir)
    assert list(ds) == ["train"]
    written = read_table(deeploc_dir)
    assert ds["train"].num_rows == manifest["rows"] == written.num_rows > 0
    assert ds["train"]["id"] == written.column("id").to_pylist()
    first = ds["train"][0]
    assert np.frombuffer(first["tokens"], np.uint8).tolist() == encode(first["sequence"]).tolist()
    rejects = _load_dataset(deeploc_dir, "rejects")["train"]
    assert sorted(rejects["id"]) == ["BAD1", "BAD2"]


def test_embed_writes_loadable_shards_and_both_hdf5_files(deeploc_dir, tmp_path):
    per_residue = tmp_path / "embeddings_file.h5"
    manifest = run_embed("onehot", deeploc_dir, tmp_path / "emb", hdf5=str(per_residue), use_ray=False)
    emb = load_embeddings(tmp_path / "emb")
    ds = _load_dataset(tmp_path / "emb")["train"]
    assert ds.num_rows == manifest["rows"] == len(emb)
    assert sorted(ds["id"]) == sorted(emb.ids)
    with h5py.File(tmp_path / "emb" / REDUCED_HDF5) as reduced, h5py.File(per_residue) as full:
        assert sorted(reduced) == sorted(full) == sorted(emb.ids)
        for pid, residues, pooled in list(zip(emb.ids, emb.residues, emb.pooled))[:50]:
            assert reduced[pid].shape == (manifest["dim"],) and reduced[pid].dtype == np.float32
            assert reduced[pid].attrs["original_id"] == pid
            np.testing.assert_allclose(reduced[pid][:], pooled)
            assert full[pid].shape == residues.shape == (len(residues), 21)
            np.testing.assert_array_equal(full[pid][:], residues)
            # one-hot: the reduced vector is each residue's share of the protein
            np.testing.assert_allclose(reduced[pid][:].sum(), 1.0, rtol=1e-3)


def _check_tokenizer(export: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(export))
    assert (tok.pad_token_id, tok.mask_token_id, tok.unk_token_id) == (PAD_ID, MASK_ID, UNK_ID)
    seq = "MKVLAAGIVGUOBZX"
    assert tok(seq, add_special_tokens=False)["input_ids"] == encode(seq).tolist()


@pytest.mark.slow
def test_pretrain_export_loads_with_autotokenizer_and_its_run_file(tmp_path, shared_data):
    from _pretrain_shards import build_shards
    from engine.loop import run_plain
    from engine.tracking import RUN_FILE
    from pretrain.__main__ import main
    from pretrain.config import CONFIG_DIR, load
    from pretrain.task import BiLSTMTask

    shards = build_shards(shared_data, tmp_path / "shards", n_pssm=20, n_plain=40)
    cfg = load(CONFIG_DIR / "demo.yaml", [
        f"data.train={shards}", f"ray.storage_path={tmp_path}", "ray.name=tiny", "train.max_steps=2",
        "train.log_every=1", "train.checkpoint_every=100", "model.embed_dim=8", "model.input_proj=16",
        "model.hidden=32", "model.proj=16", "data.residues_per_batch=2048", "data.max_length=128",
        "deepspeed.zero_stage=0", "wandb.mode=disabled", "wandb.group=interop"])
    run_plain(BiLSTMTask, cfg)
    assert main(["export", "--run", str(tmp_path / "tiny"), "--out", str(tmp_path / "export")]) == 0
    _check_tokenizer(tmp_path / "export")
    info = json.loads((tmp_path / "tiny" / RUN_FILE).read_text())
    assert info["job_type"] == "bilstm" and info["group"] == "interop"
    assert info["config"]["train"]["max_steps"] == 2 and info["config"]["git_commit"]


@pytest.mark.slow
def test_multitask_export_loads_with_autotokenizer(tmp_path):
    from multitask.__main__ import export_run
    from multitask.task import MultitaskTask
    from engine.loop import run_plain
    from test_multitask_data import real_shards
    from test_multitask_train import small_config
    from multitask.task import prepare

    shards = real_shards(n_corpus=100, n_ss_train=60, n_deeploc_test=30)
    cfg = prepare(small_config(shards, tmp_path, "mt", "train.max_steps=2", "ray.num_workers=1", "model.dim=16",
                               "eval.limit=10"))
    run_plain(MultitaskTask, cfg)
    _check_tokenizer(export_run(tmp_path / "mt", tmp_path / "export"))


def test_console_scripts_resolve_and_ops_is_packaged():
    import tomllib

    from setuptools import find_packages

    scripts = {ep.name: ep for ep in entry_points(group="console_scripts") if ep.name.startswith("protlm-")}
    assert set(scripts) == {"protlm-data-prep", "protlm-pretrain", "protlm-multitask", "protlm-finetune",
                            "protlm-compare"}
    for ep in scripts.values():
        assert callable(ep.load())
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    declared = pyproject["project"]["scripts"]
    assert {k: v for k, v in declared.items()} == {name: ep.value for name, ep in scripts.items()}
    packages = find_packages(str(REPO), **pyproject["tool"]["setuptools"]["packages"]["find"])
    assert {"ops", "data_prep", "engine", "pretrain", "multitask", "finetune"} <= set(packages)
    exe = Path(sys.executable).parent / "protlm-compare"
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--out" in out.stdout


def test_tracker_sets_job_type_metric_goals_and_logs_the_confusion_matrix(tmp_path, monkeypatch):
    from engine.config import WandbSection
    from engine.tracking import Tracker, metric_goal
    from finetune.report import log_results

    monkeypatch.setenv("WANDB_MODE", "offline")
    assert [metric_goal(k) for k in ("loss", "loss/mlm", "eval_location_ce", "perplexity", "eval_location_acc",
                                     "test/la/q10", "test/la/q10_se", "lr", "grad_norm")] == \
        ["min", "min", "min", "min", "max", "max", "last", "last", "last"]
    tracker = Tracker(WandbSection(mode="offline"), {"task": "bilstm"}, tmp_path / "run", "run", rank=0)
    tracker.log({"loss": 2.0, "q3": 0.5, "lr": 1e-3}, step=1)
    assert tracker.run.job_type == "bilstm"
    assert tracker.goals == {"loss": "min", "q3": "max", "lr": "last"}
    tracker.finish()

    confusion = np.zeros((len(LOCATIONS), len(LOCATIONS)), int)
    confusion[0, 0], confusion[0, 1], confusion[6, 6] = 5, 2, 7
    rows = [{"embedder": "onehot", "method": "la", "q10": 0.8, "q10_se": 0.05, "confusion": confusion.tolist()}]
    log_results(rows, {"embedder": "onehot"}, WandbSection(mode="offline"), "onehot-results", "g", tmp_path / "res")
    assert json.loads((tmp_path / "res" / "run.json").read_text())["job_type"] == "finetune-results"
    tables = list((tmp_path / "res" / "wandb").glob("offline-run-*/files/media/table/test/la/confusion*.table.json"))
    assert len(tables) == 1
    table = json.loads(tables[0].read_text())
    counts = {(r[0], r[1]): r[2] for r in table["data"]}
    assert counts[(LOCATIONS[0], LOCATIONS[1])] == 2 and counts[(LOCATIONS[6], LOCATIONS[6])] == 7
    assert sum(counts.values()) == 14
    assert os.environ["WANDB_MODE"] == "offline"
