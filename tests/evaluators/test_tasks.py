"""One protocol round (``avssl.evaluators.tasks.run_round``): what it fits on and scores with
several clips per video, which samples it leaves out, and what it records of the probe's fits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avssl.cli import UserError
from avssl.evaluators._lbfgs import bce_loss_grad
from avssl.evaluators.evaluate import _fit_notes
from avssl.evaluators.features import FeatureSet
from avssl.evaluators.holdout import mean_over_samples, random_split, stratified_split
from avssl.evaluators.knn import knn_predict
from avssl.evaluators.linear_probe import (
    _fit_torch,
    fit_predict,
    fit_predict_multilabel,
    standardize,
)
from avssl.evaluators.multilabel import mean_average_precision
from avssl.evaluators.protocols import SplitPair, parse_protocol
from avssl.evaluators.tasks import run_round

PAIR = SplitPair("s", "te", ["tr"])


def _protocol(classifier: dict, aggregation: str = "mean_features", clips: int = 3):
    return parse_protocol(
        {
            "name": "t",
            "dataset": "d",
            "modality": ["audio", "video", "joint"],
            "clips_per_video": clips,
            "clip_aggregation": aggregation,
            "splits": [{"name": "s", "train": "tr", "test": "te"}],
            "classifier": classifier,
        }
    )


def _features(n: int, seed: int, classes: int = 4, k: int = 3, spread: float = 1.5):
    """``n`` samples of ``classes`` Gaussian classes, ``k`` clips each scattered around the
    sample (clip means differ from clips), audio and video alike."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    centres = torch.randn(classes, 16, generator=torch.Generator().manual_seed(99)) * 2
    sample = centres[y] + torch.randn(n, 16, generator=g)
    clips = sample[:, None] + spread * torch.randn(n, k, 16, generator=g)  # [N, K, D]
    ones = torch.ones(n, dtype=torch.bool)
    keys = [f"d/{seed}/{i}" for i in range(n)]
    return FeatureSet(keys, y, {"audio": clips, "video": clips.flip(2)}, {"audio": ones,
                      "video": ones.clone()})  # fmt: skip


def test_mean_scores_probe_is_fitted_on_single_clips():
    """Scored on single clips, fitted on single clips (each clip a row with its sample's
    label, a sample's clips held out together), not on clip means."""
    p = _protocol({"type": "linear", "lambdas": [1e-3, 1e-1]}, "mean_scores")
    fs_tr, fs_te = _features(40, 0), _features(20, 1)
    r = run_round(p, fs_tr, fs_te, "audio", PAIR, 4, "cpu")
    clips_tr = fs_tr.get("audio", per_clip=True).reshape(120, -1)
    clips_te = fs_te.get("audio", per_clip=True).reshape(60, -1)
    logits, info = fit_predict(
        clips_tr, fs_tr.labels.repeat_interleave(3), clips_te, num_classes=4, device="cpu",
        lambdas=[1e-3, 1e-1], samples=np.repeat(np.arange(40), 3), return_info=True,
    )  # fmt: skip
    probs = logits.double().softmax(1).reshape(20, 3, 4).mean(1)
    want = 100 * (probs.argmax(1) == fs_te.labels).double().mean().item()
    assert r["metrics"]["top1"] == pytest.approx(want)
    assert r["lambda"] == info["lambda"] and r["val_on"] == "samples"
    assert r["val_top1"] == info["val_top1"]
    means, _ = fit_predict(fs_tr.get("audio"), fs_tr.labels, clips_te, num_classes=4,
                           device="cpu", lambdas=[info["lambda"]], return_info=True)  # fmt: skip
    assert not torch.allclose(means, logits)  # what the round did before: a different probe


def test_mean_scores_lambda_is_chosen_on_held_out_samples_scored_by_their_mean():
    """With ``mean_scores`` the held-out part holds whole samples and each lambda's score is
    the top-1 of the samples' clip-averaged softmax, the way the test split is scored (it
    used to be the top-1 of single held-out clips)."""
    fs = _features(60, 0, spread=3.0)
    x = fs.get("audio", per_clip=True).reshape(180, -1)
    y = fs.labels.repeat_interleave(3)
    samples = np.repeat(np.arange(60), 3)
    grid = [1e-4, 1e-2, 1.0]
    _, info = fit_predict(x, y, x[:3], num_classes=4, device="cpu", lambdas=grid,
                          samples=samples, return_info=True)  # fmt: skip
    assert info["val_on"] == "samples"
    xs, _ = standardize(x, x[:3])
    fi, vi = stratified_split(y.numpy(), 0.2, 0, samples)
    assert not set(samples[fi]) & set(samples[vi])  # no sample on both sides
    wb, per_clip = None, {}
    for lam in sorted(grid, reverse=True):  # the sweep's order and warm starts
        wb = _fit_torch(xs[fi], y[fi], 4, lam, init=wb, max_iter=500, tol=1e-4)
        logits = torch.addmm(wb[1], xs[vi], wb[0])
        prob, target = mean_over_samples(logits, y[vi], samples[vi], "softmax")
        assert len(prob) == len(set(samples[vi].tolist()))
        want = 100 * (prob.argmax(1) == target).double().mean().item()
        assert info["val_top1"][lam] == pytest.approx(want)
        per_clip[lam] = 100 * (logits.argmax(1) == y[vi]).double().mean().item()
    assert per_clip != info["val_top1"]  # the per-clip score differs here: the test can fail


