"""Distillation and domain-alignment losses (torch only).

- `dino_distill` / `update_center`: the centred, sharpened teacher cross-entropy of DINO
  (Caron et al. 2021, https://arxiv.org/abs/2104.14294), used across modalities by XKD
  (Sarkar & Etemad 2022, https://arxiv.org/abs/2211.13929).
- `mmd`: maximum mean discrepancy with a sum of Gaussian kernels (XKD's domain alignment).
- `coral`: Deep CORAL (Sun & Saenko 2016, https://arxiv.org/abs/1607.01719).
- `mean_coral`: CORAL plus the gap between the means (DomainBed's form, XKD's code).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from avssl.losses._precision import float32_loss

# Inverse squared bandwidths gamma of the Gaussian kernels exp(-gamma * ||x - y||^2) summed by
# `mmd`: one per decade from 1e-3 to 1e3, the set used by XKD's public code (taken there from
# DomainBed), so that some kernel is informative whatever the scale of the features.
MMD_GAMMAS: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)


@float32_loss
def dino_distill(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    center: torch.Tensor,
    student_temp: float = 0.1,
    teacher_temp: float = 0.04,
) -> torch.Tensor:
    """Cross-entropy from a centred, sharpened teacher to the student (DINO).

    The teacher distribution ``softmax((teacher - center) / teacher_temp)`` is detached; the loss
    is ``-sum_k p_teacher[k] * log_softmax(student / student_temp)[k]`` averaged over the batch.

    Args:
        student_logits: ``[B, K]`` student head outputs.
        teacher_logits: ``[B, K]`` teacher head outputs (row i is the target of student row i).
        center: ``[K]`` or ``[1, K]`` running mean of the teacher outputs.
        student_temp: student softmax temperature.
        teacher_temp: teacher softmax temperature (lower = sharper).

    Returns:
        Scalar loss.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"dino_distill: student {tuple(student_logits.shape)} and teacher "
            f"{tuple(teacher_logits.shape)} shapes differ"
        )
    teacher_logits, student_logits = teacher_logits.float(), student_logits.float()
    target = F.softmax((teacher_logits - center) / teacher_temp, dim=-1).detach()
    log_prob = F.log_softmax(student_logits / student_temp, dim=-1)
    return -(target * log_prob).sum(dim=-1).mean()


