"""The torch logistic-regression probe against scikit-learn, and its train-only selection."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from avssl.evaluators._lbfgs import bce_loss_grad, loss_grad
from avssl.evaluators.holdout import stratified_split, video_groups
from avssl.evaluators.linear_probe import _fit_torch, fit_predict, standardize


@pytest.fixture(scope="module")
def problem():
    """20 overlapping Gaussian classes in 32-D: top-1 well below 100 %."""
    rng = np.random.default_rng(1)
    means = rng.normal(size=(20, 32))
    ytr, yte = rng.integers(0, 20, 1200), rng.integers(0, 20, 1000)
    xtr = (means[ytr] + 1.7 * rng.normal(size=(1200, 32))).astype(np.float32)
    xte = (means[yte] + 1.7 * rng.normal(size=(1000, 32))).astype(np.float32)
    return xtr, ytr, xte, yte


def _sklearn(xtr, ytr, xte, lam):
    a, b = standardize(torch.from_numpy(xtr).double(), torch.from_numpy(xte).double())
    clf = LogisticRegression(C=1.0 / (lam * len(ytr)), solver="lbfgs", max_iter=1000, tol=1e-7)
    clf.fit(a.numpy(), ytr)
    return clf, a, b


@pytest.mark.parametrize("lam", [1e-2, 1e-4])
def test_agrees_with_sklearn(problem, lam):
    xtr, ytr, xte, yte = problem
    clf, a, b = _sklearn(xtr, ytr, xte, lam)
    acc_sk = 100 * (clf.predict(b.numpy()) == yte).mean()
    scores = fit_predict(xtr, ytr, xte, lambdas=[lam], tol=1e-6, device="cpu")
    pred = scores.argmax(1).numpy()
    acc = 100 * (pred == yte).mean()
    assert 40 < acc_sk < 95  # a problem where the probe matters
    assert abs(acc - acc_sk) <= 0.5
    assert (pred == clf.predict(b.numpy())).mean() >= 0.98
    # C = 1 / (lambda N): sklearn's optimum is (up to tolerance) the optimum of our objective
    theta_sk = torch.cat([torch.from_numpy(clf.coef_.T), torch.from_numpy(clf.intercept_)[None]])
    f_sk = loss_grad(theta_sk, a, torch.from_numpy(ytr), lam)[0].item()
    grad_ours = loss_grad(theta_sk, a, torch.from_numpy(ytr), lam)[1]
    assert grad_ours.abs().max().item() < 1e-6  # sklearn's solution is stationary for ours
    # and our solver reaches the same objective value on the same standardised features
    w, bias = _fit_torch(a, torch.from_numpy(ytr), 20, lam, max_iter=2000, tol=1e-9)
    f_ours = loss_grad(torch.cat([w, bias[None]]), a, torch.from_numpy(ytr), lam)[0].item()
    assert f_ours == pytest.approx(f_sk, rel=1e-6, abs=1e-8)


@pytest.mark.parametrize("objective", ["softmax", "bce"])
def test_in_place_objectives_match_autograd(objective):
    """The hand-written losses (in place in a reused [N, C] buffer) against autograd of the
    textbook formulas, with and without the buffer, and with a stale buffer."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 6, generator=g, dtype=torch.float64)
    theta = torch.randn(7, 4, generator=g, dtype=torch.float64)
    if objective == "softmax":
        y, fn = torch.randint(0, 4, (50,), generator=g), loss_grad
    else:
        y, fn = torch.randint(0, 2, (50, 4), generator=g).double(), bce_loss_grad
    ref = theta.clone().requires_grad_(True)
    z = x @ ref[:6] + ref[6]
    if objective == "softmax":
        data = torch.nn.functional.cross_entropy(z, y)
    else:
        data = torch.nn.functional.binary_cross_entropy_with_logits(z, y, reduction="sum") / 50
    f_ref = data + 0.5 * 1e-2 * (ref[:6] ** 2).sum()
    f_ref.backward()
    work = torch.full((50, 4), 123.0, dtype=torch.float64)  # stale contents must not matter
    for buf in (None, work, work):
        f, grad = fn(theta, x, y, 1e-2, work=buf)
        assert f.item() == pytest.approx(f_ref.item(), rel=1e-12)
        torch.testing.assert_close(grad, ref.grad, rtol=1e-10, atol=1e-12)


