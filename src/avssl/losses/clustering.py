"""Cluster-prediction loss for deep clustering objectives (torch only).

Used by XDC (Alwassel et al. 2020, https://arxiv.org/abs/1911.12667): each encoder's head is
trained to predict the cluster id that k-means gave the *other* modality of the same sample.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

UNKNOWN = -1


def cluster_cross_entropy(logits: torch.Tensor, assignments: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``logits`` against pseudo-labels, skipping unknown ones.

    Args:
        logits: ``[B, K]`` head outputs over K clusters.
        assignments: long ``[B]`` cluster ids in ``[0, K)``, or -1 where the sample has no
            pseudo-label (not in the clustering subset, or modality missing).

    Returns:
        Scalar: mean over the rows whose assignment is known. When none is known, an exact 0
        that still depends on ``logits`` (so backward works and gives zero gradients), never NaN.
    """
    if logits.dim() != 2 or assignments.shape != logits.shape[:1]:
        raise ValueError(
            f"cluster_cross_entropy: expected logits [B, K] and assignments [B], got "
            f"{tuple(logits.shape)} and {tuple(assignments.shape)}"
        )
    known = assignments != UNKNOWN
    if not bool(known.any()):
        return logits.sum() * 0.0
    if int(assignments[known].max()) >= logits.shape[1] or int(assignments[known].min()) < 0:
        raise ValueError(
            f"cluster_cross_entropy: assignment out of range [0, {logits.shape[1]}) "
            f"(-1 is the only allowed negative)"
        )
    return F.cross_entropy(logits[known], assignments[known])
