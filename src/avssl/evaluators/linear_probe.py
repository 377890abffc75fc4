"""Linear probe: multinomial logistic regression on frozen features, full-batch L-BFGS in torch.

Protocol (DESIGN section 5; linear evaluation as in SimCLR, Chen et al., 2020,
https://arxiv.org/abs/2002.05709, and the audio-visual papers that follow it):

1. Features are L2-normalised, then standardised per dimension with the mean and standard
   deviation of the *training* split (the test split is transformed with those statistics).
2. The objective is ``mean cross-entropy + lambda / 2 * ||W||^2`` (the bias is not penalised),
   minimised with full-batch L-BFGS (backtracking Armijo line search, :mod:`._lbfgs`) until the
   largest gradient entry is below ``tol``.
3. ``lambda`` is chosen from a log-spaced sweep by top-1 accuracy on a held-out, stratified,
   seeded part of the *training* split; ties go to the stronger regularisation. The probe is
   then refit on the whole training split (:mod:`._lambda_choice`). The test split is never
   used to choose anything.
   Where the training clips come in groups cut from one long video (UCF101's ``_gNN_cNN``
   names; its official splits hold out whole groups for the same reason, Soomro et al. 2012,
   https://arxiv.org/abs/1212.0402), whole groups are held out (:func:`.holdout.video_groups`), so
   that the held-out accuracy is not inflated by near-copies of the fitted clips. With
   ``mean_scores`` (the probe fits every clip of a sample, a sample is scored by its clips'
   mean softmax) whole samples are held out and lambda is chosen on their mean-score top-1,
   the score the test split gets (``samples`` argument).

:func:`fit_predict_multilabel` is the multi-label (AudioSet) version: one independent binary
logistic regression per class (one-vs-rest: sigmoid + binary cross-entropy, each class with
``mean BCE + lambda / 2 * ||w_c||^2``, fitted jointly because the objective separates), the
same features and lambda grid, lambda chosen by mAP (:mod:`avssl.evaluators.multilabel`) on a
seeded random part of the training split (see :func:`.holdout.random_split`).

``solver="sklearn"`` runs the same protocol with ``sklearn.linear_model.LogisticRegression``
(lbfgs). scikit-learn minimises ``C * sum CE + ||W||^2 / 2``; dividing by ``C * N`` gives our
objective, so ``C = 1 / (lambda * N)`` with N the number of samples being fitted.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import torch

from avssl.evaluators._lambda_choice import (  # noqa: F401  (re-exported: moved there)
    _choose_and_refit,
    _map,
    _random_held_out,
    _stratified_held_out,
    _sweep,
    _top1,
)
from avssl.evaluators._lbfgs import LossGrad, bce_loss_grad, loss_grad, minimize
from avssl.evaluators._tensors import (
    ArrayLike,
    as_feature_pair,
    as_labels,
    l2_normalize,
    num_classes_for,
    pick_device,
)
from avssl.evaluators.holdout import per_sample, row_ids

# 1e-7 ... 1e0: one value per decade.
DEFAULT_LAMBDAS: tuple[float, ...] = tuple(float(10.0**e) for e in range(-7, 1))


def standardize(train: torch.Tensor, *others: torch.Tensor, eps: float = 1e-6) -> list:
    """L2-normalises rows, then standardises every dimension with the statistics of ``train``."""
    train = l2_normalize(train)  # a new tensor: the in-place ops below are safe
    mean = train.mean(0)
    train.sub_(mean)
    # population std (torch.std(0) is slow), its sum of squares taken block by block: a whole
    # train.square() is a fresh [N, D] temporary the kernel must fault in (95 -> 40 ms at
    # 100k x 768 on 2 CPU cores; a column-wise vector_norm takes 250 ms)
    sq = sum((blk.square().sum(0) for blk in train.split(4096)), torch.zeros_like(mean))
    std = (sq / max(len(train), 1)).sqrt_().clamp_min_(eps)
    return [train.div_(std)] + [(l2_normalize(o) - mean).div_(std) for o in others]


def _fit_torch(
    x: torch.Tensor,
    y: torch.Tensor,
    c: int,
    lam: float,
    init=None,
    max_iter=500,
    tol=1e-4,
    loss: LossGrad = loss_grad,
    report: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimises ``loss`` (default mean CE) + lam/2 ||W||^2 over (W [D, C], b [C]) with
    :mod:`._lbfgs`; ``report`` (a dict) receives the fit's ``iterations`` and ``converged``."""
    theta = torch.zeros(x.shape[1] + 1, c, dtype=x.dtype, device=x.device)  # [D + 1, C]
    if init is not None:
        theta[:-1], theta[-1] = init[0], init[1]
    theta, done = minimize(theta, x, y, lam, max_iter=max_iter, tol=tol, loss=loss)
    if report is not None:
        report.update(iterations=int(done["iterations"]), converged=bool(done["converged"]))
    return theta[:-1], theta[-1]


