"""Multi-label metrics of AudioSet papers: mAP, mAUC and d-prime, in torch.

- **AP** of one class = area under its precision-recall curve as the step sum
  ``sum_n (R_n - R_{n-1}) P_n`` over the distinct score thresholds in decreasing order
  (``R_0 = 0``), the definition of scikit-learn's ``average_precision_score`` (no
  interpolation). Test items with equal scores form one threshold: they enter the ranking
  together, so the order of tied items changes nothing.
- **mAP** = mean of the AP over the classes with at least one positive in the test split (AP
  is undefined without one); the classes left out are counted.
- **AUC** = area under the ROC curve (trapezoids between thresholds, which counts a tied
  (positive, negative) pair as half a correct pair); **mAUC** = mean over the classes with
  both positives and negatives.
- **d-prime** = ``sqrt(2) * Phi^{-1}(mAUC)``: the separation, in standard deviations, of two
  unit-variance Gaussians whose ROC has that area, as AudioSet results are reported with mAP
  and AUC (Gemmeke et al., 2017, https://research.google.com/pubs/pub45857.html; Hershey et
  al., 2017, "CNN architectures for large-scale audio classification",
  https://arxiv.org/abs/1609.09430). It is infinite for a perfect ranking (mAUC = 1).

mAP and mAUC are reported in percent, like the other evaluators' accuracies.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from avssl.evaluators._tensors import ArrayLike, row_chunk

CHUNK_ELEMS = 1 << 21  # entries of one [M, classes] float64 temporary (a few are alive at once)


def _as_2d(x: ArrayLike, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x).double()
    if t.ndim == 1:
        t = t[:, None]
    if t.ndim != 2:
        raise ValueError(f"{name} must be [M] or [M, C], got shape {tuple(t.shape)}")
    return t


def _check(scores: ArrayLike, targets: ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    s, y = _as_2d(scores, "scores"), _as_2d(targets, "targets")
    if s.shape != y.shape:
        raise ValueError(f"scores {tuple(s.shape)} and targets {tuple(y.shape)} differ in shape")
    if not bool(torch.isfinite(s).all()):
        raise ValueError("scores contain NaN or infinite values")
    if not bool(((y == 0) | (y == 1)).all()):
        raise ValueError("targets must be 0/1 (multi-hot)")
    return s, y


def _curves(s: torch.Tensor, y: torch.Tensor):
    """Per column, in decreasing score order: true / false positives above each rank, the
    ranks that end a group of equal scores (the thresholds), and the counts at the previous
    threshold (0 before the first)."""
    m = s.shape[0]
    s_sorted, order = torch.sort(s, dim=0, descending=True)
    tps = y.gather(0, order).cumsum(0)  # [M, c] positives ranked at or above each row
    rank = torch.arange(1, m + 1, dtype=s.dtype, device=s.device)[:, None]
    fps = rank - tps
    end = torch.ones_like(s_sorted, dtype=torch.bool)
    end[:-1] = s_sorted[1:] != s_sorted[:-1]  # the last row of each group of tied scores
    # counts only grow down a column, so the running max over threshold rows is the count at
    # the latest threshold; shifted one row, at the previous one
    prev_tps, prev_fps = (
        torch.cat([torch.zeros_like(v[:1]), torch.cummax(v * end, dim=0).values[:-1]])
        for v in (tps, fps)
    )
    return tps, fps, rank, end, prev_tps, prev_fps


def per_class(scores: ArrayLike, targets: ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    """(AP ``[C]``, ROC AUC ``[C]``) as fractions; NaN where a class has no positive (AP, AUC)
    or no negative (AUC).

    Args:
        scores: ``[M, C]`` (or ``[M]``) real scores; only their order within a class matters.
        targets: ``[M, C]`` (or ``[M]``) 0/1 multi-hot targets.
    """
    s, y = _check(scores, targets)
    m, c = s.shape
    ap = torch.full((c,), float("nan"), dtype=torch.float64)
    auc = torch.full((c,), float("nan"), dtype=torch.float64)
    step = row_chunk(m, CHUNK_ELEMS)  # classes per chunk
    for lo in range(0, c if m else 0, step):
        tps, fps, rank, end, prev_tps, prev_fps = _curves(
            s[:, lo : lo + step], y[:, lo : lo + step]
        )
        pos, neg = tps[-1], fps[-1]  # [c'] positives and negatives of each class
        # AP = sum over thresholds of (R_n - R_{n-1}) P_n, R = tps / pos, P = tps / rank
        area = (end * (tps - prev_tps) * tps / rank).sum(0)
        ap[lo : lo + step] = torch.where(pos > 0, area / pos, float("nan"))
        # AUC = trapezoids (fpr_n - fpr_{n-1}) (tpr_n + tpr_{n-1}) / 2
        trap = (end * (fps - prev_fps) * (tps + prev_tps)).sum(0) / 2
        auc[lo : lo + step] = torch.where((pos > 0) & (neg > 0), trap / (pos * neg), float("nan"))
    return ap, auc


def average_precision(scores: ArrayLike, targets: ArrayLike) -> torch.Tensor:
    """AP ``[C]`` of each class (a fraction; NaN for a class without positives)."""
    return per_class(scores, targets)[0]


def d_prime(auc: float) -> float:
    """``sqrt(2) * Phi^{-1}(auc)`` (``auc`` a fraction); +inf at 1, NaN for NaN."""
    return math.sqrt(2.0) * float(
        torch.special.ndtri(torch.tensor(float(auc), dtype=torch.float64))
    )


def multilabel_metrics(scores: ArrayLike, targets: ArrayLike) -> dict:
    """mAP and mAUC (percent), d-prime, and which classes could be scored.

    Returns:
        ``{"metrics": {"mAP", "mAUC", "d_prime"}, "per_class_ap": [C] list (NaN where
        skipped), "n_classes": C, "n_skipped_ap": classes without a positive,
        "n_skipped_auc": classes without a positive or without a negative}``.
    """
    ap, auc = per_class(scores, targets)
    ok_ap, ok_auc = ~torch.isnan(ap), ~torch.isnan(auc)
    m_ap = ap[ok_ap].mean().item() if bool(ok_ap.any()) else float("nan")
    m_auc = auc[ok_auc].mean().item() if bool(ok_auc.any()) else float("nan")
    return {
        "metrics": {"mAP": 100.0 * m_ap, "mAUC": 100.0 * m_auc, "d_prime": d_prime(m_auc)},
        "per_class_ap": ap.tolist(),
        "n_classes": len(ap),
        "n_skipped_ap": int((~ok_ap).sum()),
        "n_skipped_auc": int((~ok_auc).sum()),
    }


def mean_average_precision(scores: ArrayLike, targets: ArrayLike) -> float:
    """mAP in percent over the classes with a positive (NaN when none has one)."""
    ap = average_precision(scores, targets)
    ok = ~torch.isnan(ap)
    return 100.0 * ap[ok].mean().item() if bool(ok.any()) else float("nan")
