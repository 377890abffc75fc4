"""Choosing the linear probes' L2 strength (:mod:`avssl.evaluators.linear_probe`): the held-out
part of the training split (stratified for single-label, random for multi-label targets), the
warm-started sweep over the lambda grid scored on it (top-1 or mAP), and the refit on the whole
training split at the chosen lambda."""

from __future__ import annotations

import numpy as np
import torch

from avssl.evaluators.holdout import kept_together, random_split, stratified_split
from avssl.evaluators.multilabel import mean_average_precision


def _stratified_held_out(
    ytr: torch.Tensor,
    val_fraction: float,
    seed: int,
    groups: np.ndarray | None,
    samples: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """(fit, held out) rows of the single-label probe: a stratified ``val_fraction`` of each
    class (:func:`.holdout.stratified_split`), whole groups or samples kept together."""
    return stratified_split(ytr.cpu().numpy(), val_fraction, seed, kept_together(groups, samples))


def _random_held_out(
    ytr: torch.Tensor,
    val_fraction: float,
    seed: int,
    groups: np.ndarray | None,
    samples: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """(fit, held out) rows of the one-vs-rest probe: a seeded random ``val_fraction``
    (:func:`.holdout.random_split`); a ValueError when no class has a positive in it."""
    held = random_split(len(ytr), val_fraction, seed, kept_together(groups, samples))
    if not bool(ytr[torch.from_numpy(held[1]).to(ytr.device)].any()):
        raise ValueError(
            f"no class has a positive in the held-out {val_fraction:.0%} of the "
            f"{len(ytr)} training samples: too few to choose lambda"
        )
    return held


def _choose_and_refit(fit, xtr, ytr, xte, c, grid, held_out, score, key, info, max_iter, tol):
    """Lambda by ``score`` on the rows ``held_out()`` gives (when the grid has several; the
    held-out scores go to ``info[key]``), refit on the whole training split, test logits
    ``[M, C]`` on the CPU; ``info["lambda"]`` is the choice."""
    best, init = grid[0], None
    if len(grid) > 1:
        best, init, info[key], info["val_fits"] = _sweep(
            fit, xtr, ytr, c, grid, held_out(), max_iter, tol, score
        )
    info["refit"] = {}
    w, b = fit(xtr, ytr, c, best, init=init, max_iter=max_iter, tol=tol, report=info["refit"])
    info["lambda"] = best
    return torch.addmm(b, xte.to(xtr.device, w.dtype), w).cpu()


def _top1(scores: torch.Tensor, y: torch.Tensor, rows: np.ndarray | None = None) -> float:
    return 100.0 * (scores.argmax(1) == y).double().mean().item()


def _map(scores: torch.Tensor, y: torch.Tensor, rows: np.ndarray | None = None) -> float:
    return mean_average_precision(scores.cpu(), y.cpu())


def _sweep(fit, x, y, c, grid, held, max_iter, tol, score):
    """Held-out ``score`` per lambda (strong -> weak, warm-started) on the rows ``held`` =
    (fit, held out): (best lambda, its weights, scores, each fit's ``iterations`` and
    ``converged``). A warm start whose gradient is already below ``tol`` does no iteration:
    that lambda gives the previous one's probe (and, ties going to the stronger, is never
    chosen)."""
    fit_idx, val_idx = held
    if len(val_idx) == 0:
        raise ValueError(
            f"the training split ({len(y)} clips) is too small to hold out a validation part "
            "for choosing lambda (none of its classes has enough clips); give the protocol one "
            'lambda (make eval ARGS="--set classifier.lambdas=[<value>]", or classifier: '
            "lambdas: [<value>] in its file) or more training clips"
        )
    fi, vi = torch.from_numpy(fit_idx).to(x.device), torch.from_numpy(val_idx).to(x.device)
    accs, best, best_acc, best_wb, wb, fits = {}, grid[0], -1.0, None, None, {}
    for lam in grid:
        fits[lam] = {}
        wb = fit(x[fi], y[fi], c, lam, init=wb, max_iter=max_iter, tol=tol, report=fits[lam])
        acc = score(torch.addmm(wb[1], x[vi].to(wb[0].dtype), wb[0]), y[vi], val_idx)
        accs[lam] = acc
        if acc > best_acc:  # strict: ties keep the stronger regularisation
            best, best_acc, best_wb = lam, acc, wb
    return best, best_wb, accs, fits
