"""Metrics against known values, seeded bootstrap, tables and the confusion PNG."""
from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import matthews_corrcoef

from engine import metrics as M
from finetune.report import confusion_png, markdown_table, write_results


def test_gorodkin_mcc_equals_sklearn_multiclass():
    rng = np.random.default_rng(0)
    true = rng.integers(0, 10, 500)
    pred = np.where(rng.random(500) < 0.4, true, rng.integers(0, 10, 500))
    assert M.gorodkin_mcc(M.confusion(true, pred, 10)) == pytest.approx(matthews_corrcoef(true, pred), abs=1e-12)
    assert M.gorodkin_mcc(M.confusion(true, true, 10)) == pytest.approx(1.0)
    binary_true, binary_pred = true % 2, pred % 2
    assert M.gorodkin_mcc(M.confusion(binary_true, binary_pred, 2)) == pytest.approx(
        matthews_corrcoef(binary_true, binary_pred), abs=1e-12)


def test_q3_and_per_class_on_a_hand_example():
    # 8 residues, -1 = unresolved (ignored): 5 of 7 labelled residues correct -> Q3 = 5/7.
    true = np.array([0, 0, 1, 1, 2, 2, 2, -1])
    pred = np.array([0, 1, 1, 1, 2, 0, 2, 0])
    c = M.confusion(true, pred, 3)
    assert M.accuracy(c) == pytest.approx(5 / 7)
    np.testing.assert_allclose(M.per_class_accuracy(c), [0.5, 1.0, 2 / 3])
    out = M.residue_metrics({"ss3": [true[:4], true[4:]]}, {"ss3": [pred[:4], pred[4:]]},
                            eval_mask=[np.ones(4), np.array([1, 1, 0, 1])], n_boot=10)
    assert out["q3"] == pytest.approx(4 / 6)  # eval_mask drops residue 6 (a correct one)
    assert out["ss3_residues"] == 6


def test_disorder_mcc_and_false_positive_rate():
    true = np.array([0, 0, 0, 0, 1, 1])
    pred = np.array([0, 1, 0, 0, 1, 0])
    c = M.confusion(true, pred, 2)
    assert M.false_positive_rate(c) == pytest.approx(1 / 4)
    assert M.gorodkin_mcc(c) == pytest.approx(matthews_corrcoef(true, pred))


def test_bootstrap_standard_error_is_seeded_and_sensible():
    rng = np.random.default_rng(1)
    true = rng.integers(0, 10, 2000)
    pred = np.where(rng.random(2000) < 0.5, true, (true + 1) % 10)
    a = M.location_metrics(true, pred, n_boot=1000, seed=7)
    b = M.location_metrics(true, pred, n_boot=1000, seed=7)
    c = M.location_metrics(true, pred, n_boot=1000, seed=8)
    assert a["q10_se"] == b["q10_se"] and a["mcc_se"] == b["mcc_se"]
    assert a["q10_se"] != c["q10_se"]
    analytic = np.sqrt(a["q10"] * (1 - a["q10"]) / 2000)  # binomial standard error of an accuracy
    assert a["q10_se"] == pytest.approx(analytic, rel=0.1)


def test_location_metrics_count_unlabelled_rows():
    out = M.location_metrics(np.array([0, 1, -1, 1]), np.array([0, 0, 5, 1]), n_boot=20)
    assert out["n"] == 3 and out["unlabelled"] == 1 and out["q10"] == pytest.approx(2 / 3)
    mem = M.membrane_metrics(np.array([1, 0, -1, 0]), np.array([1, 0, 1, 1]), n_boot=20)
    assert mem["q2"] == pytest.approx(2 / 3) and mem["unlabelled"] == 1


def test_confusion_png_and_results_table(tmp_path):
    confusion_png([[3, 1], [0, 4]], ["a", "b"], tmp_path / "c.png", "t")
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = [{"embedder": "onehot", "method": "la", "q10": 0.4123, "q10_se": 0.0091, "mcc": 0.25, "mcc_se": 0.01}]
    table = markdown_table(rows)
    assert "| onehot | la | 41.2 ± 0.9 | 0.250 ± 0.010 | – | – |" in table
    write_results(rows, tmp_path / "r", "title")
    assert json.loads((tmp_path / "r" / "results.json").read_text())[0]["q10"] == 0.4123
