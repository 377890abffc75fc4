"""Retrieval metrics on frozen features (cosine similarity).

- Class-based video retrieval (VCOP, Xu et al., 2019, https://arxiv.org/abs/1812.02151;
  Clip Order Prediction protocol used by most video SSL papers): test videos query the training
  videos; a query is a hit at k if any of its k most similar gallery items shares its class.
- Cross-modal retrieval (audio -> video and video -> audio, e.g. CAV-MAE, Gong et al., 2023,
  https://arxiv.org/abs/2210.07839): item i of one modality matches only item i of the other;
  R@k is the percentage of queries whose match ranks in the top k; ranks are 1-based.

Ties are counted *pessimistically*, so that the result does not depend on the order of the
inputs: the rank of the correct item is ``1 + the number of wrong items whose similarity is
greater than or equal to the correct item's``. For class-based retrieval the "correct item" is the
most similar gallery item of the query's class. Without ties this is the usual rank.
Similarities within ``64 * eps`` of the dtype (float32: 7.6e-6) count as equal, because a
matmul may round the same dot product differently depending on where it sits in the matrix.
"""

from __future__ import annotations

import numpy as np
import torch

from avssl.evaluators._tensors import (
    ArrayLike,
    as_feature_pair,
    as_features,
    l2_normalize,
    pick_device,
    row_chunk,
)


def tie_tolerance(dtype: torch.dtype) -> float:
    """Similarities closer than this are ties (64 machine epsilons)."""
    return 64 * torch.finfo(dtype).eps


def _labels(y: ArrayLike) -> torch.Tensor:
    return torch.as_tensor(np.asarray(y) if not torch.is_tensor(y) else y).long().reshape(-1)


def class_ranks(
    query_x: ArrayLike,
    query_y: ArrayLike,
    gallery_x: ArrayLike,
    gallery_y: ArrayLike,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Pessimistic 1-based rank of the first same-class gallery item per query.

    Returns:
        float ``[Q]``; ``inf`` where the gallery holds no item of the query's class.
    """
    q, g = as_feature_pair(query_x, gallery_x, ("query_x", "gallery_x"))
    g = l2_normalize(g).to(pick_device(device))
    q = l2_normalize(q).to(g)
    qy, gy = _labels(query_y).to(g.device), _labels(gallery_y).to(g.device)
    if len(qy) != len(q) or len(gy) != len(g):
        raise ValueError("query/gallery labels do not match the number of feature rows")
    ranks, tol = [], tie_tolerance(g.dtype)
    step = row_chunk(len(g))
    for start in range(0, len(q), step):
        sim = q[start : start + step] @ g.T  # [b, G]
        same = qy[start : start + step, None] == gy[None, :]  # [b, G]
        best = sim.masked_fill(~same, float("-inf")).amax(dim=1)  # [b]
        ahead = ((sim >= best[:, None] - tol) & ~same).sum(dim=1)  # [b]
        r = (1 + ahead).double()
        ranks.append(torch.where(same.any(dim=1), r, torch.full_like(r, float("inf"))).cpu())
    return torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.float64)


def recall_at_k(
    query_x: ArrayLike,
    query_y: ArrayLike,
    gallery_x: ArrayLike,
    gallery_y: ArrayLike,
    ks: tuple[int, ...] = (1, 5, 10, 20, 50),
    device: str | torch.device | None = None,
) -> dict:
    """Class-based retrieval recall (percent) at each k.

    Args:
        query_x: ``[Q, D]`` query features (e.g. the test split).
        query_y: ``[Q]`` query classes.
        gallery_x: ``[G, D]`` gallery features (e.g. the training split).
        gallery_y: ``[G]`` gallery classes.
        ks: cut-offs.
        device: torch device; None -> CUDA when available.

    Returns:
        ``{"R@1": float, "R@5": float, ...}`` in percent.
    """
    ranks = class_ranks(query_x, query_y, gallery_x, gallery_y, device)
    return {f"R@{k}": _recall(ranks, k) for k in ks}


def _recall(ranks: torch.Tensor, k: int) -> float:
    return 100.0 * (ranks <= k).double().mean().item() if len(ranks) else float("nan")


def match_ranks(query_x: ArrayLike, gallery_x: ArrayLike, device=None) -> torch.Tensor:
    """Pessimistic 1-based rank of gallery item i for query i (``[N]`` long)."""
    g = l2_normalize(as_features(gallery_x, "gallery_x")).to(pick_device(device))
    q = l2_normalize(as_features(query_x, "query_x")).to(g)
    if q.shape != g.shape:
        raise ValueError(
            f"paired features must have the same shape, got {tuple(q.shape)} and {tuple(g.shape)}"
        )
    ranks, tol = [], tie_tolerance(g.dtype)
    step = row_chunk(len(g))
    for start in range(0, len(q), step):
        sim = q[start : start + step] @ g.T  # [b, N]
        rows = torch.arange(sim.shape[0], device=g.device)
        pos = sim[rows, rows + start]  # [b]
        ahead = (sim >= pos[:, None] - tol).sum(dim=1) - 1  # [b], the match itself excluded
        ranks.append((1 + ahead).cpu())
    return torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.long)


def cross_modal(
    audio_x: ArrayLike,
    video_x: ArrayLike,
    ks: tuple[int, ...] = (1, 5, 10),
    device: str | torch.device | None = None,
    v2a: tuple[ArrayLike, ArrayLike] | None = None,
) -> dict:
    """Audio->video and video->audio retrieval between paired embeddings.

    Args:
        audio_x: ``[N, D]`` audio embeddings; row i pairs with ``video_x[i]``.
        video_x: ``[N, D]`` video embeddings in the same space.
        ks: cut-offs.
        device: torch device; None -> CUDA when available.
        v2a: ``(audio, video)`` embeddings of the same pairs in the space the video -> audio
            direction is compared in, where it differs (CrissCross); None: ``audio_x``,
            ``video_x`` serve both directions.

    Returns:
        ``{"a2v_R@k": %, "v2a_R@k": %, "a2v_medr": float, "v2a_medr": float}``.
    """
    out: dict = {}
    back_a, back_v = (audio_x, video_x) if v2a is None else v2a
    for name, q, g in (("a2v", audio_x, video_x), ("v2a", back_v, back_a)):
        ranks = match_ranks(q, g, device)
        for k in ks:
            out[f"{name}_R@{k}"] = _recall(ranks, k)
        out[f"{name}_medr"] = float(np.median(ranks.numpy())) if len(ranks) else float("nan")
    return out
