"""Small tensor helpers shared by the evaluators (array conversion, device choice, chunking)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

ArrayLike = Any  # numpy array, torch tensor or nested list


def as_features(x: ArrayLike, name: str = "x") -> torch.Tensor:
    """Returns ``x`` as a 2-D floating tensor ``[N, D]`` (float64 kept, anything else float32).

    Raises:
        ValueError: ``x`` is not 2-D, or has NaN or infinite entries (a NaN similarity compares
            false with everything: it would rank first in retrieval and vote at random).
    """
    t = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x)
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D [N, D], got shape {tuple(t.shape)}")
    if t.dtype != torch.float64:
        t = t.float()
    bad = non_finite_rows(t)
    if len(bad):
        raise ValueError(
            f"{name} has {len(bad)} row(s) with NaN or infinite values (first: {int(bad[0])})"
        )
    return t


def as_feature_pair(
    x: ArrayLike, y: ArrayLike, names: tuple[str, str] = ("train_x", "test_x")
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`as_features` of two feature sets that are compared or fitted together, which
    must have one width D (a ``ValueError`` naming both otherwise)."""
    tx, ty = as_features(x, names[0]), as_features(y, names[1])
    if tx.shape[1] != ty.shape[1]:
        raise ValueError(f"{names[0]} has D={tx.shape[1]} but {names[1]} has D={ty.shape[1]}")
    return tx, ty


def non_finite_rows(x: torch.Tensor) -> torch.Tensor:
    """Indices of the rows of ``x`` (``[N, ...]``) with a NaN or infinite entry."""
    if not x.is_floating_point() or x.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=x.device)
    low, high = torch.aminmax(x)  # NaN or +-inf show in these: one pass, no [N, D] mask
    if bool(torch.isfinite(low)) and bool(torch.isfinite(high)):
        return torch.zeros(0, dtype=torch.long, device=x.device)
    ok = torch.isfinite(x)
    ok = ok.flatten(1).all(dim=1) if x.ndim > 1 else ok  # [N]
    return (~ok).nonzero().flatten()


def as_labels(y: ArrayLike, n: int, name: str = "y") -> torch.Tensor:
    """Returns ``y`` as a long tensor ``[n]`` of class ids (>= 0)."""
    t = torch.as_tensor(np.asarray(y) if not torch.is_tensor(y) else y).long().reshape(-1)
    if t.numel() != n:
        raise ValueError(f"{name} has {t.numel()} labels for {n} feature rows")
    if n and int(t.min()) < 0:
        raise ValueError(f"{name} contains negative (unknown) labels")
    return t


def num_classes_for(y: torch.Tensor, num_classes: int | None, name: str = "y") -> int:
    """C: ``num_classes``, which must exceed every id in ``y``, or ``max(y) + 1``."""
    top = int(y.max()) if y.numel() else -1
    if num_classes is None:
        return top + 1
    if top >= int(num_classes):
        raise ValueError(f"{name} has class id {top}, but num_classes is {int(num_classes)}")
    return int(num_classes)


def pick_device(device: str | torch.device | None) -> torch.device:
    """``None`` -> CUDA when available, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def l2_normalize(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Row-wise L2 normalisation; all-zero rows stay zero."""
    return x / x.norm(dim=1, keepdim=True).clamp_min(eps)


def row_chunk(num_cols: int, budget_elems: int = 1 << 25) -> int:
    """Rows per chunk so that a ``[rows, num_cols]`` block holds about ``budget_elems`` values."""
    return max(1, budget_elems // max(1, num_cols))


def topk_accuracy(scores: ArrayLike, labels: ArrayLike, ks: tuple[int, ...] = (1, 5)) -> dict:
    """Top-k accuracy in percent for each k in ``ks`` (k capped at the number of classes).

    Ties in the scores are resolved toward the lower class id (``torch.sort(stable=True)``).
    """
    s = torch.as_tensor(np.asarray(scores) if not torch.is_tensor(scores) else scores)
    y = torch.as_tensor(np.asarray(labels) if not torch.is_tensor(labels) else labels).long()
    order = torch.sort(s, dim=1, descending=True, stable=True).indices  # [N, C]
    out = {}
    for k in ks:
        hit = (order[:, : min(k, s.shape[1])] == y[:, None]).any(dim=1)
        out[f"top{k}"] = 100.0 * hit.double().mean().item() if len(y) else float("nan")
    return out


def confusion_matrix(pred: ArrayLike, labels: ArrayLike, num_classes: int) -> np.ndarray:
    """Counts ``[C_true, C_pred]``."""
    p = np.asarray(pred, dtype=np.int64)
    y = np.asarray(labels, dtype=np.int64)
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (y, p), 1)
    return cm
