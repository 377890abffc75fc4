"""Masked reconstruction loss (MAE, He et al. 2022, https://arxiv.org/abs/2111.06377).

Used with per-patch normalised targets by MAE, AudioMAE (https://arxiv.org/abs/2207.06405),
VideoMAE (https://arxiv.org/abs/2203.12602), CAV-MAE, MAViL and XKD.
"""

from __future__ import annotations

import torch

NORM_PIX_EPS = 1e-6


def normalize_patches(target: torch.Tensor, eps: float = NORM_PIX_EPS) -> torch.Tensor:
    """Normalises each patch ``[..., P]`` by its own mean and (unbiased) variance, as MAE."""
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)  # unbiased, as MAE's reference
    return (target - mean) / (var + eps) ** 0.5


def masked_mse(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix: bool = True
) -> torch.Tensor:
    """Mean squared error over the masked patches only.

    Args:
        pred: ``[B, N, P]`` predicted patches.
        target: ``[B, N, P]`` input patches (``encoder.patchify(x)``).
        mask: ``[B, N]`` with 1 = masked (the patches scored), 0 = visible; float weights work.
        norm_pix: normalise each target patch by its own mean/variance first (eps 1e-6).

    Returns:
        Scalar: ``sum_n mask_n * mean_p (pred - target)^2 / sum_n mask_n`` (0 when nothing is
        masked). Computed in float32.
    """
    if pred.shape != target.shape or pred.ndim != 3:
        raise ValueError(
            f"masked_mse: pred {tuple(pred.shape)} and target {tuple(target.shape)} must both "
            "be [B, N, P]"
        )
    if mask.shape != pred.shape[:2]:
        raise ValueError(f"masked_mse: mask {tuple(mask.shape)} must be [B, N] = {pred.shape[:2]}")
    target = target.float()
    if norm_pix:
        target = normalize_patches(target)
    per_patch = (pred.float() - target).pow(2).mean(dim=-1)  # [B, N]
    mask = mask.float()
    return (per_patch * mask).sum() / mask.sum().clamp_min(1e-6)
