"""Token masking for masked autoencoding, and gather / unshuffle helpers.

Conventions (MAE, He et al. 2022, https://arxiv.org/abs/2111.06377):
- every masker returns ``(keep, mask, ids_restore)``: ``keep`` long ``[B, N_keep]`` the visible
  token indices in ascending order, ``mask`` float ``[B, N]`` with 1 = masked, and
  ``ids_restore`` long ``[B, N]`` such that ``unshuffle(cat(visible, masked), ids_restore)``
  restores token order;
- the number of visible tokens is exact and the same for every sample:
  ``N_keep = int(N * (1 - ratio))`` (:func:`num_keep`), so shapes are static.

Tube masking is VideoMAE's (Tong et al. 2022, https://arxiv.org/abs/2203.12602); time and
frequency masking of the spectrogram patch grid is AudioMAE's (Huang et al. 2022,
https://arxiv.org/abs/2207.06405).
"""

from __future__ import annotations

import torch

Masking = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def num_keep(n: int, ratio: float) -> int:
    """Visible tokens out of ``n`` at mask ratio ``ratio``: ``int(n * (1 - ratio))``.

    A 1e-6 guard absorbs float round-off (``10 * (1 - 0.9)`` is 0.999...98 -> 1).
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")
    keep = int(n * (1.0 - ratio) + 1e-6)
    if keep < 1:
        raise ValueError(f"mask ratio {ratio} leaves no visible token out of {n}")
    return keep


def check_ratio(option: str, n: int, ratio: float) -> None:
    """:func:`num_keep`'s check, its message naming the config option (``mask_ratio_audio``)."""
    try:
        num_keep(n, ratio)
    except ValueError as err:
        raise ValueError(f"model.init_args.{option}: {err}") from None


def _random_subset(
    B: int,
    n: int,
    n_mask: int,
    device: torch.device | str | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Bool ``[B, n]`` with exactly ``n_mask`` True entries per row, chosen uniformly."""
    noise = torch.rand(B, n, device=device, generator=generator)  # [B, n]
    ranks = noise.argsort(dim=1).argsort(dim=1)  # rank of each position, a random permutation
    return ranks < n_mask


def masking_from_mask(mask: torch.Tensor, n_keep: int) -> Masking:
    """``(keep, mask, ids_restore)`` from a bool mask ``[B, N]`` with ``N - n_keep`` True per row.

    ``n_keep`` is passed in (not counted) so that the output shape never depends on data.
    """
    ids_shuffle = mask.to(torch.uint8).argsort(dim=1, stable=True)  # visible first, ascending
    ids_restore = ids_shuffle.argsort(dim=1)  # [B, N]
    keep = ids_shuffle[:, :n_keep]  # [B, N_keep]
    return keep, mask.float(), ids_restore


def random_masking(
    B: int,
    N: int,
    ratio: float,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Masking:
    """Uniform random masking of ``N`` tokens per sample (MAE).

    Args:
        B: batch size.
        N: tokens per sample.
        ratio: fraction masked; exactly ``N - num_keep(N, ratio)`` tokens are masked.
        device: device of the outputs.
        generator: optional RNG (on ``device``) for reproducible masks.

    Returns:
        ``(keep [B, N_keep], mask [B, N] float 1=masked, ids_restore [B, N])``.
    """
    n_keep = num_keep(N, ratio)
    return masking_from_mask(_random_subset(B, N, N - n_keep, device, generator), n_keep)


def videomae_keep(n: int, ratio: float) -> int:
    """Visible positions out of ``n`` as VideoMAE's tube masking counts them: it masks
    ``int(ratio * n)`` (Tong et al. 2022, https://arxiv.org/abs/2203.12602), so 20 of a 224 px
    frame's 196 stay visible at 0.9, where :func:`num_keep` (MAE's count) keeps 19."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")
    return n - int(ratio * n + 1e-6)