@torch.no_grad()
def update_center(
    center: torch.Tensor, teacher_logits: torch.Tensor, momentum: float = 0.9
) -> torch.Tensor:
    """EMA of the teacher's batch mean: ``center * m + mean(teacher) * (1 - m)``.

    When ``torch.distributed`` is initialised the batch mean is taken over all ranks (sum and
    count all-reduced), so every rank keeps the same centre.

    Args:
        center: ``[K]`` or ``[1, K]`` current centre.
        teacher_logits: ``[B, K]`` teacher outputs of this step.
        momentum: EMA momentum (DINO and XKD use 0.9).

    Returns:
        The new centre, same shape as ``center`` (the input is not modified); ``center`` itself
        when no rank has a row (``teacher_logits`` may hold 0 rows).
    """
    total = teacher_logits.detach().float().sum(dim=0)  # [K]
    count = torch.tensor([float(teacher_logits.shape[0])], device=total.device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(total)
        dist.all_reduce(count)
    if float(count) == 0:
        return center.clone()
    batch_mean = (total / count).to(center.dtype).reshape(center.shape)
    return center * momentum + batch_mean * (1.0 - momentum)


def _sq_dists(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pairwise squared Euclidean distances ``[Nx, Ny]``, clamped at 0."""
    xx = x.pow(2).sum(dim=-1, keepdim=True)  # [Nx, 1]
    yy = y.pow(2).sum(dim=-1, keepdim=True).T  # [1, Ny]
    return (xx + yy - 2.0 * x @ y.T).clamp_min(0.0)


def gaussian_kernel_sum(
    x: torch.Tensor, y: torch.Tensor, gammas: tuple[float, ...] = MMD_GAMMAS
) -> torch.Tensor:
    """``K[i, j] = sum_g exp(-g * ||x_i - y_j||^2)`` for the inverse bandwidths ``gammas``."""
    d2 = _sq_dists(x, y)
    return sum(torch.exp(-g * d2) for g in gammas)  # type: ignore[return-value]


@float32_loss
def mmd(x: torch.Tensor, y: torch.Tensor, gammas: tuple[float, ...] = MMD_GAMMAS) -> torch.Tensor:
    """Squared maximum mean discrepancy between two samples (biased V-statistic).

    ``MMD^2 = mean K(x, x) + mean K(y, y) - 2 mean K(x, y)`` with ``K`` the sum of Gaussian
    kernels of inverse squared bandwidths ``gammas`` (default `MMD_GAMMAS`: 1e-3 ... 1e3, one
    per decade). Diagonal terms are included, so identical samples give exactly 0.

    Args:
        x: ``[Nx, D]`` features of one domain (e.g. video).
        y: ``[Ny, D]`` features of the other domain (e.g. audio).
        gammas: inverse squared bandwidths.

    Returns:
        Scalar, >= 0 up to rounding.
    """
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(
            f"mmd: expected [Nx, D] and [Ny, D], got {tuple(x.shape)}, {tuple(y.shape)}"
        )
    x, y = x.float(), y.float()
    kxx = gaussian_kernel_sum(x, x, gammas).mean()
    kyy = gaussian_kernel_sum(y, y, gammas).mean()
    kxy = gaussian_kernel_sum(x, y, gammas).mean()
    return kxx + kyy - 2.0 * kxy


def _covariance(x: torch.Tensor) -> torch.Tensor:
    """Unbiased feature covariance ``[D, D]`` of ``x`` ``[N, D]`` (N >= 2)."""
    centred = x - x.mean(dim=0, keepdim=True)
    return centred.T @ centred / (x.shape[0] - 1)


@float32_loss
def coral(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Deep CORAL loss ``||C_x - C_y||_F^2 / (4 d^2)`` (Sun & Saenko 2016).

    Args:
        x: ``[Nx, D]`` source features, Nx >= 2.
        y: ``[Ny, D]`` target features, Ny >= 2.

    Returns:
        Scalar loss, with ``C`` the unbiased covariance of each sample.
    """
    _check_domains("coral", x, y)
    x, y = x.float(), y.float()
    d = x.shape[1]
    return (_covariance(x) - _covariance(y)).pow(2).sum() / (4.0 * d * d)


@float32_loss
def mean_coral(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """CORAL with the gap between the means added, the variant of DomainBed
    (https://arxiv.org/abs/2007.01434) that XKD's public code aligns with:
    ``mean_d (mu_x - mu_y)_d^2 + mean_{d,e} (C_x - C_y)_{de}^2``.

    Unlike :func:`coral` it is not invariant to a shift of one domain, and its covariance term
    is 4x Deep CORAL's (a mean over the ``D^2`` entries instead of a sum over ``4 D^2``).

    Args:
        x: ``[Nx, D]`` source features, Nx >= 2.
        y: ``[Ny, D]`` target features, Ny >= 2.
    """
    _check_domains("mean_coral", x, y)
    x, y = x.float(), y.float()
    mean_gap = (x.mean(dim=0) - y.mean(dim=0)).pow(2).mean()
    return mean_gap + (_covariance(x) - _covariance(y)).pow(2).mean()


def _check_domains(name: str, x: torch.Tensor, y: torch.Tensor) -> None:
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(
            f"{name}: expected [Nx, D] and [Ny, D], got {tuple(x.shape)}, {tuple(y.shape)}"
        )
    if x.shape[0] < 2 or y.shape[0] < 2:
        raise ValueError(f"{name}: needs at least 2 samples per domain to estimate a covariance")
