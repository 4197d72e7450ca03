"""Training heads on frozen embeddings: LA vs majority on real DeepLoc, Ray Train, CNN, configs, CLI."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from finetune.__main__ import main
from finetune.config import DataConfig, ExperimentConfig, ModelConfig, TrainConfig, load_config
from finetune.data import load_embeddings, stratified_holdout
from finetune.errors import FinetuneError
from finetune.experiment import run_protein, run_residue
from finetune.extract import run_embed
from finetune.ray_train import fit_with_ray
from finetune.train import predict
from test_finetune_data import deeploc_shards, flip_shards

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "finetune" / "configs").glob("*.yaml"))


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
    cfg = ExperimentConfig(data=DataConfig(train=str(onehot_deeploc["train"]), test=str(onehot_deeploc["test"])),
                           train=TrainConfig(lr=3e-3, epochs=20, patience=6, batch_residues=30000, crop=1000, bootstrap=200))
    rows = {r["method"]: r for r in run_protein(cfg, tmp_path, "onehot", ("la", "majority"), log=lambda *_: None)}
    la, majority = rows["la"], rows["majority"]
    assert la["n"] == 2768 and majority["q10"] == pytest.approx(806 / 2768)  # Nucleus is the test majority
    assert la["q10"] >= majority["q10"] + 0.05, (la["q10"], majority["q10"])
    assert la["mcc"] > 0.1 and 0 < la["q10_se"] < 0.02
    assert la["membrane_q2"] > majority["membrane_q2"]
    assert la["split_excluded_from_location_loss"] == 23 and la["split_valid"] == 168
    assert (tmp_path / "confusion_la.png").is_file() and (tmp_path / "la" / "model_seed0.pt").is_file()


def test_ray_train_two_workers(onehot_deeploc, tmp_path, ray_session):
    data = load_embeddings(onehot_deeploc["train"])
    keep, held = stratified_holdout(data.labels["location_id"], 0.1, 0)
    train_cfg = TrainConfig(lr=3e-3, epochs=2, patience=5, batch_residues=30000, num_workers=2)
    model, result = fit_with_ray(ModelConfig(head="la"), train_cfg, data.subset(keep[:600]), data.subset(held), 0,
                                 tmp_path, "la-2workers")
    assert result.epochs_run == 2 and 0 <= result.best_epoch <= 1 and np.isfinite(result.best_val_loss)
    assert len(result.history) == 2 and result.history[-1]["train_loss"] > 0
    preds = predict(model, data.subset(held), train_cfg)
    assert preds["location"].shape == (len(held),) and set(np.unique(preds["location"])) <= set(range(10))


def test_cnn_on_onehot_flip_beats_majority_state(shared_data, tmp_path):
    flip = shared_data / "secondary_structure" / "flip"
    train = run_embed("onehot", flip_shards(flip, tmp_path / "tr", ("train", "valid"), limit=1500), tmp_path / "etr", use_ray=False)
    test = run_embed("onehot", flip_shards(flip, tmp_path / "te", ("test",)), tmp_path / "ete", use_ray=False)
    assert train["rows"] == 1500 and test["rows"] == 364
    cfg = ExperimentConfig(data=DataConfig(train=str(tmp_path / "etr"), test=str(tmp_path / "ete")),
                           model=ModelConfig(head="cnn"),
                           train=TrainConfig(lr=3e-3, epochs=4, patience=2, batch_residues=40000, bootstrap=100))
    (row,) = run_residue(cfg, tmp_path / "out", "onehot", log=lambda *_: None)
    ss3 = np.concatenate([v[v >= 0] for v in load_embeddings(tmp_path / "ete").residue_labels["ss3"]])
    majority = np.bincount(ss3).max() / len(ss3)
    assert row["test_set"] == "flip" and row["tasks"] == ["ss3", "disorder"]  # FLIP has no 8-state labels
    assert row["q3"] >= majority + 0.05, (row["q3"], majority)
    assert "disorder_mcc" in row and 0 <= row["disorder_fpr"] <= 1


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
    bad.write_text("train: {lr: 0.1, epoch: 3}\n")
    with pytest.raises(FinetuneError, match=r"bad.yaml: train.epoch: unknown key"):
        load_config(bad)
    bad.write_text("model: {head: transformer}\n")
    with pytest.raises(FinetuneError, match=r"bad.yaml: config key model.head"):
        load_config(bad)
    bad.write_text("train: {seeds: [a]}\n")
    with pytest.raises(FinetuneError, match=r"bad.yaml: train.seeds\[0\]: expected an integer"):
        load_config(bad)


def test_cli_deeploc_baselines_and_table(onehot_deeploc, tmp_path, capsys):
    out = tmp_path / "onehot"
    assert main(["deeploc", "--train", str(onehot_deeploc["train"]), "--test", str(onehot_deeploc["test"]),
                 "--out", str(out), "--methods", "at,majority,mlp", "--epochs", "3", "--seeds", "0,1"]) == 0
    rows = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in rows] == ["at", "majority", "mlp"] and rows[2]["seeds"] == 2
    assert rows[0]["q10"] > rows[1]["q10"]  # annotation transfer beats the majority class
    assert any((out / "wandb").glob("offline-run-*"))  # W&B ran offline
    assert main(["table", str(out), "--out", str(tmp_path / "t"), "--methods", "mlp,at,majority"]) == 0
    text = (tmp_path / "t" / "results.md").read_text()
    assert text.index("| onehot | mlp |") < text.index("| onehot | at |") and "±" in text
    assert main(["deeploc", "--train", str(onehot_deeploc["train"]), "--test", str(onehot_deeploc["test"]),
                 "--out", str(tmp_path / "x"), "--methods", "knn", "--no-wandb"]) == 2
    assert "unknown method" in capsys.readouterr().err


def test_crop_keeps_both_ends(onehot_deeploc):
    from finetune.train import collate

    data = load_embeddings(onehot_deeploc["train"])
    i = int(np.argmax(data.lengths))  # the 13,100-residue protein
    batch = collate(data, np.array([i]), per_residue=False, crop=1000)
    x = batch["x"][0].T.numpy()
    assert x.shape == (1000, 21) and batch["mask"].all()
    np.testing.assert_array_equal(x[:500], data.residues[i][:500])
    np.testing.assert_array_equal(x[500:], data.residues[i][-500:])