def tube_masking(
    B: int,
    grid: tuple[int, int, int],
    ratio: float,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
    s_keep: int | None = None,
) -> Masking:
    """VideoMAE tube masking: one random spatial mask shared by every temporal slice.

    Args:
        B: batch size.
        grid: token grid ``(T/t, H/p, W/p)``; tokens are numbered ``t * (H/p * W/p) + s``.
        ratio: fraction of spatial positions masked (so also of all tokens).
        device: device of the outputs.
        generator: optional RNG.
        s_keep: visible spatial positions; default ``num_keep(H/p * W/p, ratio)`` (MAE's
            count, which MAViL's objective uses); :func:`videomae_keep` gives VideoMAE's.

    Returns:
        ``(keep [B, Tg * S_keep], mask [B, N], ids_restore [B, N])``.
    """
    Tg, Hg, Wg = grid
    S = Hg * Wg
    s_keep = num_keep(S, ratio) if s_keep is None else s_keep
    if not 1 <= s_keep <= S:
        raise ValueError(f"tube masking: {s_keep} visible positions out of {S}")
    spatial = _random_subset(B, S, S - s_keep, device, generator)  # [B, S]
    mask = spatial.repeat(1, Tg)  # [B, Tg * S], same spatial mask for every t
    return masking_from_mask(mask, Tg * s_keep)


def time_freq_masking(
    B: int,
    grid: tuple[int, int],
    time_ratio: float,
    freq_ratio: float,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Masking:
    """AudioMAE-style structured masking of the spectrogram patch grid.

    Whole time rows and whole frequency columns of the ``(T/p, F/p)`` grid are masked; a token
    is visible only when both its row and its column are. Visible tokens:
    ``num_keep(Tg, time_ratio) * num_keep(Fg, freq_ratio)``.

    Args:
        B: batch size.
        grid: token grid ``(T/p, F/p)``, tokens numbered ``t * Fg + f``.
        time_ratio: fraction of time rows masked.
        freq_ratio: fraction of frequency columns masked.
        device: device of the outputs.
        generator: optional RNG.

    Returns:
        ``(keep, mask [B, N], ids_restore [B, N])``.
    """
    Tg, Fg = grid
    t_keep, f_keep = num_keep(Tg, time_ratio), num_keep(Fg, freq_ratio)
    rows = _random_subset(B, Tg, Tg - t_keep, device, generator)  # [B, Tg]
    cols = _random_subset(B, Fg, Fg - f_keep, device, generator)  # [B, Fg]
    mask = (rows[:, :, None] | cols[:, None, :]).reshape(B, Tg * Fg)  # [B, N]
    return masking_from_mask(mask, t_keep * f_keep)


def gather_tokens(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Selects tokens: ``x [B, N, ...]``, ``keep [B, K]`` -> ``[B, K, ...]``."""
    index = keep.reshape(keep.shape + (1,) * (x.ndim - 2))  # [B, K, 1, ...]
    index = index.expand(keep.shape + x.shape[2:])  # [B, K, ...]
    return x.gather(1, index)


def unshuffle(
    visible: torch.Tensor, ids_restore: torch.Tensor, mask_token: torch.Tensor
) -> torch.Tensor:
    """Places visible tokens back at their positions and ``mask_token`` at masked ones.

    Args:
        visible: ``[B, N_keep, D]`` tokens of ``keep`` (in the order of ``keep``).
        ids_restore: ``[B, N]`` from the masker.
        mask_token: ``[1, 1, D]`` (or broadcastable) learned mask embedding.

    Returns:
        ``[B, N, D]`` in original token order.
    """
    B, n_keep, D = visible.shape
    N = ids_restore.shape[1]
    fill = mask_token.to(visible.dtype).expand(B, N - n_keep, D)  # [B, N - N_keep, D]
    full = torch.cat([visible, fill], dim=1)  # [B, N, D] in shuffled order
    return gather_tokens(full, ids_restore)  # [B, N, D] in token order


def scatter_tokens(visible: torch.Tensor, keep: torch.Tensor, N: int, fill: float = 0.0):
    """Writes ``visible [B, K, D]`` at positions ``keep`` of a ``[B, N, D]`` tensor of ``fill``."""
    B, K, D = visible.shape
    out = visible.new_full((B, N, D), fill)
    return out.scatter(1, keep[:, :, None].expand(B, K, D), visible)