def test_mean_scores_knn_votes_among_training_clips():
    """With ``mean_scores`` each test clip votes among the training *clips*, as the probes
    are fitted on them (it voted among the training samples' clip means: 90 % here)."""
    p = _protocol({"type": "knn", "k": [5], "temperature": 0.07}, "mean_scores")
    fs_tr, fs_te = _features(40, 3, spread=5.0), _features(20, 13, spread=5.0)
    r = run_round(p, fs_tr, fs_te, "audio", PAIR, 4, "cpu")
    test_clips = fs_te.get("audio", per_clip=True).reshape(60, -1)

    def top1(bank: torch.Tensor, labels: torch.Tensor) -> float:
        votes = knn_predict(bank, labels, test_clips, 5, 0.07, 4, device="cpu").double()
        share = (votes / votes.sum(1, keepdim=True)).reshape(20, 3, 4).mean(1)
        return 100 * (share.argmax(1) == fs_te.labels).double().mean().item()

    clips = top1(
        fs_tr.get("audio", per_clip=True).reshape(120, -1), fs_tr.labels.repeat_interleave(3)
    )
    assert r["metrics"]["k5_top1"] == pytest.approx(clips)
    assert clips != top1(fs_tr.get("audio"), fs_tr.labels)  # the bank of clip means: another


def test_mean_over_samples_averages_each_samples_probabilities():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.0, 3.0], [1.0, 1.0]])
    y = torch.tensor([1, 0, 1, 0])
    prob, target = mean_over_samples(logits, y, np.array([7, 3, 7, 3]), "softmax")
    soft = logits.double().softmax(1)
    torch.testing.assert_close(
        prob, torch.stack([(soft[1] + soft[3]) / 2, (soft[0] + soft[2]) / 2])
    )
    assert target.tolist() == [0, 1]  # samples 3, 7 in sorted order
    sig, _ = mean_over_samples(logits, y, np.array([0, 0, 1, 1]), "sigmoid")
    torch.testing.assert_close(sig[1], logits[2:].double().sigmoid().mean(0))


def test_samples_split_across_groups_are_refused():
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 0, 1])
    with pytest.raises(ValueError, match="rows of one sample lie in several groups"):
        fit_predict(x, y, x, lambdas=[1e-3, 1e-1], groups=np.array([0, 0, 1, 1]),
                    samples=np.array([0, 1, 1, 2]), device="cpu")  # fmt: skip
    with pytest.raises(ValueError, match=r"samples must be \[4\]"):
        fit_predict(x, y, x, lambdas=[1e-3], samples=np.arange(3), device="cpu")


def test_random_split_with_groups_holds_out_whole_groups():
    groups = np.repeat(np.arange(10), 3)
    fit, held = random_split(30, 0.2, seed=0, groups=groups)
    assert len(held) == 6 and not set(groups[fit]) & set(groups[held])
    assert np.array_equal(np.sort(np.concatenate([fit, held])), np.arange(30))
    assert len(random_split(3, 0.9, seed=0, groups=np.zeros(3))[0]) == 3  # one group: kept


def test_multilabel_mean_scores_holds_out_whole_samples():
    """The multi-label probe with ``mean_scores`` fits clips: its held-out part used to be
    random clips (a sample's other clips in the fitted part), scored one clip at a time."""
    g = torch.Generator().manual_seed(0)
    hot = (torch.rand(40, 5, generator=g) < 0.4).float()
    x = (hot @ torch.randn(5, 16, generator=g))[:, None] + torch.randn(40, 3, 16, generator=g)
    x, y, samples = x.reshape(120, -1), hot.repeat_interleave(3, 0), np.repeat(np.arange(40), 3)
    grid = [1e-3, 1e-1]
    _, info = fit_predict_multilabel(x, y, x[:2], lambdas=grid, samples=samples, device="cpu",
                                     return_info=True)  # fmt: skip
    assert info["val_on"] == "samples"
    xs, _ = standardize(x, x[:2])
    fi, vi = random_split(120, 0.2, 0, samples)
    assert not set(samples[fi]) & set(samples[vi])
    wb = None
    for lam in sorted(grid, reverse=True):
        wb = _fit_torch(xs[fi], y[fi], 5, lam, init=wb, max_iter=500, tol=1e-4, loss=bce_loss_grad)
        prob, target = mean_over_samples(torch.addmm(wb[1], xs[vi], wb[0]), y[vi], samples[vi],
                                         "sigmoid")  # fmt: skip
        assert info["val_mAP"][lam] == pytest.approx(mean_average_precision(prob, target))


