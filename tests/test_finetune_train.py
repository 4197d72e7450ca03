"""Heads on frozen embeddings through the engine: LA vs majority on real DeepLoc, Ray Train with a
failure and best-epoch selection, the CNN, configs, CLI."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from engine.checkpoint import latest_checkpoint, load_export
from engine.errors import UserError
from engine.loop import EVAL_EPOCH, Faults
from engine.sources import Mixture
from engine.stream import Feed
from data_prep.labels import labels_deeploc
from finetune.__main__ import main
from finetune.config import FinetuneConfig, load_config
from finetune.data import load_embeddings, stratified_holdout
from finetune.experiment import load_head, run_protein, run_residue, train_head
from finetune.extract import run_embed
from finetune.standardize import standardize
from finetune.task import HeadTask
from test_finetune_data import deeploc_shards, flip_shards

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "finetune" / "configs").glob("*.yaml"))


def head_cfg(*overrides, **data) -> FinetuneConfig:
    cfg = load_config(None, [*overrides, "wandb.mode=disabled"])
    return replace(cfg, data=replace(cfg.data, **data))


@pytest.fixture(scope="module")
def onehot_deeploc(shared_data, tmp_path_factory):
    """One-hot embeddings of the DeepLoc training file (our_val) and the DeepLoc test file."""
    root = tmp_path_factory.mktemp("deeploc")
    out = {}
    for name, fasta in (("train", "deeploc_our_val_set.fasta"), ("test", "deeploc_test_set.fasta")):
        shards = deeploc_shards(shared_data / "deeploc" / fasta, root / f"{name}_shards")
        run_embed("onehot", shards, root / name, use_ray=False)
        out[name] = root / name
    return out


def test_la_on_onehot_beats_majority_on_real_deeploc_test(onehot_deeploc, tmp_path):
    cfg = head_cfg("optim.lr=0.003", "train.max_epochs=20", "train.patience=6", "data.max_length=1000",
                   "train.bootstrap=200", train=str(onehot_deeploc["train"]), test=str(onehot_deeploc["test"]))
    rows = {r["method"]: r for r in run_protein(cfg, tmp_path, "onehot", ("la", "majority"), local=True,
                                                log=lambda *_: None)}
    la, majority = rows["la"], rows["majority"]
    assert la["n"] == 2768 and majority["q10"] == pytest.approx(806 / 2768)  # Nucleus is the test majority
    assert la["q10"] >= majority["q10"] + 0.05, (la["q10"], majority["q10"])
    assert la["mcc"] > 0.1 and 0 < la["q10_se"] < 0.02
    assert la["membrane_q2"] > majority["membrane_q2"]
    assert la["split_excluded_from_location_loss"] == 23 and la["split_valid"] == 168
    run = tmp_path / "runs" / "onehot-la-seed0"
    assert (tmp_path / "confusion_la.png").is_file() and (latest_checkpoint(run) / "model.safetensors").is_file()


def small_deeploc_embeddings(shared_data: Path, root: Path) -> dict[str, str]:
    """One-hot embeddings of every 4th protein of the DeepLoc training file (420) and every 20th of
    the test file (139): seconds to train on."""
    d = shared_data / "deeploc"
    for name, fasta, stride in (("train", "deeploc_our_val_set.fasta", 4), ("test", "deeploc_test_set.fasta", 20)):
        run_embed("onehot", deeploc_shards(d / fasta, root / f"{name}_shards", stride=stride), root / name, use_ray=False)
    return {"train": str(root / "train"), "test": str(root / "test")}


@pytest.fixture(scope="module")
def small_deeploc(shared_data, tmp_path_factory):
    return small_deeploc_embeddings(shared_data, tmp_path_factory.mktemp("small_deeploc"))


def test_test_set_without_membrane_labels_evaluates_and_results_are_written_per_seed(shared_data, small_deeploc,
                                                                                   tmp_path):
    # a published DeepLoc-style file: real test proteins under a set tag of its own, every membrane label U
    records = (shared_data / "deeploc" / "deeploc_test_set.fasta").read_text().split(">")[1:][::20]
    fasta = tmp_path / "new_set.fasta"
    fasta.write_text("".join(f">{h.split()[0]} {h.split()[1].rpartition('-')[0]}-U new_set PIDE<20%\n{seq}"
                             for h, seq in (r.split("\n", 1) for r in records)))
    assert labels_deeploc([str(fasta)], tmp_path / "shards")["rows"] == 139
    run_embed("onehot", tmp_path / "shards", tmp_path / "emb", use_ray=False)
    out = tmp_path / "out"
    assert main(["deeploc", "--train", small_deeploc["train"], "--test", str(tmp_path / "emb"), "--out", str(out),
                 "--methods", "mlp,at,majority", "--epochs", "1", "--seeds", "0,1", "--local", "--no-wandb"]) == 0
    rows = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in rows] == ["mlp", "at", "majority"] and all(r["n"] == 139 for r in rows)
    for r in rows:  # location metrics as usual; membrane metrics null, shown as "–"
        assert 0 < r["q10"] < 1 and r["membrane_n"] == 0
        assert all(r[k] is None for k in ("membrane_q2", "membrane_q2_se", "membrane_mcc", "membrane_mcc_se"))
    assert rows[0]["seeds"] == 2 and [s["seed"] for s in rows[0]["per_seed"]] == [0, 1]
    assert rows[0]["q10_per_seed"] == [s["q10"] for s in rows[0]["per_seed"]]
    assert rows[0]["per_seed"][1]["membrane_q2"] is None
    assert (out / "results.md").read_text().count("| – | – |") == 3

    # a run that fails after its first seed keeps that seed's results
    class Interrupted(Exception):
        pass

    def log(line: str) -> None:
        if line.startswith("onehot-mlp-seed1:"):  # the second seed finished training
            raise Interrupted

    cfg = head_cfg("train.max_epochs=1", "train.seeds=[0,1]", train=small_deeploc["train"], test=small_deeploc["test"])
    with pytest.raises(Interrupted):
        run_protein(cfg, tmp_path / "late", "onehot", ("mlp",), local=True, log=log)
    (saved,) = json.loads((tmp_path / "late" / "results.json").read_text())
    assert saved["method"] == "mlp" and saved["seeds"] == 1 and [s["seed"] for s in saved["per_seed"]] == [0]
    assert saved["membrane_q2"] is not None  # this test set has M/S labels
    assert "| onehot | mlp |" in (tmp_path / "late" / "results.md").read_text()


def _validation_loss(cfg: FinetuneConfig, run_dir: Path) -> float:
    """The selected model's loss on the validation rows, recomputed here in one process."""
    task, model, _ = load_head(run_dir, cfg)
    feed = Feed(Mixture(task.eval_data()), cfg, task, rank=0, world=1, training=False)
    sums: dict[str, list[float]] = {}
    with torch.no_grad():
        for ready in feed.batches(feed.plan(EVAL_EPOCH), EVAL_EPOCH):
            for name, (total, count) in task.loss(model, ready.tensors)[1].items():
                acc = sums.setdefault(name, [0.0, 0.0])
                acc[0] += float(total)
                acc[1] += float(count)
    return task.summarize({k: a / b for k, (a, b) in sums.items()})["loss"]