def test_sklearn_solver_option_matches_sklearn(problem):
    xtr, ytr, xte, yte = problem
    clf, _, b = _sklearn(xtr, ytr, xte, 1e-3)
    scores = fit_predict(xtr, ytr, xte, lambdas=[1e-3], solver="sklearn", tol=1e-7, max_iter=1000)
    assert (scores.argmax(1).numpy() == clf.predict(b.numpy())).mean() >= 0.99


def test_sweep_uses_only_the_train_split(problem):
    xtr, ytr, xte, yte = problem
    s1, info1 = fit_predict(xtr, ytr, xte, return_info=True, device="cpu")
    noise = np.random.default_rng(5).normal(size=xte.shape).astype(np.float32)
    s2, info2 = fit_predict(xtr, ytr, noise, return_info=True, device="cpu")
    assert info1["lambda"] == info2["lambda"] and info1["val_top1"] == info2["val_top1"]
    assert info1["lambda"] in info1["lambdas"] and len(info1["val_top1"]) == 8
    # the same probe scores the shared test rows identically whatever else is in test_x
    both = np.concatenate([xte[:10], noise[:5]])
    s3 = fit_predict(xtr, ytr, both, device="cpu")
    torch.testing.assert_close(s3[:10], s1[:10])
    acc = 100 * (s1.argmax(1).numpy() == yte).mean()
    assert acc > 60


def test_stratified_split_is_seeded_and_stratified():
    y = np.repeat(np.arange(4), [10, 5, 2, 1])
    fit, held = stratified_split(y, 0.2, seed=3)
    assert sorted(np.concatenate([fit, held]).tolist()) == list(range(len(y)))
    assert np.bincount(y[held], minlength=4).tolist() == [2, 1, 0, 0]  # round(0.2 n), 1 kept
    assert np.array_equal(held, stratified_split(y, 0.2, seed=3)[1])
    assert not np.array_equal(held, stratified_split(y, 0.2, seed=4)[1])


def test_video_groups_from_ucf101_names():
    keys = ["ucf101/A/v_A_g08_c01", "ucf101/A/v_A_g08_c02", "ucf101/A/v_A_g09_c01",
            "ucf101/B/v_B_g08_c01", "other_clip", "ucf101/A/v_A_g08_c03"]  # fmt: skip
    g = video_groups(keys)
    assert g.tolist() == [0, 0, 1, 2, 3, 0]  # A's g08 clips share one id, B's g08 is another
    assert (
        video_groups(["folder/dog/1-100032", "clip_c01", "hmdb51/run/x_walk_f_cm_np1_fr_med_0"])
        is None
    )


def test_video_groups_from_esc50_and_hmdb51_names():
    """ESC-50's takes of one recording and HMDB51's clips of one film share a group."""
    esc = ["esc50/audio/1-100032-A-0", "esc50/audio/1-100032-B-0", "esc50/audio/1-115545-A-48",
           "esc50/audio/2-100032-A-0"]  # fmt: skip
    assert video_groups(esc).tolist() == [0, 0, 1, 2]  # fold 2's recording is another
    hmdb = ["hmdb51/brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0",
            "hmdb51/brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_1",
            "hmdb51/brush_hair/Brushing_my_hair_brush_hair_h_cm_np1_ri_goo_1",
            "hmdb51/cartwheel/(Rad)Schlag_die_Bank!_cartwheel_f_cm_np1_le_med_0",
            "hmdb51/cartwheel/(Rad)Schlag_die_Bank!_cartwheel_f_cm_np1_le_med_1"]  # fmt: skip
    assert video_groups(hmdb).tolist() == [0, 0, 1, 2, 2]


