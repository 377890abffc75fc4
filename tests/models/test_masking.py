"""Masking invariants: kept + masked = all, exact ratios, tube masks shared across time."""

from __future__ import annotations

import pytest
import torch

from avssl.models.masking import (
    gather_tokens,
    num_keep,
    random_masking,
    scatter_tokens,
    time_freq_masking,
    tube_masking,
    unshuffle,
)


def _check_partition(keep: torch.Tensor, mask: torch.Tensor, ids_restore: torch.Tensor) -> None:
    B, N = mask.shape
    for i in range(B):
        kept = set(keep[i].tolist())
        masked = set(torch.nonzero(mask[i]).flatten().tolist())
        assert len(kept) == keep.shape[1]  # no duplicates
        assert kept.isdisjoint(masked)
        assert kept | masked == set(range(N))
    assert torch.equal(keep, keep.sort(dim=1).values)  # ascending token order
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    # ids_restore is a permutation; restoring [keep, masked] gives 0..N-1
    ids_shuffle = ids_restore.argsort(dim=1)
    assert torch.equal(ids_shuffle[:, : keep.shape[1]], keep)
    restored = ids_shuffle.gather(1, ids_restore)
    assert torch.equal(restored, torch.arange(N).expand(B, N))


@pytest.mark.parametrize(
    "n,ratio,expected", [(512, 0.75, 128), (196, 0.9, 19), (512, 0.8, 102), (10, 0.9, 1), (8, 0, 8)]
)
def test_num_keep(n: int, ratio: float, expected: int) -> None:
    assert num_keep(n, ratio) == expected


def test_num_keep_rejects_bad_ratio() -> None:
    with pytest.raises(ValueError, match="mask ratio"):
        num_keep(10, 1.0)
    with pytest.raises(ValueError, match="no visible token"):
        num_keep(4, 0.9)


@pytest.mark.parametrize("N,ratio", [(512, 0.75), (196, 0.9), (37, 0.5), (16, 0.0)])
def test_random_masking_partition_and_exact_ratio(N: int, ratio: float) -> None:
    keep, mask, ids_restore = random_masking(
        4, N, ratio, generator=torch.Generator().manual_seed(0)
    )
    assert keep.shape == (4, num_keep(N, ratio)) and mask.shape == (4, N)
    assert torch.all(mask.sum(1) == N - num_keep(N, ratio))
    _check_partition(keep, mask, ids_restore)


def test_random_masking_is_random_and_reproducible() -> None:
    k1 = random_masking(8, 64, 0.75, generator=torch.Generator().manual_seed(1))[0]
    k2 = random_masking(8, 64, 0.75, generator=torch.Generator().manual_seed(1))[0]
    k3 = random_masking(8, 64, 0.75, generator=torch.Generator().manual_seed(2))[0]
    assert torch.equal(k1, k2) and not torch.equal(k1, k3)
    assert not all(torch.equal(k1[0], k1[i]) for i in range(1, 8))  # rows differ
    # every position gets masked sometimes: roughly uniform over many draws
    many = random_masking(2000, 8, 0.5, generator=torch.Generator().manual_seed(3))[1]
    assert torch.allclose(many.mean(0), torch.full((8,), 0.5), atol=0.05)


def test_tube_masking_same_spatial_mask_over_time() -> None:
    grid = (4, 7, 7)
    keep, mask, ids_restore = tube_masking(3, grid, 0.9, generator=torch.Generator().manual_seed(0))
    S = 49
    s_keep = num_keep(S, 0.9)
    assert keep.shape == (3, 4 * s_keep)
    _check_partition(keep, mask, ids_restore)
    per_t = mask.reshape(3, 4, S)  # [B, T, S]
    assert torch.equal(per_t, per_t[:, :1].expand_as(per_t))  # identical for every t
    assert torch.all(per_t[:, 0].sum(1) == S - s_keep)


def test_time_freq_masking_rows_and_columns() -> None:
    grid = (16, 8)
    keep, mask, ids_restore = time_freq_masking(
        2, grid, 0.5, 0.25, generator=torch.Generator().manual_seed(0)
    )
    assert keep.shape == (2, 8 * 6)
    _check_partition(keep, mask, ids_restore)
    m = mask.reshape(2, 16, 8).bool()  # [B, Tg, Fg]
    full_rows = m.all(dim=2).sum(1)  # masked time rows
    full_cols = m.all(dim=1).sum(1)  # masked frequency columns
    assert torch.all(full_rows == 8) and torch.all(full_cols == 2)
    visible = ~m
    # visible tokens form a (kept rows) x (kept cols) product
    assert torch.all(visible.any(2).sum(1) * visible.any(1).sum(1) == visible.sum((1, 2)))


def test_gather_unshuffle_scatter_roundtrip() -> None:
    B, N, D = 3, 10, 4
    x = torch.randn(B, N, D)
    keep, mask, ids_restore = random_masking(B, N, 0.6, generator=torch.Generator().manual_seed(0))
    vis = gather_tokens(x, keep)
    assert torch.equal(vis[1, 2], x[1, keep[1, 2]])
    token = torch.full((1, 1, D), -7.0)
    full = unshuffle(vis, ids_restore, token)
    m = mask.bool()
    assert torch.equal(full[~m], x[~m])
    assert torch.all(full[m] == -7.0)
    assert torch.equal(scatter_tokens(vis, keep, N)[~m], x[~m])
    assert torch.all(scatter_tokens(vis, keep, N)[m] == 0)
    # gather on [B, N] (e.g. a mask) works too
    assert torch.equal(gather_tokens(mask, keep), torch.zeros(B, keep.shape[1]))


def test_videomae_keep_counts_as_videomae() -> None:
    """VideoMAE masks int(ratio * n) positions: 20 of 196 stay at 0.9 (MAE's count keeps 19)."""
    from avssl.models.masking import videomae_keep

    assert (videomae_keep(196, 0.9), num_keep(196, 0.9)) == (20, 19)
    assert videomae_keep(16, 0.9) == 2 and videomae_keep(10, 0.9) == 1
    keep, mask, _ = tube_masking(2, (8, 14, 14), 0.9, s_keep=videomae_keep(196, 0.9))
    assert keep.shape == (2, 160) and torch.all(mask.sum(1) == 8 * 176)
    with pytest.raises(ValueError):
        tube_masking(2, (2, 2, 2), 0.5, s_keep=0)
