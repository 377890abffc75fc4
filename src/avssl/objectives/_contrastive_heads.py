"""The projection heads and the DropToken pooling of
:class:`~avssl.objectives.contrastive.AVContrastive` (``projection_head`` also serves XDC and
CrissCross).

VATT: Akbari et al. 2021, https://arxiv.org/abs/2104.11178; AVID: Morgado et al. 2021,
https://arxiv.org/abs/2004.12943; MMV's FAC heads: Alayrac et al. 2020,
https://arxiv.org/abs/2006.16228.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from avssl.models.masking import random_masking
from avssl.models.vit import ViTEncoder


def projection_head(dim: int, hidden: int, out: int) -> nn.Module:
    """Linear (``hidden == 0``) or Linear-GELU-Linear projection into the contrastive space."""
    if hidden <= 0:
        return nn.Linear(dim, out)
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, out))


HEADS = ("mlp", "fac", "avid")


def avid_head(dim: int, hidden: int, out: int) -> nn.Module:
    """AVID's projection head (both modalities): Linear-ReLU-Linear-ReLU-Linear, two hidden
    layers ``hidden`` wide (AVID's Kinetics config: 512, 512, then 128; Morgado et al. 2021,
    https://arxiv.org/abs/2004.12943, and its public code)."""
    return nn.Sequential(
        nn.Linear(dim, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, out),
    )


def audio_video_heads(kind: str, dim: int, hidden: int, out: int) -> tuple[nn.Module, nn.Module]:
    """The (audio, video) projection heads of ``kind`` (one of :data:`HEADS`): "mlp" two
    :func:`projection_head`, "fac" a Linear for audio and MMV's :func:`fac_video_head`, "avid"
    two :func:`avid_head`; a ValueError for another kind or "avid" without a hidden layer."""
    if kind not in HEADS:
        raise ValueError(f"heads must be one of {', '.join(HEADS)}, got {kind!r}")
    if kind == "fac":
        return nn.Linear(dim, out), fac_video_head(dim, out)
    if kind == "avid":
        if hidden <= 0:
            raise ValueError(f"heads: avid needs proj_hidden_dim > 0, got {hidden}")
        return avid_head(dim, hidden, out), avid_head(dim, hidden, out)
    return projection_head(dim, hidden, out), projection_head(dim, hidden, out)


def fac_video_head(dim: int, out: int) -> nn.Module:
    """The video-to-audio-video head of MMV's fine-and-coarse (FAC) design, which VATT uses:
    Linear-BN-ReLU-Linear-BN, both linear layers ``out`` wide and without bias (Alayrac et al.
    2020, https://arxiv.org/abs/2006.16228). The batch norms standardise each output dimension
    over the batch, which keeps the video embeddings of a batch apart."""
    return nn.Sequential(
        nn.Linear(dim, out, bias=False),
        nn.BatchNorm1d(out),
        nn.ReLU(),
        nn.Linear(out, out, bias=False),
        nn.BatchNorm1d(out),
    )


def pooled(encoder: ViTEncoder, x: torch.Tensor, drop: float) -> torch.Tensor:
    """Mean-pooled features ``[B, D]``; with ``drop > 0`` only a random subset of tokens is fed
    to the encoder (DropToken, VATT)."""
    if drop <= 0:
        return encoder(x)
    n = math.prod(encoder.grid_size(x.shape))
    keep, _, _ = random_masking(x.shape[0], n, drop, x.device)  # keep [B, N_keep]
    return encoder(x, keep)