@pytest.mark.slow
def test_la_under_ray_train_two_workers_resumes_after_failure_and_selects_best_epoch(onehot_deeploc, tmp_path,
                                                                                    ray_session):
    # lr 0.02 overfits within a few epochs, so the best validation epoch comes before the last
    cfg = head_cfg("optim.lr=0.02", "train.max_epochs=7", "train.patience=3", "ray.num_workers=2",
                   "ray.max_failures=1", f"ray.storage_path={tmp_path}", "ray.name=la2",
                   train=str(onehot_deeploc["train"]))
    out = train_head(cfg, faults=Faults(fail_once_at_step=20))  # in epoch 2 (about 16 steps per rank and epoch)
    run_dir = tmp_path / "la2"
    assert (run_dir / ".injected_failure_20").exists()  # rank 1 crashed once; Ray restarted from epoch 1's checkpoint
    log = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    epochs = [m["epoch"] for m in log]
    assert epochs == list(range(1, len(log) + 1)) and 4 <= len(log) <= 7  # every epoch reported once, in order
    steps = [m["step"] for m in log]
    assert 14 <= steps[0] < 20 < steps[1] and all(12 <= b - a <= 20 for a, b in zip(steps, steps[1:]))
    assert all(m["padding_efficiency"] > 0.85 for m in log)
    best = min(log, key=lambda m: m["eval_loss"])
    assert out["best_epoch"] == best["epoch"] and out["best_eval_loss"] == pytest.approx(best["eval_loss"])
    assert out["epoch"] == min(7, best["epoch"] + 3)  # stopped by patience, or at max_epochs
    config, _ = load_export(latest_checkpoint(run_dir))
    assert config["kind"] == "finetune-head" and config["train"]["selected"]["epoch"] == best["epoch"]
    # the export is the selected epoch's model: its validation loss, recomputed in one process, is the best one
    assert _validation_loss(cfg, run_dir) == pytest.approx(best["eval_loss"], rel=1e-4)
    if best["epoch"] < out["epoch"]:
        state = json.loads((latest_checkpoint(run_dir) / "train_state.json").read_text())
        assert state["evals_since_best"] == out["epoch"] - best["epoch"] and state["world_size"] == 2