def test_samples_without_the_modality_are_left_out_and_counted():
    p = _protocol({"type": "knn", "k": [3], "temperature": 0.07})
    fs_tr, fs_te = _features(24, 0), _features(12, 1)
    fs_tr.masks["audio"][[1, 5]] = False  # zero features in the cache
    fs_tr.clips["audio"][[1, 5]] = 0.0
    fs_te.masks["video"][[0]] = False
    fs_te.clips["video"][[0]] = 0.0
    r = run_round(p, fs_tr, fs_te, "audio", PAIR, 4, "cpu")
    assert r["n_missing_modality"] == {"train": 2, "test": 0}
    assert (r["n_train"], r["n_test"]) == (22, 12)
    keep = [i for i in range(24) if i not in (1, 5)]
    votes = knn_predict(fs_tr.get("audio")[keep], fs_tr.labels[keep], fs_te.get("audio"), 3,
                        0.07, 4, device="cpu")  # fmt: skip
    want = 100 * (votes.argmax(1) == fs_te.labels).double().mean().item()
    assert r["metrics"]["k3_top1"] == pytest.approx(want)
    joint = run_round(p, fs_tr, fs_te, "joint", PAIR, 4, "cpu")  # needs both modalities
    assert joint["n_missing_modality"] == {"train": 2, "test": 1}
    assert (joint["n_train"], joint["n_test"]) == (22, 11)
    fs_te.masks["audio"][:] = False
    with pytest.raises(UserError, match="audio/s: no test sample has audio \\(all 12 lack it\\)"):
        run_round(p, fs_tr, fs_te, "audio", PAIR, 4, "cpu")
    with pytest.raises(UserError, match=r"--set modality=\[video\]"):  # the way out is named
        run_round(p, fs_tr, fs_te, "audio", PAIR, 4, "cpu")


def test_knn_mean_scores_average_vote_shares():
    """A softmax of vote sums (exp(sim / 0.07) each, up to ~1.6e6) is one-hot: the clips' vote
    shares are averaged instead, and top-5 ranks classes by them."""
    p = _protocol({"type": "knn", "k": [5], "temperature": 0.07}, "mean_scores")
    fs_tr, fs_te = _features(40, 0, classes=8, spread=3.0), _features(16, 1, classes=8, spread=3.0)
    r = run_round(p, fs_tr, fs_te, "audio", PAIR, 8, "cpu")
    clips = fs_te.get("audio", per_clip=True).reshape(48, -1)
    votes = knn_predict(fs_tr.get("audio"), fs_tr.labels, clips, 5, 0.07, 8, device="cpu")
    shares = (votes.double() / votes.double().sum(1, keepdim=True)).reshape(16, 3, 8).mean(1)
    top5 = shares.topk(5, dim=1).indices
    want = 100 * (top5 == fs_te.labels[:, None]).any(1).double().mean().item()
    assert r["metrics"]["k5_top5"] == pytest.approx(want)
    assert votes.double().softmax(1).max(1).values.min() > 0.999  # why not a softmax


def test_keys_in_both_splits_are_counted():
    p = _protocol({"type": "knn", "k": [3], "temperature": 0.07})
    fs_tr = _features(24, 0)
    r = run_round(p, fs_tr, fs_tr.select(fs_tr.keys[:5]), "audio", PAIR, 4, "cpu")
    assert r["n_in_both"] == 5 and r["metrics"]["k3_top1"] == 100.0  # each finds itself