def _fit_sklearn(x, y, c, lam, init=None, max_iter=500, tol=1e-4, report=None):
    """The same objective with scikit-learn's lbfgs; returns (W [D, C], b [C]) as tensors."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    xn, yn = x.cpu().double().numpy(), y.cpu().numpy()
    clf = LogisticRegression(C=1.0 / (lam * len(yn)), solver="lbfgs", max_iter=max_iter, tol=tol)
    with warnings.catch_warnings():  # not converging is reported, as the torch solver's
        warnings.simplefilter("ignore", category=ConvergenceWarning)
        clf.fit(xn, yn)
    if report is not None:
        iterations = int(np.max(clf.n_iter_))
        report.update(iterations=iterations, converged=iterations < max_iter)
    coef = np.asarray(clf.coef_)
    inter = np.asarray(clf.intercept_)
    if coef.shape[0] == 1:  # binary: sklearn keeps one row; softmax-equivalent is +-half
        coef, inter = np.concatenate([-coef / 2, coef / 2]), np.concatenate([-inter / 2, inter / 2])
    w = torch.zeros(x.shape[1], c, dtype=torch.float64)
    b = torch.full((c,), -1e9, dtype=torch.float64)  # classes absent from the fit never win
    w[:, clf.classes_] = torch.from_numpy(coef.T)
    b[clf.classes_] = torch.from_numpy(inter)
    return w.to(x), b.to(x)


SOLVERS = {"torch": _fit_torch, "sklearn": _fit_sklearn}


def fit_predict(
    train_x: ArrayLike,
    train_y: ArrayLike,
    test_x: ArrayLike,
    *,
    lambdas: tuple[float, ...] | list[float] | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    solver: str = "torch",
    num_classes: int | None = None,
    max_iter: int = 500,
    tol: float = 1e-4,
    device: str | torch.device | None = None,
    return_info: bool = False,
    groups: np.ndarray | None = None,
    samples: np.ndarray | None = None,
):
    """Fits the linear probe on the training split and scores the test split.

    Args:
        train_x: ``[N, D]`` training features.
        train_y: ``[N]`` class ids.
        test_x: ``[M, D]`` test features.
        lambdas: L2 strengths to sweep (default :data:`DEFAULT_LAMBDAS`); one value skips the
            held-out selection.
        val_fraction: fraction of each training class held out to choose lambda.
        seed: seed of the held-out split.
        solver: "torch" (L-BFGS here) or "sklearn" (parity check).
        num_classes: C; defaults to ``max(train_y) + 1``.
        max_iter: L-BFGS iteration cap per fit.
        tol: stop when the largest absolute gradient entry is below this.
        device: torch device; None -> CUDA when available.
        return_info: also return a dict with the chosen lambda and held-out accuracies.
        groups: optional ``[N]`` group ids of the training rows (:func:`.holdout.video_groups`); the
            held-out part then holds whole groups.
        samples: optional ``[N]`` sample ids of the training rows, for rows that are clips of
            samples scored by their mean softmax (``mean_scores``): the held-out part then
            holds whole samples, and lambda is chosen on their mean-score top-1, the way the
            test split is scored (:func:`.holdout.mean_over_samples`).

    Returns:
        float ``[M, C]`` logits on the CPU, or ``(logits, info)`` when ``return_info``.
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {sorted(SOLVERS)}, got {solver!r}")
    xtr, ytr, xte, c = _single_label_inputs(train_x, train_y, test_x, num_classes, device)
    grid = _grid(lambdas)
    info: dict = {"solver": solver, "lambdas": grid, "val_fraction": val_fraction, "seed": seed}
    groups, samples = _held_out_ids(groups, samples, len(ytr), info, count_groups=True)
    held_out = functools.partial(_stratified_held_out, ytr, val_fraction, seed, groups, samples)
    score = _top1 if samples is None else per_sample(_top1, samples, "softmax")
    logits = _choose_and_refit(
        SOLVERS[solver], xtr, ytr, xte, c, grid, held_out, score, "val_top1", info, max_iter, tol
    )
    return (logits, info) if return_info else logits