def test_cnn_on_onehot_flip_beats_majority_state(shared_data, tmp_path):
    flip = shared_data / "secondary_structure" / "flip"
    train = run_embed("onehot", flip_shards(flip, tmp_path / "tr", ("train", "valid"), limit=1500), tmp_path / "etr", use_ray=False)
    test = run_embed("onehot", flip_shards(flip, tmp_path / "te", ("test",)), tmp_path / "ete", use_ray=False)
    assert train["rows"] == 1500 and test["rows"] == 364
    cfg = head_cfg("model.head=cnn", "optim.lr=0.003", "train.max_epochs=4", "train.patience=2",
                   "data.residues_per_batch=40000", "data.long_proteins=window", "train.bootstrap=100",
                   train=str(tmp_path / "etr"), test=str(tmp_path / "ete"))
    (row,) = run_residue(cfg, tmp_path / "out", "onehot", local=True, log=lambda *_: None)
    ss3 = np.concatenate([v[v >= 0] for v in load_embeddings(tmp_path / "ete").residue_labels["ss3"]])
    majority = np.bincount(ss3).max() / len(ss3)
    assert row["test_set"] == "flip" and row["tasks"] == ["ss3", "disorder"]  # FLIP has no 8-state labels
    assert row["q3"] >= majority + 0.05, (row["q3"], majority)
    # disorder is weighted by inverse class frequency of the training residues (the hold-out excluded)
    keep, held, _ = HeadTask(cfg).split
    assert len(keep) == 1350 and len(held) == 150  # these 1500 rows have no split=valid rows: 10% hold-out
    disorder = load_embeddings(tmp_path / "etr", False).residue_labels["disorder"]
    labels = np.concatenate([disorder[i] for i in keep])
    counts = np.bincount(labels[labels >= 0], minlength=2)
    config = json.loads((latest_checkpoint(tmp_path / "out" / "runs" / "onehot-cnn-seed0") / "config.json").read_text())
    np.testing.assert_allclose(config["class_weights"]["disorder"], counts.sum() / (2 * counts))
    assert config["class_weights"]["disorder"][1] > 5  # disordered residues are rare
    assert row["disorder_mcc"] > 0.1 and 0 < row["disorder_fpr"] < 0.5  # unweighted, the CNN never predicted disorder
    # no 8-state training labels: Q8 is null in results.json and "–" in the table, never a number
    (saved,) = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["q8"] is None and saved["q8_se"] is None and saved["q3"] == pytest.approx(row["q3"])
    assert [s["seed"] for s in saved["per_seed"]] == [0] and saved["q3_per_seed"] == [row["q3"]]
    table_row = (tmp_path / "out" / "results.md").read_text().splitlines()[-1].split(" | ")
    assert table_row[4] == "–" and table_row[3].startswith(f"{100 * row['q3']:.1f} ± ")


