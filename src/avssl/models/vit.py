"""Vision Transformer encoders for audio (fbank patches) and video (tubelets).

Audio: AudioMAE (Huang et al. 2022, https://arxiv.org/abs/2207.06405) - a ViT on the
``[B, 1, Ta, F]`` log-mel fbank with 16x16 patches. Video: VideoMAE / MAViL (Tong et al. 2022,
https://arxiv.org/abs/2203.12602; Huang et al. 2022, https://arxiv.org/abs/2212.08071) - a ViT
on ``[B, C, T, H, W]`` with 2x16x16 tubelets. Both: fixed sin-cos position embeddings computed
from the input's token grid (any input length works), pre-norm blocks, final LayerNorm, and
no CLS token (features are mean-pooled, as in MAE's global-pool variant).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from avssl.models.layers import LN_EPS, Block, PatchEmbed2d, PatchEmbed3d
from avssl.models.masking import gather_tokens
from avssl.models.pos_embed import SMALLER_GRID, SinCosPosEmbed
from avssl.models.utils import init_weights

# size -> (embed_dim D, depth, num_heads), as ViT / DeiT
SIZES: dict[str, tuple[int, int, int]] = {
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
}


def resolve_size(
    size: str, embed_dim: int | None = None, depth: int | None = None, num_heads: int | None = None
) -> tuple[int, int, int]:
    """``(D, depth, heads)`` of a named size with optional overrides."""
    if size not in SIZES:
        raise ValueError(f"unknown encoder size {size!r}; choose one of {sorted(SIZES)}")
    d0, l0, h0 = SIZES[size]
    return embed_dim or d0, depth or l0, num_heads or h0


class ViTEncoder(nn.Module):
    """Shared ViT trunk: patch embedding, sin-cos positions, blocks, final norm, mean pooling.

    Subclasses define the patch embedding, :meth:`grid_size` and (un)patchify. There is no CLS
    token: :meth:`forward` mean-pools the tokens.
    """

    modality = ""
    patch_embed: nn.Module  # set by subclasses

    def __init__(
        self,
        size: str,
        embed_dim: int | None,
        depth: int | None,
        num_heads: int | None,
        mlp_ratio: float,
        qkv_bias: bool,
        drop_path_rate: float,
        pos_for_smaller_grid: str = "prefix",
    ) -> None:
        super().__init__()
        if pos_for_smaller_grid not in SMALLER_GRID:
            raise ValueError(
                f"pos_for_smaller_grid must be one of {SMALLER_GRID}, got {pos_for_smaller_grid!r}"
            )
        self.pos_for_smaller_grid = pos_for_smaller_grid
        self.size = size
        self.embed_dim, self.depth, self.num_heads = resolve_size(size, embed_dim, depth, num_heads)
        self.mlp_ratio, self.qkv_bias, self.drop_path_rate = mlp_ratio, qkv_bias, drop_path_rate
        rates = [drop_path_rate * i / max(self.depth - 1, 1) for i in range(self.depth)]
        self.blocks = nn.ModuleList(
            Block(self.embed_dim, self.num_heads, mlp_ratio, qkv_bias, r) for r in rates
        )
        self.norm = nn.LayerNorm(self.embed_dim, eps=LN_EPS)

    def _finish_init(self, default_grid: tuple[int, ...]) -> None:
        self.default_grid = default_grid
        self.pos_embed = SinCosPosEmbed(  # fixed, not saved
            self.embed_dim, default_grid, smaller_grid=self.pos_for_smaller_grid
        )
        self.apply(init_weights)

    def grid_size(self, x_shape: torch.Size | tuple[int, ...]) -> tuple[int, ...]:
        raise NotImplementedError

    def num_tokens(self, x_shape: torch.Size | tuple[int, ...]) -> int:
        """Tokens N produced for an input of shape ``x_shape``."""
        return math.prod(self.grid_size(x_shape))

    def pos_embed_for(self, grid: tuple[int, ...]) -> torch.Tensor:
        """``[1, N, D]`` fixed sin-cos position table for a token grid (a grid smaller than
        :attr:`default_grid`: see ``pos_for_smaller_grid``)."""
        return self.pos_embed(grid)

    def forward_features(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Encodes the input; with ``keep`` only the visible tokens enter the transformer.

        Args:
            x: input in the encoder's layout.
            keep: optional long ``[B, N_keep]`` indices of visible tokens (masked training).

        Returns:
            ``[B, N, D]`` tokens, or ``[B, N_keep, D]`` (in the order of ``keep``).
        """
        grid = self.grid_size(x.shape)
        tokens = self.patch_embed(x) + self.pos_embed_for(grid)  # [B, N, D]
        if keep is not None:
            tokens = gather_tokens(tokens, keep)  # [B, N_keep, D]
        for blk in self.blocks:
            tokens = blk(tokens)
        return self.norm(tokens)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Mean-pooled features ``[B, D]`` (over the visible tokens when ``keep`` is given)."""
        return self.forward_features(x, keep).mean(dim=1)

    def _base_config(self) -> dict[str, Any]:
        return {
            "modality": self.modality,
            "size": self.size,
            "embed_dim": self.embed_dim,
            "depth": self.depth,
            "num_heads": self.num_heads,
            "mlp_ratio": self.mlp_ratio,
            "qkv_bias": self.qkv_bias,
            "drop_path_rate": self.drop_path_rate,
            "pos_for_smaller_grid": self.pos_for_smaller_grid,
        }


def _check_divisible(name: str, shape: tuple[int, ...], sizes: tuple[int, ...]) -> None:
    for dim, p in zip(shape, sizes):
        if dim % p:
            raise ValueError(f"{name}: input shape {shape} is not divisible by patch {sizes}")


class AudioViT(ViTEncoder):
    """ViT on a log-mel fbank ``[B, 1, Ta, F]`` with ``p x p`` patches (AudioMAE).

    Tokens are numbered row-major over the ``(Ta/p, F/p)`` grid (time-major). No CLS token:
    :meth:`forward` mean-pools. Paper: https://arxiv.org/abs/2207.06405.

    Args:
        size: ``tiny``/``small``/``base``/``large`` (see :data:`SIZES`).
        patch_size: square patch side p (16).
        in_chans: input channels (1).
        input_size: default ``(Ta, F)``; only sets the cached position table.
        depth, embed_dim, num_heads: optional overrides of the named size.
        mlp_ratio, qkv_bias, drop_path_rate: block settings.
        pos_for_smaller_grid: positions of an input with a smaller token grid than the
            default one: ``"prefix"`` (the default grid's first positions) or
            ``"interpolate"`` (the default grid's table resized to it, as DINO / XKD for local
            views; :class:`~avssl.models.pos_embed.SinCosPosEmbed`).
    """

    modality = "audio"

    def __init__(
        self,
        size: str = "base",
        patch_size: int = 16,
        in_chans: int = 1,
        input_size: tuple[int, int] | list[int] = (1024, 128),
        depth: int | None = None,
        embed_dim: int | None = None,
        num_heads: int | None = None,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
        pos_for_smaller_grid: str = "prefix",
    ) -> None:
        super().__init__(
            size, embed_dim, depth, num_heads, mlp_ratio, qkv_bias, drop_path_rate,
            pos_for_smaller_grid,
        )  # fmt: skip
        self.patch_size, self.in_chans = patch_size, in_chans
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.patch_embed = PatchEmbed2d(patch_size, in_chans, self.embed_dim)
        self.patch_dim = patch_size * patch_size * in_chans
        self._finish_init(self.grid_size((1, in_chans) + self.input_size))

    def grid_size(self, x_shape: torch.Size | tuple[int, ...]) -> tuple[int, int]:
        """``(Ta/p, F/p)`` for an input of shape ``[B, C, Ta, F]``."""
        if len(x_shape) != 4 or x_shape[1] != self.in_chans:
            raise ValueError(
                f"AudioViT expects [B, {self.in_chans}, Ta, F] input, got {tuple(x_shape)}"
            )
        p = self.patch_size
        _check_divisible("AudioViT", tuple(x_shape[2:]), (p, p))
        return (x_shape[2] // p, x_shape[3] // p)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, Ta, F]`` -> ``[B, N, p*p*C]``, vectors ordered (p_t, p_f, C), token order
        as :meth:`forward_features`."""
        B, C = x.shape[:2]
        gt, gf = self.grid_size(x.shape)
        p = self.patch_size
        x = x.reshape(B, C, gt, p, gf, p)  # [B, C, gt, p, gf, p]
        x = x.permute(0, 2, 4, 3, 5, 1)  # [B, gt, gf, p, p, C]
        return x.reshape(B, gt * gf, p * p * C)  # [B, N, P]

    def unpatchify(self, patches: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Inverse of :meth:`patchify`: ``[B, N, P]``, grid ``(Ta/p, F/p)`` -> ``[B, C, Ta, F]``."""
        B = patches.shape[0]
        gt, gf = grid
        p, C = self.patch_size, self.in_chans
        x = patches.reshape(B, gt, gf, p, p, C)  # [B, gt, gf, p, p, C]
        x = x.permute(0, 5, 1, 3, 2, 4)  # [B, C, gt, p, gf, p]
        return x.reshape(B, C, gt * p, gf * p)

    def config(self) -> dict[str, Any]:
        """JSON-serialisable constructor arguments (with ``"modality"``) for ``build_encoder``."""
        cfg = self._base_config()
        cfg.update(patch_size=self.patch_size, in_chans=self.in_chans)
        cfg["input_size"] = list(self.input_size)
        return cfg


class VideoViT(ViTEncoder):
    """ViT on video ``[B, C, T, H, W]`` with ``t x p x p`` tubelets (VideoMAE / MAViL).

    Tokens are numbered row-major over the ``(T/t, H/p, W/p)`` grid. No CLS token:
    :meth:`forward` mean-pools. Paper: https://arxiv.org/abs/2203.12602.

    Args:
        size: ``tiny``/``small``/``base``/``large`` (see :data:`SIZES`).
        patch_size: spatial patch side p (16).
        tubelet_size: frames per tubelet t (2; 1 for single frames).
        in_chans: input channels (3).
        num_frames, img_size: default input; only set the cached position table.
        depth, embed_dim, num_heads: optional overrides of the named size.
        mlp_ratio, qkv_bias, drop_path_rate: block settings.
        pos_for_smaller_grid: positions of an input with a smaller token grid than the
            default one: ``"prefix"`` (the default grid's first positions) or
            ``"interpolate"`` (the default grid's table resized to it, as DINO / XKD for local
            views; :class:`~avssl.models.pos_embed.SinCosPosEmbed`).
    """

    modality = "video"

    def __init__(
        self,
        size: str = "base",
        patch_size: int = 16,
        tubelet_size: int = 2,
        in_chans: int = 3,
        num_frames: int = 16,
        img_size: int = 224,
        depth: int | None = None,
        embed_dim: int | None = None,
        num_heads: int | None = None,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
        pos_for_smaller_grid: str = "prefix",
    ) -> None:
        super().__init__(
            size, embed_dim, depth, num_heads, mlp_ratio, qkv_bias, drop_path_rate,
            pos_for_smaller_grid,
        )  # fmt: skip
        self.patch_size, self.tubelet_size, self.in_chans = patch_size, tubelet_size, in_chans
        self.num_frames, self.img_size = num_frames, img_size
        self.patch_embed = PatchEmbed3d(patch_size, tubelet_size, in_chans, self.embed_dim)
        self.patch_dim = tubelet_size * patch_size * patch_size * in_chans
        self._finish_init(self.grid_size((1, in_chans, num_frames, img_size, img_size)))

    def grid_size(self, x_shape: torch.Size | tuple[int, ...]) -> tuple[int, int, int]:
        """``(T/t, H/p, W/p)`` for an input of shape ``[B, C, T, H, W]``."""
        if len(x_shape) != 5 or x_shape[1] != self.in_chans:
            raise ValueError(
                f"VideoViT expects [B, {self.in_chans}, T, H, W] input, got {tuple(x_shape)}"
            )
        t, p = self.tubelet_size, self.patch_size
        _check_divisible("VideoViT", tuple(x_shape[2:]), (t, p, p))
        return (x_shape[2] // t, x_shape[3] // p, x_shape[4] // p)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, T, H, W]`` -> ``[B, N, t*p*p*C]``, vectors ordered (t, p_h, p_w, C) as
        VideoMAE, token order as :meth:`forward_features`."""
        B, C = x.shape[:2]
        gt, gh, gw = self.grid_size(x.shape)
        t, p = self.tubelet_size, self.patch_size
        x = x.reshape(B, C, gt, t, gh, p, gw, p)  # [B, C, gt, t, gh, p, gw, p]
        x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)  # [B, gt, gh, gw, t, p, p, C]
        return x.reshape(B, gt * gh * gw, t * p * p * C)  # [B, N, P]

    def unpatchify(self, patches: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """Inverse of :meth:`patchify`: ``[B, N, P]`` + grid -> ``[B, C, T, H, W]``."""
        B = patches.shape[0]
        gt, gh, gw = grid
        t, p, C = self.tubelet_size, self.patch_size, self.in_chans
        x = patches.reshape(B, gt, gh, gw, t, p, p, C)  # [B, gt, gh, gw, t, p, p, C]
        x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)  # [B, C, gt, t, gh, p, gw, p]
        return x.reshape(B, C, gt * t, gh * p, gw * p)

    def config(self) -> dict[str, Any]:
        """JSON-serialisable constructor arguments (with ``"modality"``) for ``build_encoder``."""
        cfg = self._base_config()
        cfg.update(
            patch_size=self.patch_size,
            tubelet_size=self.tubelet_size,
            in_chans=self.in_chans,
            num_frames=self.num_frames,
            img_size=self.img_size,
        )
        return cfg