def test_lambdas_that_repeat_the_probe_before_are_recorded():
    """Warm-started from a stronger lambda whose gradient is already below tol, a weaker
    lambda's fit does no iteration: the round records it and the report says so."""
    p = _protocol({"type": "linear", "lambdas": [1e-2, 1e-5, 1e-6, 1e-7]})
    r = run_round(p, _features(60, 0), _features(20, 1), "audio", PAIR, 4, "cpu")
    fits = r["val_fits"]
    assert list(fits) == [1e-2, 1e-5, 1e-6, 1e-7]
    assert fits[1e-2]["iterations"] > 0 and fits[1e-5]["iterations"] > 0
    assert r["lambdas_as_previous"] and 1e-5 not in r["lambdas_as_previous"]
    assert all(fits[lam]["iterations"] == 0 for lam in r["lambdas_as_previous"])
    assert r["fits_not_converged"] == 0 and r["refit"]["converged"]
    (note,) = _fit_notes([r])
    assert f"audio/s lambda <= {max(r['lambdas_as_previous']):.0e}" in note
    capped = _protocol({"type": "linear", "lambdas": [1e-6], "max_iter": 2})
    r = run_round(capped, _features(60, 0), _features(20, 1), "audio", PAIR, 4, "cpu")
    assert r["fits_not_converged"] == 1
    assert _fit_notes([r]) == ["1 probe fit(s) stopped at max_iter before converging"]


@pytest.mark.parametrize("ctype", ["linear", "knn", "retrieval"])
def test_non_finite_features_name_the_samples(ctype):
    """NaN features (a diverged encoder) used to be scored: retrieval counted a NaN query as a
    hit at R@1, kNN and the probe gave arbitrary classes."""
    p = _protocol({"type": ctype} if ctype != "linear" else {"type": ctype, "lambdas": [1e-3]})
    fs_tr, fs_te = _features(24, 0), _features(12, 1)
    fs_te.clips["audio"][[3, 7], 1] = float("nan")
    with pytest.raises(UserError, match=r"audio/s: 2 test sample\(s\) have NaN or infinite "
                       r"audio features \(d/1/3, d/1/7\)"):  # fmt: skip
        run_round(p, fs_tr, fs_te, "audio", PAIR, 4, "cpu")
    run_round(p, fs_tr, fs_te, "video", PAIR, 4, "cpu")  # the other modality is fine


def test_non_finite_features_in_cross_modal_retrieval():
    p = parse_protocol({"name": "t", "dataset": "d", "modality": "audio-video",
                        "splits": [{"name": "s", "test": "te"}],
                        "classifier": {"type": "cross_modal"}})  # fmt: skip
    fs = _features(12, 1)
    fs.clips["video"][4] = float("inf")
    with pytest.raises(UserError, match=r"1 test sample\(s\) have NaN or infinite video "
                       r"features \(d/1/4\)"):  # fmt: skip
        run_round(p, fs, fs, "audio-video", SplitPair("s", "te", []), 4, "cpu")


@pytest.mark.parametrize("ctype", ["linear", "knn", "retrieval", "linear_multilabel"])
def test_empty_splits_are_errors(ctype):
    """An empty test split used to give NaN metrics (and a NaN mean over the splits); an
    empty train split a retrieval IndexError or errors about concatenating lists."""
    p = _protocol({"type": ctype} if ctype != "linear" else {"type": ctype, "lambdas": [1e-3]})
    fs = _features(24, 0)
    none = fs.select([])
    with pytest.raises(UserError, match="audio/s: the test split 'te' has no sample to score"):
        run_round(p, fs, none, "audio", PAIR, 4, "cpu")
    with pytest.raises(UserError, match="audio/s: the train split 'tr' has no sample to fit"):
        run_round(p, none, fs, "audio", PAIR, 4, "cpu")


def test_k_larger_than_the_train_split_is_recorded_and_noted():
    """k = 200 over 24 training samples is a vote of all 24: the column said k=200 and nothing
    said otherwise."""
    from avssl.evaluators.evaluate import _knn_notes

    p = _protocol({"type": "knn", "k": [3, 200]})
    r = run_round(p, _features(24, 0), _features(12, 1), "audio", PAIR, 4, "cpu")
    assert r["k_capped"] == {200: 24}
    assert _knn_notes([r, r]) == [
        "kNN: where k exceeds the train samples, all of them vote: audio/s k=200 (24 train "
        "samples); audio/s k=200 (24 train samples)"
    ]
    r = run_round(p, _features(240, 0), _features(12, 1), "audio", PAIR, 4, "cpu")
    assert r["k_capped"] == {} and _knn_notes([r]) == []


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_non_finite_rows_matches_the_elementwise_mask(dtype):
    from avssl.evaluators._tensors import non_finite_rows

    x = torch.randn(50, 3, 4).to(dtype)
    assert non_finite_rows(x).tolist() == []
    for row, value in ((7, float("nan")), (19, float("inf")), (42, float("-inf"))):
        x[row, row % 3, 1] = value
    want = (~torch.isfinite(x).flatten(1).all(1)).nonzero().flatten().tolist()
    assert non_finite_rows(x).tolist() == want == [7, 19, 42]
    assert non_finite_rows(x[:0]).tolist() == []  # no rows
    assert non_finite_rows(torch.arange(6).reshape(3, 2)).tolist() == []  # integers are finite