def test_stratified_holdout_is_seeded_and_stratified():
    labels = np.repeat(np.arange(5), [100, 50, 20, 9, 2])
    keep, held = stratified_holdout(labels, 0.1, 3)
    assert np.array_equal(held, stratified_holdout(labels, 0.1, 3)[1])
    assert not np.array_equal(held, stratified_holdout(labels, 0.1, 4)[1])
    assert np.bincount(labels[held]).tolist() == [10, 5, 2, 1, 1]
    assert len(np.intersect1d(keep, held)) == 0 and len(keep) + len(held) == len(labels)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert cfg.model.head in ("la", "mlp", "cnn") and cfg.train.seeds


def test_config_errors_name_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {max_epochs: 3, epoch: 3}\n")
    with pytest.raises(UserError, match=r"bad.yaml: train.epoch: unknown key"):
        load_config(bad)
    bad.write_text("model: {head: transformer}\n")
    with pytest.raises(UserError, match=r"bad.yaml: model.head"):
        load_config(bad)
    bad.write_text("train: {seeds: [a]}\n")
    with pytest.raises(UserError, match=r"bad.yaml: train.seeds\[0\]: expected an integer"):
        load_config(bad)


def test_cli_deeploc_baselines_and_table(onehot_deeploc, tmp_path, capsys):
    out = tmp_path / "onehot"
    assert main(["deeploc", "--train", str(onehot_deeploc["train"]), "--test", str(onehot_deeploc["test"]),
                 "--out", str(out), "--methods", "at,majority,mlp", "--epochs", "3", "--seeds", "0,1", "--local"]) == 0
    rows = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in rows] == ["at", "majority", "mlp"] and rows[2]["seeds"] == 2
    assert rows[0]["q10"] > rows[1]["q10"]  # annotation transfer beats the majority class
    assert any((out / "wandb").glob("offline-run-*"))  # W&B ran offline
    # the results run carries a confusion matrix per method; each head run logged its curves
    tables = (out / "wandb").glob("offline-run-*/files/media/table/test/*/confusion_*.table.json")
    assert sorted(t.parent.name for t in tables) == ["at", "majority", "mlp"]
    head = out / "runs" / "onehot-mlp-seed0"
    assert json.loads((head / "run.json").read_text())["job_type"] == "finetune-head"
    assert any(head.glob("wandb/offline-run-*")) and len((head / "metrics.jsonl").read_text().splitlines()) >= 3
    assert main(["table", str(out), "--out", str(tmp_path / "t"), "--methods", "mlp,at,majority"]) == 0
    text = (tmp_path / "t" / "results.md").read_text()
    assert text.index("| onehot | mlp |") < text.index("| onehot | at |") and "±" in text
    assert main(["deeploc", "--train", str(onehot_deeploc["train"]), "--test", str(onehot_deeploc["test"]),
                 "--out", str(tmp_path / "x"), "--methods", "knn", "--no-wandb", "--local"]) == 2
    assert "unknown method" in capsys.readouterr().err


def test_crop_keeps_both_ends(onehot_deeploc):
    data = load_embeddings(onehot_deeploc["train"])
    i = int(np.argmax(data.lengths))  # the 13,100-residue protein
    task = HeadTask(head_cfg(train=str(onehot_deeploc["train"])))
    table = pq.read_table(next((onehot_deeploc["train"] / "data").glob("*.parquet")), columns=task.columns)
    row = {k: v[i] for k, v in table.to_pydict().items()}
    row["embedding"] = np.frombuffer(row["embedding"], np.uint8)
    # the engine's crop hands a 1000-residue window starting anywhere; the task keeps the ends instead
    batch = task.collate_eval([row], np.array([5000]), np.array([1000]), np.random.default_rng(0))
    x = batch["x"][0].T.numpy()
    assert x.shape == (1000, 21) and batch["mask"].all()
    np.testing.assert_array_equal(x[:500], standardize(data.residues[i][:500], task.stats))
    np.testing.assert_array_equal(x[500:], standardize(data.residues[i][-500:], task.stats))
