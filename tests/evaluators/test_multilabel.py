"""Multi-label evaluation: AP / mAP / AUC / d-prime against scikit-learn and by hand, and the
one-vs-rest probe (its objective against scikit-learn, learning, train-only selection)."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, roc_auc_score

from avssl.cli import UserError
from avssl.evaluators import multilabel
from avssl.evaluators._lbfgs import bce_loss_grad
from avssl.evaluators.features import FeatureSet
from avssl.evaluators.holdout import random_split
from avssl.evaluators.linear_probe import fit_predict_multilabel, standardize
from avssl.evaluators.multilabel import d_prime, multilabel_metrics, per_class
from avssl.evaluators.protocols import SplitPair, parse_protocol
from avssl.evaluators.tasks import run_round


def test_ap_and_auc_match_sklearn_with_ties(monkeypatch):
    rng = np.random.default_rng(0)
    m, c = 200, 12
    scores = np.round(rng.normal(size=(m, c)), 1)  # 1 decimal: many tied scores per class
    scores[:, 3] = np.round(scores[:, 3])  # a class with very few distinct scores
    targets = (rng.random((m, c)) < rng.uniform(0.02, 0.5, c)).astype(np.float32)
    targets[:, 5] = 0  # no positive: no AP, no AUC
    targets[:, 6] = 1  # no negative: AP (= 1), no AUC
    ap, auc = per_class(scores, targets)
    for j in range(c):
        if j == 5:
            assert math.isnan(ap[j]) and math.isnan(auc[j])
            continue
        assert ap[j].item() == pytest.approx(average_precision_score(targets[:, j], scores[:, j]))
        if j == 6:
            assert ap[j].item() == 1.0 and math.isnan(auc[j])
        else:
            assert auc[j].item() == pytest.approx(roc_auc_score(targets[:, j], scores[:, j]))
    res = multilabel_metrics(scores, targets)
    keep = [j for j in range(c) if j != 5]
    want = np.mean([average_precision_score(targets[:, j], scores[:, j]) for j in keep])
    assert res["metrics"]["mAP"] == pytest.approx(100 * want)
    assert res["n_skipped_ap"] == 1 and res["n_skipped_auc"] == 2 and res["n_classes"] == c
    keep = [j for j in range(c) if j not in (5, 6)]
    want = np.mean([roc_auc_score(targets[:, j], scores[:, j]) for j in keep])
    assert res["metrics"]["mAUC"] == pytest.approx(100 * want)
    # the class-chunked loop (a few classes at a time) gives the same numbers
    monkeypatch.setattr(multilabel, "CHUNK_ELEMS", 3 * m)
    ap2, auc2 = per_class(scores, targets)
    torch.testing.assert_close(ap2, ap, equal_nan=True)
    torch.testing.assert_close(auc2, auc, equal_nan=True)


def test_hand_worked_example():
    # class 0: scores 0.9 0.5 0.5 0.5 0.2, labels 0 1 1 0 1 (3 positives; ranks 2-4 tied).
    #   thresholds: 0.9 -> TP 0 of rank 1 (recall 0, adds nothing);
    #               0.5 -> TP 2 of rank 4: recall 2/3 (+2/3), precision 2/4 -> 2/3 * 1/2 = 1/3;
    #               0.2 -> TP 3 of rank 5: recall 1 (+1/3), precision 3/5 -> 1/3 * 3/5 = 1/5.
    #   AP = 1/3 + 1/5 = 8/15 (ordering the tie would give 43/90 or 53/90 instead).
    #   AUC: 6 (positive, negative) pairs, only the two (0.5, 0.5) ties count, half each: 1/6.
    # class 1: the only positive has the top score: AP = 1, AUC = 1.
    # class 2: no positive: left out of mAP and mAUC.
    # class 3: all positive: AP = 1 (precision 1 throughout), left out of mAUC (no negative).
    # mAP = (8/15 + 1 + 1) / 3 = 38/45; mAUC = (1/6 + 1) / 2 = 7/12;
    # d' = sqrt(2) Phi^-1(7/12) = sqrt(2) * 0.2104 = 0.2976.
    scores = np.array(
        [
            [0.9, 0.1, 0.3, 0.5],
            [0.5, 0.2, 0.2, 0.4],
            [0.5, 0.3, 0.1, 0.3],
            [0.5, 0.4, 0.9, 0.2],
            [0.2, 0.5, 0.5, 0.1],
        ]
    )
    targets = np.array([[0, 0, 0, 1], [1, 0, 0, 1], [1, 0, 0, 1], [0, 0, 0, 1], [1, 1, 0, 1]])
    ap, auc = per_class(scores, targets)
    assert ap[0].item() == pytest.approx(8 / 15) and auc[0].item() == pytest.approx(1 / 6)
    assert ap[1].item() == 1.0 and auc[1].item() == 1.0
    assert math.isnan(ap[2]) and math.isnan(auc[2]) and ap[3].item() == 1.0
    res = multilabel_metrics(scores, targets)
    assert res["metrics"]["mAP"] == pytest.approx(100 * 38 / 45)
    assert res["metrics"]["mAUC"] == pytest.approx(100 * 7 / 12)
    assert res["metrics"]["d_prime"] == pytest.approx(0.2976, abs=1e-4)
    assert res["n_skipped_ap"] == 1 and res["n_skipped_auc"] == 2
    # only the order of the scores matters: logits and sigmoid scores agree
    logits = torch.logit(torch.tensor(scores))
    assert multilabel_metrics(logits, targets)["metrics"] == res["metrics"]


def test_d_prime():
    assert d_prime(0.5) == 0.0 and d_prime(1.0) == math.inf and math.isnan(d_prime(math.nan))
    for auc in (0.6, 0.9, 0.97):
        assert d_prime(auc) == pytest.approx(math.sqrt(2) * NormalDist().inv_cdf(auc))


def test_bad_metric_inputs():
    with pytest.raises(ValueError, match="shape"):
        per_class(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="0/1"):
        per_class(np.zeros((3, 2)), np.full((3, 2), 0.5))
    with pytest.raises(ValueError, match="NaN"):
        per_class(np.full((3, 2), np.nan), np.zeros((3, 2)))


def _problem(n: int, seed: int, c: int = 8, d: int = 24):
    """Separable multi-label data: each present class adds its own direction (+ noise)."""
    rng = np.random.default_rng(seed)
    dirs = np.random.default_rng(100).normal(size=(c, d))
    y = (rng.random((n, c)) < 0.15).astype(np.float32)
    x = y @ dirs * 2.0 + 0.7 * rng.normal(size=(n, d)) + 1.0
    return x.astype(np.float32), y


def test_objective_matches_sklearn_one_vs_rest():
    x, y = _problem(300, 1)
    lam = 1e-2
    (a,) = standardize(torch.from_numpy(x).double())
    coefs, inters = [], []
    for j in range(y.shape[1]):
        clf = LogisticRegression(C=1.0 / (lam * len(y)), solver="lbfgs", max_iter=1000, tol=1e-8)
        clf.fit(a.numpy(), y[:, j])
        coefs.append(clf.coef_[0])
        inters.append(clf.intercept_[0])
    theta = torch.cat([torch.tensor(np.array(coefs)).T, torch.tensor(inters)[None]])
    _, grad = bce_loss_grad(theta, a, torch.from_numpy(y).double(), lam)
    assert grad.abs().max().item() < 1e-6  # sklearn's per-class optima are stationary for ours
    x64 = x.astype(np.float64)  # float64: L-BFGS stops on its ftol, gradient ~4e-6 here
    ours = fit_predict_multilabel(x64, y, x64, lambdas=[lam], tol=1e-8, device="cpu")
    torch.testing.assert_close(ours, a @ theta[:-1] + theta[-1], atol=1e-3, rtol=0)


def test_probe_learns_a_separable_problem():
    xtr, ytr = _problem(400, 2)
    xte, yte = _problem(300, 3)
    scores, info = fit_predict_multilabel(xtr, ytr, xte, return_info=True, device="cpu")
    res = multilabel_metrics(scores, yte)
    chance = 100 * yte.mean()  # the AP of a random ranking is the positive rate
    assert chance < 20 and res["metrics"]["mAP"] > 90 and res["metrics"]["mAUC"] > 97
    assert info["lambda"] in info["lambdas"] and len(info["val_mAP"]) == 8
    assert max(info["val_mAP"].values()) == info["val_mAP"][info["lambda"]]


def test_lambda_is_chosen_on_the_train_split_only():
    xtr, ytr = _problem(300, 4)
    xte, _ = _problem(100, 5)
    _, info1 = fit_predict_multilabel(xtr, ytr, xte, return_info=True, device="cpu")
    noise = np.random.default_rng(6).normal(size=xte.shape).astype(np.float32)
    _, info2 = fit_predict_multilabel(xtr, ytr, noise, return_info=True, device="cpu")
    assert info1["lambda"] == info2["lambda"] and info1["val_mAP"] == info2["val_mAP"]
    # through the protocol round: other test labels change the metrics, not the chosen lambda
    raw = {
        "name": "t",
        "dataset": "d",
        "modality": "audio",
        "splits": [{"name": "s", "train": "tr", "test": "te"}],
        "classifier": {"type": "linear_multilabel", "lambdas": [1e-4, 1e-2, 1.0]},
        "metrics": ["mAP", "mAUC", "d_prime"],
    }
    p = parse_protocol(raw)
    pair = SplitPair("s", "te", ["tr"])

    def fs(x, y):
        n = len(x)
        clips, masks = {"audio": torch.from_numpy(x)[:, None]}, {"audio": torch.ones(n, dtype=bool)}
        return FeatureSet([str(i) for i in range(n)], torch.from_numpy(y), clips, masks)

    yte = (np.random.default_rng(7).random((100, 8)) < 0.3).astype(np.float32)
    r1 = run_round(p, fs(xtr, ytr), fs(xte, yte), "audio", pair, 8, "cpu")
    r2 = run_round(p, fs(xtr, ytr), fs(xte, 1 - yte), "audio", pair, 8, "cpu")
    assert r1["lambda"] == r2["lambda"] and r1["val_mAP"] == r2["val_mAP"]
    assert r1["metrics"] != r2["metrics"]


def test_random_split_is_seeded():
    fit, held = random_split(10, 0.2, seed=3)
    assert len(held) == 2 and sorted(np.concatenate([fit, held]).tolist()) == list(range(10))
    assert np.array_equal(held, random_split(10, 0.2, seed=3)[1])
    assert not np.array_equal(held, random_split(10, 0.2, seed=4)[1])
    assert len(random_split(1, 0.9, seed=0)[0]) == 1  # one row is always kept for fitting


def test_probe_input_errors():
    x, y = _problem(20, 8)
    with pytest.raises(ValueError, match="multi-hot"):
        fit_predict_multilabel(x, y[:, 0], x, device="cpu")
    with pytest.raises(ValueError, match="no class has a positive in the held-out"):
        fit_predict_multilabel(x, np.zeros_like(y), x, device="cpu")


def test_knn_on_multilabel_data_is_a_user_error():
    p = parse_protocol(
        {
            "name": "t",
            "dataset": "d",
            "modality": "audio",
            "splits": [{"train": "tr", "test": "te"}],
            "classifier": {"type": "knn"},
        }
    )
    x, y = _problem(10, 9)
    clips, masks = {"audio": torch.from_numpy(x)[:, None]}, {"audio": torch.ones(10, dtype=bool)}
    fs = FeatureSet([str(i) for i in range(10)], torch.from_numpy(y), clips, masks)
    with pytest.raises(UserError, match="'te' is multi-label: linear/kNN/retrieval need one") as e:
        run_round(p, fs, fs, "audio", SplitPair("te", "te", ["tr"]), 8, "cpu")
    assert "\n" not in str(e.value) and "linear_multilabel" in str(e.value)


def test_mean_scores_average_sigmoid_scores_over_clips():
    raw = {
        "name": "t",
        "dataset": "d",
        "modality": "audio",
        "clips_per_video": 2,
        "clip_aggregation": "mean_scores",
        "splits": [{"name": "s", "train": "tr", "test": "te"}],
        "classifier": {"type": "linear_multilabel", "lambdas": [1e-3]},
    }
    p = parse_protocol(raw)
    assert p.metrics == ["mAP", "mAUC"]  # the default: the first two
    xtr, ytr = _problem(120, 10)
    xte, yte = _problem(40, 11)
    noise = np.random.default_rng(12).normal(size=(40, 2, xte.shape[1])).astype(np.float32)
    clips_te = torch.from_numpy(xte[:, None] + noise)  # [M, K=2, D]
    clips_tr = torch.from_numpy(np.stack([xtr, xtr], 1))
    ones = {"audio": torch.ones(40, dtype=bool)}
    fs_tr = FeatureSet(
        [str(i) for i in range(120)],
        torch.from_numpy(ytr),
        {"audio": clips_tr},
        {"audio": torch.ones(120, dtype=bool)},
    )
    fs_te = FeatureSet(
        [str(i) for i in range(40)], torch.from_numpy(yte), {"audio": clips_te}, ones
    )
    r = run_round(p, fs_tr, fs_te, "audio", SplitPair("s", "te", ["tr"]), 8, "cpu")
    logits = fit_predict_multilabel(
        xtr, ytr, clips_te.reshape(80, -1), lambdas=[1e-3], device="cpu"
    )
    probs = logits.double().sigmoid().reshape(40, 2, 8).mean(1)
    assert r["metrics"] == multilabel_metrics(probs, yte)["metrics"]
    assert r["metrics"] != multilabel_metrics(logits.reshape(40, 2, 8).mean(1), yte)["metrics"]
