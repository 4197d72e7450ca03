"""CE and KL of the joint loss against a hand computation on a toy PSSM; PSSM loading."""
from __future__ import annotations

import math

import numpy as np
import torch

from data_prep.pssm_format import PSSM_ORDER, parse_pssm
from data_prep.vocab import STANDARD, VOCAB
from pretrain.losses import LossConfig, lm_loss, pssm_probabilities
from pretrain.task import collate_rows


def test_pssm_columns_are_remapped_to_vocabulary_order_and_normalised():
    row = np.zeros(20, np.uint8)
    row[PSSM_ORDER.index("R")] = 30
    row[PSSM_ORDER.index("W")] = 70
    zero = np.zeros(20, np.uint8)
    p, ok = pssm_probabilities(np.concatenate([row, zero]), np.array([False, True]))
    assert ok.tolist() == [True, False]
    assert p[0, STANDARD.index("R")] == np.float32(0.3) and p[0, STANDARD.index("W")] == np.float32(0.7)
    assert p[0].sum() == np.float32(1.0) and p[1].sum() == 0


def test_real_pssm_rows_become_probabilities(shared_data):
    f = sorted((shared_data / "pssm").glob("*.pssm"))[0]
    pssm = parse_pssm(f.read_bytes())
    p, ok = pssm_probabilities(pssm.percent.reshape(-1), pssm.zero_row)
    assert np.allclose(p[ok].sum(1), 1.0, atol=1e-5)
    assert (ok == ~pssm.zero_row).all()
    # every residue's column moved to its vocabulary position, scaled by the row total
    total = pssm.percent[ok].sum(1, dtype=np.float64)
    for c in STANDARD:
        assert np.allclose(p[ok, STANDARD.index(c)] * total, pssm.percent[ok, PSSM_ORDER.index(c)], atol=1e-3)


def test_ce_and_kl_match_a_hand_computation():
    """One protein 'ACD' with a PSSM, one protein 'W' + padding without: hand-computed terms."""
    torch.manual_seed(0)
    V = 30
    tokens = torch.tensor([[VOCAB["A"], VOCAB["C"], VOCAB["D"]], [VOCAB["W"], VOCAB["K"], 0]])
    lengths = torch.tensor([3, 2])
    logits = torch.randn(4, 3, V)  # direction layout [fwd b0, fwd b1, rev b0, rev b1]
    logq = torch.log_softmax(torch.randn(4, 3, 20), -1)
    pssm = torch.zeros(2, 3, 20)
    pssm[0, 0, :4] = 0.25
    pssm[0, 1, 1], pssm[0, 1, 2] = 0.5, 0.5
    pssm[0, 2, 7] = 1.0
    mask = torch.tensor([[True, False, True], [False, False, False]])  # row 1 of protein 0 "all zero"
    cfg = LossConfig(w_ce=0.25, w_kl=0.75)
    joint, logs = lm_loss(logits, logq, tokens, lengths, pssm, mask, cfg)

    def nll(row, pos, target):
        return -torch.log_softmax(logits[row, pos], -1)[target].item()

    def kl(p, row, pos):
        return sum(pi * (math.log(pi) - logq[row, pos, j].item()) for j, pi in enumerate(p.tolist()) if pi > 0)

    # protein 0 (len 3): fwd h0->tok1, h1->tok2; reversed seq D C A: rev h0->C, rev h1->A
    # protein 1 (len 2): fwd h0->K; reversed K W: rev h0->W
    ce_terms = [nll(0, 0, VOCAB["C"]), nll(0, 1, VOCAB["D"]), nll(2, 0, VOCAB["C"]), nll(2, 1, VOCAB["A"]),
                nll(1, 0, VOCAB["K"]), nll(3, 0, VOCAB["W"])]
    # KL: targets are PSSM columns of the predicted positions; only informative rows of protein 0
    # fwd h1 -> position 2 (informative); fwd h0 -> position 1 (zero row, skipped)
    # rev h1 -> original position 0 (informative); rev h0 -> original position 1 (skipped)
    kl_terms = [kl(pssm[0, 2], 0, 1), kl(pssm[0, 0], 2, 1)]
    ce, kld = np.mean(ce_terms), np.mean(kl_terms)
    assert logs["ce"][1].item() == 6 and logs["kl"][1].item() == 2
    assert math.isclose(logs["ce"][0].item() / 6, ce, rel_tol=1e-5)
    assert math.isclose(logs["kl"][0].item() / 2, kld, rel_tol=1e-5)
    assert math.isclose(joint.item(), 0.25 * ce + 0.75 * kld, rel_tol=1e-5)


def test_batch_without_any_pssm_trains_on_ce_only():
    tokens = torch.tensor([[VOCAB["A"], VOCAB["C"]]])
    logits = torch.randn(2, 2, 30, requires_grad=True)
    logq = torch.log_softmax(torch.randn(2, 2, 20, requires_grad=True), -1)
    joint, logs = lm_loss(logits, logq, tokens, torch.tensor([2]), torch.zeros(1, 2, 20),
                          torch.zeros(1, 2, dtype=torch.bool), LossConfig())
    assert logs["kl"][1].item() == 0 and logs["kl"][0].item() == 0
    assert math.isclose(joint.item(), 0.25 * logs["ce"][0].item() / 2, rel_tol=1e-6)


def test_collate_slices_pieces_and_marks_missing_pssm():
    pssm = np.arange(5 * 20, dtype=np.uint8) % 7 + 1
    rows = [{"tokens": np.arange(5, 10, dtype=np.uint8), "pssm": pssm, "zero_row": np.array([0, 0, 1, 0, 0], bool)},
            {"tokens": np.array([5, 6, 7], np.uint8), "pssm": None, "zero_row": None}]
    batch = collate_rows(rows, np.array([1, 0]), np.array([3, 3]))
    assert batch["tokens"].tolist() == [[6, 7, 8], [5, 6, 7]]
    assert batch["pssm_mask"].tolist() == [[True, False, True], [False, False, False]]
    expected, _ = pssm_probabilities(pssm[20:80])
    assert np.allclose(batch["pssm"][0, 0].numpy(), expected[0])
