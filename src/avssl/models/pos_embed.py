"""Fixed sin-cos position embeddings computed from the token grid (1-D, 2-D or 3-D).

The 1-D form is the Transformer's (Vaswani et al. 2017, https://arxiv.org/abs/1706.03762);
2-D is MAE's (He et al. 2022, https://arxiv.org/abs/2111.06377): half of the channels encode
the row, half the column. 3-D splits the channels into time, height and width parts. Because
the table is a function of the grid, any input length works (e.g. a 512-frame fbank with an
encoder built for 1024 frames). Tables are cached per (grid, dim).
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import nn


def sincos_1d(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """Sin-cos table for 1-D positions.

    Args:
        positions: float ``[N]`` positions.
        dim: even number of channels.

    Returns:
        float64 ``[N, dim]``: ``[sin(p * w_k), cos(p * w_k)]`` with ``w_k = 10000^(-k/(dim/2))``.
    """
    if dim % 2:
        raise ValueError(f"sin-cos embedding needs an even dim, got {dim}")
    half = dim // 2
    k = torch.arange(half, dtype=torch.float64, device=positions.device)
    omega = 1.0 / 10000 ** (k / half)  # [dim/2]
    angles = positions.to(torch.float64)[:, None] * omega[None, :]  # [N, dim/2]
    return torch.cat([angles.sin(), angles.cos()], dim=1)  # [N, dim]


def _split_dims(dim: int, parts: int) -> list[int]:
    """Even channel counts per axis; the first axis takes the remainder."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding needs an even dim, got {dim}")
    each = 2 * (dim // (2 * parts))
    return [dim - each * (parts - 1)] + [each] * (parts - 1)


@lru_cache(maxsize=64)
def _table(grid: tuple[int, ...], dim: int, device: torch.device) -> torch.Tensor:
    dims = _split_dims(dim, len(grid))
    axes = [torch.arange(g, device=device) for g in grid]
    coords = torch.meshgrid(*axes, indexing="ij")  # each [*grid]
    parts = [sincos_1d(c.reshape(-1), d) for c, d in zip(coords, dims)]  # each [N, d]
    return torch.cat(parts, dim=1).float()[None]  # [1, N, D], N row-major over the grid


def sincos_pos_embed(
    grid: tuple[int, ...], dim: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """Fixed position embedding for a token grid.

    Args:
        grid: token grid, e.g. ``(T/16, F/16)`` for audio or ``(T/t, H/p, W/p)`` for video.
            Tokens are numbered row-major over it, as the patch embeddings flatten them.
        dim: embedding width D (even).
        device: where to compute and cache the table (no host-to-device copy per call).

    Returns:
        float32 ``[1, N, D]`` (cached per grid, dim and device: do not modify in place).
    """
    grid = tuple(int(g) for g in grid)
    if not grid or min(grid) < 1:
        raise ValueError(f"invalid token grid {grid}")
    device = torch.device(device if device is not None else "cpu")
    if torch.compiler.is_compiling():  # traced into the graph; the cache is for eager calls
        return _table.__wrapped__(grid, int(dim), device)
    return _table(grid, int(dim), device)


class SinCosPosEmbed(nn.Module):
    """Returns the ``[1, N, D]`` table for a grid; the default grid's table is a non-persistent
    buffer (moves with the module, never saved), other grids come from the per-device cache.

    Args:
        dim: embedding width D.
        default_grid: grid of the usual input (optional).
    """

    table: torch.Tensor

    def __init__(self, dim: int, default_grid: tuple[int, ...] | None = None) -> None:
        super().__init__()
        self.dim = dim
        self.default_grid = tuple(default_grid) if default_grid is not None else None
        table = sincos_pos_embed(default_grid, dim).clone() if default_grid else torch.zeros(0)
        self.register_buffer("table", table, persistent=False)

    def forward(self, grid: tuple[int, ...]) -> torch.Tensor:
        if tuple(grid) == self.default_grid:
            return self.table
        table = sincos_pos_embed(grid, self.dim, self.table.device)
        return table.to(self.table.dtype)
