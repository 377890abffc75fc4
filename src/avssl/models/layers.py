"""Shared transformer building blocks: patch embeddings, attention, MLP and pre-norm block.

Follows ViT (Dosovitskiy et al. 2021, https://arxiv.org/abs/2010.11929) with the tubelet
embedding of ViViT / VideoMAE (https://arxiv.org/abs/2203.12602). Attention goes through
``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient kernels on GPU);
a naive softmax path is kept for benchmark baselines (:func:`set_fused_attention`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LN_EPS = 1e-6  # MAE / ViT convention


def set_fused_attention(module: nn.Module, enabled: bool) -> int:
    """Switches every :class:`Attention` inside ``module`` between SDPA and naive softmax.

    Args:
        module: any module tree (encoder, decoder, objective).
        enabled: True for ``scaled_dot_product_attention``, False for the naive
            ``softmax(q k^T / sqrt(d)) v`` path (benchmark baseline).

    Returns:
        The number of attention layers switched.
    """
    count = 0
    for m in module.modules():
        if isinstance(m, Attention):
            m.fused = enabled
            count += 1
    return count


COMPILE_MODES = ("none", "blocks", "auto")


def compile_blocks(module: nn.Module, policy: str = "blocks", **options) -> int:
    """Regional ``torch.compile``: compiles every transformer :class:`Block` inside ``module``.

    Each block is compiled in place (``nn.Module.compile``: state-dict names do not change).
    Blocks of the same width share one compiled graph per input shape, so compiling is quick
    (a ViT-B and its decoder are two or three graphs) and everything around the blocks
    (masking, gathers, losses) stays eager, where whole-model graphs have hit inductor bugs
    (torch 2.11, CAV-MAE step: ``NameError`` in generated code).

    Args:
        module: any module tree (encoder, decoder, objective).
        policy: ``"blocks"`` compiles; ``"none"`` does nothing; ``"auto"`` compiles only when
            the module's parameters are on a CUDA device (where inductor pays off).
        **options: passed to ``torch.compile`` (``mode``, ``backend="eager"`` in tests, ...).

    Returns:
        The number of blocks compiled.
    """
    if policy not in COMPILE_MODES:
        raise ValueError(f"compile must be one of {COMPILE_MODES}, got {policy!r}")
    if policy == "none":
        return 0
    if policy == "auto":
        first = next(module.parameters(), None)
        if first is None or first.device.type != "cuda":
            return 0
    blocks = [m for m in module.modules() if isinstance(m, Block)]
    # one graph per distinct (width, sequence length); MAViL-sized models have ~10 of them
    limit = max(torch._dynamo.config.recompile_limit, 64)
    torch._dynamo.config.recompile_limit = limit
    for blk in blocks:
        blk.compile(dynamic=False, **options)
    return len(blocks)


class PatchEmbed2d(nn.Module):
    """Non-overlapping 2-D patches of ``[B, C, H, W]`` -> tokens ``[B, N, D]`` (row-major order).

    Args:
        patch_size: square patch side (16 for AudioMAE on the fbank).
        in_chans: input channels (1 for a spectrogram).
        embed_dim: token width D.
    """

    def __init__(self, patch_size: int = 16, in_chans: int = 1, embed_dim: int = 768) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The convolution with stride = kernel, computed as one matrix product over the patches
        # (cuDNN's convolution kernels took ~8 ms of a 210 ms CAV-MAE step on an H200; the
        # product takes well under one). Same parameters and values as ``self.proj(x)``.
        B, C, H, W = x.shape
        p = self.patch_size
        h, w = H // p, W // p
        x = x[:, :, : h * p, : w * p].reshape(B, C, h, p, w, p)
        x = x.permute(0, 2, 4, 1, 3, 5).reshape(B, h * w, C * p * p)  # [B, N, C p p]
        weight = self.proj.weight.reshape(self.proj.out_channels, -1)  # [D, C p p]
        return F.linear(x, weight, self.proj.bias)  # [B, N, D], N = (H/p)(W/p), row-major


class PatchEmbed3d(nn.Module):
    """Tubelet embedding (Conv3d) of ``[B, C, T, H, W]`` -> tokens ``[B, N, D]``, order (t, h, w).

    Args:
        patch_size: spatial patch side.
        tubelet_size: frames per tubelet (2 in VideoMAE / MAViL).
        in_chans: input channels (3 for RGB).
        embed_dim: token width D.
    """

    def __init__(
        self, patch_size: int = 16, tubelet_size: int = 2, in_chans: int = 3, embed_dim: int = 768
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.tubelet_size = tubelet_size
        k = (tubelet_size, patch_size, patch_size)
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=k, stride=k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # as PatchEmbed2d: the strided convolution as one matrix product over the tubelets
        B, C, T, H, W = x.shape
        p, q = self.patch_size, self.tubelet_size
        t, h, w = T // q, H // p, W // p
        x = x[:, :, : t * q, : h * p, : w * p].reshape(B, C, t, q, h, p, w, p)
        x = x.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(B, t * h * w, C * q * p * p)
        weight = self.proj.weight.reshape(self.proj.out_channels, -1)  # [D, C q p p]
        return F.linear(x, weight, self.proj.bias)  # [B, N, D], N = (T/t)(H/p)(W/p)


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (qkv bias on, as ViT/MAE).

    Args:
        dim: token width D.
        num_heads: number of heads (D must be divisible by it).
        qkv_bias: bias on the qkv projection.
        fused: use ``scaled_dot_product_attention`` (True) or the naive softmax path.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, fused: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.fused = fused
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim)  # [B, N, 3, h, Dh]
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x [B, h, N, Dh]
        if self.fused:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)  # [B, h, N, N]
            out = attn.softmax(dim=-1) @ v  # [B, h, N, Dh]
        out = out.transpose(1, 2).reshape(B, N, D)  # [B, N, D]
        return self.proj(out)


class Mlp(nn.Module):
    """Two-layer MLP with GELU: D -> hidden -> D."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DropPath(nn.Module):
    """Stochastic depth per sample (Huang et al. 2016, https://arxiv.org/abs/1603.09382)."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)  # [B, 1, 1]
        noise = torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(keep)
        return x * noise / keep


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``.

    Args:
        dim: token width D.
        num_heads: attention heads.
        mlp_ratio: hidden width of the MLP as a multiple of D.
        qkv_bias: bias on the qkv projection.
        drop_path: stochastic-depth rate of this block.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))