def fit_predict_multilabel(
    train_x: ArrayLike,
    train_y: ArrayLike,
    test_x: ArrayLike,
    *,
    lambdas: tuple[float, ...] | list[float] | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    max_iter: int = 500,
    tol: float = 1e-4,
    device: str | torch.device | None = None,
    return_info: bool = False,
    groups: np.ndarray | None = None,
    samples: np.ndarray | None = None,
):
    """Fits the one-vs-rest probe on the training split and scores the test split.

    Each class c gets its own binary logistic regression, ``mean_n BCE(sigmoid(x_n w_c + b_c),
    y_nc) + lambda / 2 * ||w_c||^2`` (all classes share lambda and are fitted in one L-BFGS run
    of their summed, separable objective, :func:`avssl.evaluators._lbfgs.bce_loss_grad`), on the
    features of :func:`standardize`. Lambda is chosen by mAP on a seeded random
    ``val_fraction`` of the training rows (:func:`.holdout.random_split`; ties go to the stronger
    regularisation), then the probe is refit on the whole training split. The test split
    chooses nothing.

    Args:
        train_x: ``[N, D]`` training features.
        train_y: ``[N, C]`` multi-hot targets (0/1).
        test_x: ``[M, D]`` test features.
        lambdas: L2 strengths to sweep (default :data:`DEFAULT_LAMBDAS`); one value skips the
            held-out selection.
        val_fraction: fraction of the training rows held out to choose lambda.
        seed: seed of the held-out split.
        max_iter: L-BFGS iteration cap per fit.
        tol: stop when the largest absolute gradient entry is below this.
        device: torch device; None -> CUDA when available.
        return_info: also return a dict with the chosen lambda and held-out mAPs (percent).
        groups: optional ``[N]`` group ids of the training rows: whole groups are held out.
        samples: optional ``[N]`` sample ids of rows that are clips scored by their mean
            sigmoid (``mean_scores``): whole samples are held out and lambda is chosen on
            their mean-score mAP.

    Returns:
        float ``[M, C]`` logits on the CPU (sigmoid gives the class probabilities), or
        ``(logits, info)`` when ``return_info``.

    Raises:
        ValueError: bad shapes or targets, or no class has a positive in the held-out part.
    """
    xtr, ytr, xte = _multi_hot_inputs(train_x, train_y, test_x, device)
    grid = _grid(lambdas)
    info: dict = {"lambdas": grid, "val_fraction": val_fraction, "seed": seed}
    fit = functools.partial(_fit_torch, loss=bce_loss_grad)
    groups, samples = _held_out_ids(groups, samples, len(ytr), info)
    held_out = functools.partial(_random_held_out, ytr, val_fraction, seed, groups, samples)
    score = _map if samples is None else per_sample(_map, samples, "sigmoid")
    logits = _choose_and_refit(
        fit, xtr, ytr, xte, ytr.shape[1], grid, held_out, score, "val_mAP", info, max_iter, tol
    )
    return (logits, info) if return_info else logits


def _grid(lambdas: tuple[float, ...] | list[float] | None) -> list[float]:
    """The distinct L2 strengths to sweep, strongest first (default :data:`DEFAULT_LAMBDAS`)."""
    return sorted({float(v) for v in (lambdas or DEFAULT_LAMBDAS)}, reverse=True)


def _single_label_inputs(
    train_x: ArrayLike,
    train_y: ArrayLike,
    test_x: ArrayLike,
    num_classes: int | None,
    device: str | torch.device | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """(train features, class ids, test features, C) of :func:`fit_predict`: the features
    standardised (:func:`standardize`), the training rows on the device."""
    dev = pick_device(device)
    xtr, xte = standardize(*as_feature_pair(train_x, test_x))
    ytr = as_labels(train_y, len(xtr), "train_y")
    c = num_classes_for(ytr, num_classes, "train_y")
    return xtr.to(dev), ytr.to(dev), xte, c


def _multi_hot_inputs(
    train_x: ArrayLike, train_y: ArrayLike, test_x: ArrayLike, device: str | torch.device | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train features, multi-hot targets in their dtype, test features) of
    :func:`fit_predict_multilabel`, the training rows on the device; a ValueError for targets
    that are not ``[N, C]`` 0/1."""
    dev = pick_device(device)
    xtr, xte = standardize(*as_feature_pair(train_x, test_x))
    ytr = torch.as_tensor(np.asarray(train_y) if not torch.is_tensor(train_y) else train_y)
    if ytr.ndim != 2 or len(ytr) != len(xtr):
        raise ValueError(f"train_y must be multi-hot [{len(xtr)}, C], got {tuple(ytr.shape)}")
    if not bool(((ytr == 0) | (ytr == 1)).all()):
        raise ValueError("train_y must be 0/1 (multi-hot)")
    return xtr.to(dev), ytr.to(dev, xtr.dtype), xte


def _held_out_ids(
    groups: np.ndarray | None,
    samples: np.ndarray | None,
    n: int,
    info: dict,
    count_groups: bool = False,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``groups`` and ``samples`` as ``[n]`` arrays (or None, :func:`.holdout.row_ids`); notes in
    ``info`` how the held-out part is drawn (``val_groups`` when ``count_groups``, and
    ``val_on``)."""
    groups = row_ids(groups, n, "groups")
    samples = row_ids(samples, n, "samples")
    if count_groups and groups is not None:
        info["val_groups"] = int(len(np.unique(groups)))
    if samples is not None:
        info["val_on"] = "samples"
    return groups, samples