def test_stratified_split_holds_out_whole_groups():
    """Clips of one group (one long video) are never on both sides; each class holds out
    groups until round(0.2 n) clips are out, and keeps at least one group."""
    y = np.repeat([0, 1, 2], [30, 12, 4])
    groups = np.concatenate([np.arange(30) // 3, 100 + np.arange(12) // 4, np.full(4, 200)])
    for seed in range(5):
        fit, held = stratified_split(y, 0.2, seed, groups)
        assert sorted(np.concatenate([fit, held]).tolist()) == list(range(len(y)))
        assert not set(groups[fit]) & set(groups[held])
        counts = np.bincount(y[held], minlength=3).tolist()
        assert counts[0] == 6 and counts[1] == 4  # 2 groups of 3 (target 6); 1 of 4 (target 2)
        assert counts[2] == 0  # a class of one group holds nothing out
    a = stratified_split(y, 0.2, 3, groups)[1]
    assert np.array_equal(a, stratified_split(y, 0.2, 3, groups)[1])
    assert any(not np.array_equal(a, stratified_split(y, 0.2, s, groups)[1]) for s in range(4, 8))


def test_fit_predict_with_groups_reports_and_checks_them(problem):
    xtr, ytr, xte, _ = problem
    groups = np.arange(len(ytr)) // 4
    _, info = fit_predict(xtr, ytr, xte, lambdas=[1e-3, 1e-1], groups=groups, return_info=True)
    assert info["val_groups"] == len(ytr) // 4
    with pytest.raises(ValueError, match="groups must be"):
        fit_predict(xtr, ytr, xte, lambdas=[1e-3, 1e-1], groups=groups[:-1])


def test_standardize_uses_train_statistics():
    tr = torch.tensor([[3.0, 4.0], [0.0, 2.0], [1.0, 0.0]])
    te = torch.tensor([[6.0, 8.0]])
    a, b = standardize(tr, te)
    torch.testing.assert_close(a.mean(0), torch.zeros(2), atol=1e-6, rtol=0)
    torch.testing.assert_close(b, a[:1])  # same direction as train row 0 -> same features


def test_bad_solver():
    with pytest.raises(ValueError, match="solver"):
        fit_predict(np.ones((4, 2)), np.array([0, 1, 0, 1]), np.ones((1, 2)), solver="svm")


def test_bad_features_are_errors(problem):
    """A NaN row used to turn every test logit into NaN (top-1 = the share of class 0), and
    test features of another width stopped in a broadcasting RuntimeError."""
    from avssl.evaluators.linear_probe import fit_predict_multilabel

    xtr, ytr, xte, _ = problem
    bad = xtr.copy()
    bad[5, 0] = np.nan
    with pytest.raises(ValueError, match=r"train_x has 1 row\(s\) with NaN or infinite"):
        fit_predict(bad, ytr, xte, lambdas=[1e-3])
    with pytest.raises(ValueError, match="train_x has D=32 but test_x has D=31"):
        fit_predict(xtr, ytr, xte[:, :31], lambdas=[1e-3])
    hot = np.eye(20)[ytr]
    with pytest.raises(ValueError, match="train_x has D=32 but test_x has D=31"):
        fit_predict_multilabel(xtr, hot, xte[:, :31], lambdas=[1e-3])


def test_class_ids_beyond_num_classes_are_errors():
    """Used to stop in the loss's "index 3 is out of bounds" RuntimeError."""
    with pytest.raises(ValueError, match=r"train_y has class id 4, but num_classes is 3"):
        fit_predict(np.eye(5), np.arange(5), np.eye(5)[:2], num_classes=3, lambdas=[1e-3])
