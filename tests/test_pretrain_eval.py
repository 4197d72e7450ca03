"""`pretrain eval` (held-out CE against the unigram baseline) and `pretrain export --layers/--combine`
on a briefly trained model and real shards."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from _pretrain_shards import build_shards
from data_prep.shards import read_table
from engine.sources import residue_arrays
from test_pretrain_train import small_cfg


@pytest.fixture(scope="module")
def trained(shared_data, tmp_path_factory):
    from engine.loop import run_plain
    from pretrain.task import BiLSTMTask

    tmp = tmp_path_factory.mktemp("pretrain_eval")
    shards = build_shards(shared_data, tmp / "shards", n_pssm=20, n_plain=60)
    run_plain(BiLSTMTask, small_cfg(shards, tmp / "runs", "brief", "train.max_steps=2", "wandb.mode=disabled",
                                    "train.checkpoint_every=2"))
    return shards, tmp / "runs" / "brief", tmp


def test_export_records_the_chosen_layers_and_refuses_bad_ones(trained, capsys):
    from pretrain.__main__ import main

    _, run, tmp = trained
    assert main(["export", "--run", str(run), "--out", str(tmp / "sum12"), "--layers", "1,2", "--combine", "sum"]) == 0
    assert json.loads((tmp / "sum12" / "config.json").read_text())["embedding"]["layers"] == [1, 2]
    assert main(["export", "--run", str(run), "--out", str(tmp / "bad"), "--layers", "1,5"]) == 2
    assert "--layers" in capsys.readouterr().err and not (tmp / "bad").exists()


def test_heldout_ce_is_scored_against_the_corpus_unigram(trained, tmp_path):
    from pretrain.__main__ import main

    shards, run, tmp = trained
    assert main(["export", "--run", str(run), "--out", str(tmp / "model")]) == 0
    out = tmp_path / "lm.json"
    assert main(["eval", "--model", str(tmp / "model"), "--data", str(shards), "--train", str(shards),
                 "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    # the baseline, computed independently: add-one smoothed frequencies of the training tokens,
    # every residue but the first (forward) and every residue but the last (backward) predicted
    flat, off, _ = residue_arrays(read_table(shards, ["tokens"])["tokens"], np.uint8)
    counts = np.bincount(flat, minlength=int(flat.max()) + 1).astype(float)
    rows = [flat[off[i]:off[i + 1]] for i in range(len(off) - 1) if off[i + 1] - off[i] >= 2]
    vocab = json.loads((tmp / "model" / "config.json").read_text())["model"].get("vocab_size")
    counts = np.pad(counts, (0, (vocab or len(counts)) - len(counts))) + 1.0
    counts[0] = 0.0  # PAD is never a target
    logp = np.log(np.where(counts > 0, counts / counts.sum(), 1.0))
    total = sum(-logp[r[1:]].sum() - logp[r[:-1]].sum() for r in rows)
    n = sum(2 * (len(r) - 1) for r in rows)
    assert r["predictions"] == n and r["proteins"] == len(rows)
    assert r["unigram_ce"] == pytest.approx(total / n, rel=1e-6)
    assert 2.7 < r["unigram_ce"] < 3.1  # real protein composition: about 2.9 nats
    # two steps teach almost nothing: the model is still above the baseline, near uniform
    assert r["unigram_ce"] < r["ce"] < math.log(25) + 0.2 and r["ce_minus_unigram"] > 0


def test_eval_names_a_missing_shard_dir(trained, tmp_path, capsys):
    from pretrain.__main__ import main

    _, _, tmp = trained
    assert main(["eval", "--model", str(tmp / "model"), "--data", str(tmp_path / "nope"), "--train",
                 str(tmp_path / "nope")]) == 2
    assert "nope" in capsys.readouterr().err
