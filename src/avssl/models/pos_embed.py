"""Fixed sin-cos position embeddings computed from the token grid (1-D, 2-D or 3-D).

The 1-D form is the Transformer's (Vaswani et al. 2017, https://arxiv.org/abs/1706.03762);
2-D is MAE's (He et al. 2022, https://arxiv.org/abs/2111.06377): half of the channels encode
the row, half the column. 3-D splits the channels into time, height and width parts. Because
the table is a function of the grid, any input length works (e.g. a 512-frame fbank with an
encoder built for 1024 frames). Tables are cached per (grid, dim).

A grid smaller than the module's default grid gets, by default, the table computed for that
grid: integer positions from 0, i.e. the positions of the first tokens of the default grid
(``smaller_grid="prefix"``). ``smaller_grid="interpolate"`` instead resizes the default grid's
table to the smaller grid, so that a smaller view spans the default view's whole range of
positions: DINO's and XKD's ``interpolate_pos_encoding`` for local crops
(https://arxiv.org/abs/2104.14294): ``F.interpolate`` with ``align_corners=False``, bicubic
in 2-D (DINO; XKD's audio ViT), trilinear in 3-D (XKD's video ViT), linear in 1-D. It is given
the target ``size`` (DINO / XKD pass ``scale_factor = (g + 0.1) / G``, which places the samples
up to a third of a token differently).
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

SMALLER_GRID = ("prefix", "interpolate")  # the table of a grid smaller than the default


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


def _table64(grid: tuple[int, ...], dim: int, device: torch.device) -> torch.Tensor:
    dims = _split_dims(dim, len(grid))
    axes = [torch.arange(g, device=device) for g in grid]
    coords = torch.meshgrid(*axes, indexing="ij")  # each [*grid]
    parts = [sincos_1d(c.reshape(-1), d) for c, d in zip(coords, dims)]  # each [N, d]
    return torch.cat(parts, dim=1)  # float64 [N, D], N row-major over the grid


@lru_cache(maxsize=64)
def _table(grid: tuple[int, ...], dim: int, device: torch.device) -> torch.Tensor:
    return _table64(grid, dim, device).float()[None]  # [1, N, D]


INTERP_MODES = {1: "linear", 2: "bicubic", 3: "trilinear"}  # as DINO (2-D), XKD (2-D, 3-D)


@lru_cache(maxsize=64)
def _resized_table(
    base: tuple[int, ...], grid: tuple[int, ...], dim: int, device: torch.device
) -> torch.Tensor:
    table = _table64(base, dim, device)  # [N0, D]
    x = table.T.reshape(1, dim, *base)  # [1, D, *base]
    x = F.interpolate(x, size=grid, mode=INTERP_MODES[len(grid)], align_corners=False)
    return x.reshape(dim, -1).T.float()[None].contiguous()  # [1, N, D], row-major over grid


def resized_pos_embed(
    base_grid: tuple[int, ...],
    grid: tuple[int, ...],
    dim: int,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The sin-cos table of ``base_grid`` resized to ``grid`` (DINO / XKD
    ``interpolate_pos_encoding``: ``F.interpolate`` of the table, :data:`INTERP_MODES`,
    ``align_corners=False``, computed in float64).

    Token ``i`` of an axis of ``grid`` (size g) samples the base table at position
    ``(i + 0.5) * G / g - 0.5`` of that axis (size G; trilinear / linear: clamped to
    ``[0, G - 1]``); an axis of the same size keeps its values exactly.

    Returns:
        float32 ``[1, N, D]`` (cached per grids, dim and device: do not modify in place).
    """
    base_grid, grid = tuple(int(g) for g in base_grid), tuple(int(g) for g in grid)
    if len(base_grid) != len(grid) or len(grid) not in INTERP_MODES or min(grid) < 1:
        raise ValueError(f"cannot resize a position table of grid {base_grid} to {grid}")
    device = torch.device(device if device is not None else "cpu")
    if torch.compiler.is_compiling():
        return _resized_table.__wrapped__(base_grid, grid, int(dim), device)
    return _resized_table(base_grid, grid, int(dim), device)


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
        smaller_grid: the table of a grid no larger than ``default_grid`` on any axis (and
            smaller on one): ``"prefix"`` computes it for that grid (the positions of the first
            tokens of the default grid), ``"interpolate"`` resizes the default grid's table to
            it (:func:`resized_pos_embed`; DINO / XKD local views). Larger grids always get
            their own table (positions continue past the default grid).
    """

    table: torch.Tensor

    def __init__(
        self,
        dim: int,
        default_grid: tuple[int, ...] | None = None,
        smaller_grid: str = "prefix",
    ) -> None:
        super().__init__()
        if smaller_grid not in SMALLER_GRID:
            raise ValueError(f"smaller_grid must be one of {SMALLER_GRID}, got {smaller_grid!r}")
        self.dim, self.smaller_grid = dim, smaller_grid
        self.default_grid = tuple(default_grid) if default_grid is not None else None
        table = sincos_pos_embed(default_grid, dim).clone() if default_grid else torch.zeros(0)
        self.register_buffer("table", table, persistent=False)

    def forward(self, grid: tuple[int, ...]) -> torch.Tensor:
        grid = tuple(grid)
        base = self.default_grid
        if grid == base:
            return self.table
        if self.smaller_grid == "interpolate" and base is not None and self._within(grid, base):
            table = resized_pos_embed(base, grid, self.dim, self.table.device)
        else:
            table = sincos_pos_embed(grid, self.dim, self.table.device)
        return table.to(self.table.dtype)

    @staticmethod
    def _within(grid: tuple[int, ...], base: tuple[int, ...]) -> bool:
        return len(grid) == len(base) and all(g <= b for g, b in zip(grid, base))
