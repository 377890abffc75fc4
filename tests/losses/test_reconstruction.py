"""masked_mse against hand-computed values, a NumPy loop reference, and a few optimiser steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avssl.losses.reconstruction import masked_mse


def _numpy_masked_mse(pred, target, mask, norm_pix: bool) -> float:
    pred, target, mask = (np.asarray(t, dtype=np.float64) for t in (pred, target, mask))
    num, den = 0.0, 0.0
    for b in range(pred.shape[0]):
        for n in range(pred.shape[1]):
            t = target[b, n]
            if norm_pix:
                t = (t - t.mean()) / np.sqrt(t.var(ddof=1) + 1e-6)
            num += mask[b, n] * np.mean((pred[b, n] - t) ** 2)
            den += mask[b, n]
    return num / den


def test_hand_computed_values() -> None:
    target = torch.tensor([[[1.0, 3.0], [2.0, 2.0]]])  # [B=1, N=2, P=2]
    pred = torch.zeros_like(target)
    # only patch 0 masked: mean(1, 9) = 5
    assert masked_mse(pred, target, torch.tensor([[1.0, 0.0]]), norm_pix=False).item() == 5.0
    # both masked: (5 + 4) / 2
    assert masked_mse(pred, target, torch.ones(1, 2), norm_pix=False).item() == 4.5
    # norm-pix: [1, 3] has mean 2, unbiased var 2 -> [-1, 1] / sqrt(2 + 1e-6); squared mean 0.5
    got = masked_mse(pred, target, torch.tensor([[1.0, 0.0]]), norm_pix=True).item()
    assert got == pytest.approx(2.0 / (2.0 + 1e-6) / 2.0, rel=1e-6)
    # a constant patch normalises to 0 (eps keeps it finite)
    assert masked_mse(pred, target, torch.tensor([[0.0, 1.0]]), norm_pix=True).item() == 0.0
    # nothing masked: 0, not NaN
    assert masked_mse(pred, target, torch.zeros(1, 2)).item() == 0.0


@pytest.mark.parametrize("norm_pix", [True, False])
def test_matches_numpy_loop_reference(norm_pix: bool) -> None:
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(3, 7, 12, generator=g)
    target = torch.randn(3, 7, 12, generator=g) * 3 + 1
    mask = (torch.rand(3, 7, generator=g) > 0.4).float()
    got = masked_mse(pred, target, mask, norm_pix=norm_pix).item()
    assert got == pytest.approx(_numpy_masked_mse(pred, target, mask, norm_pix), rel=1e-5)


def test_visible_patches_do_not_matter_and_bf16_input() -> None:
    g = torch.Generator().manual_seed(1)
    pred, target = torch.randn(2, 5, 8, generator=g), torch.randn(2, 5, 8, generator=g)
    mask = torch.tensor([[1.0, 0, 1, 0, 0], [0, 0, 0, 1, 1]])
    base = masked_mse(pred, target, mask)
    pred2 = pred.clone()
    pred2[mask == 0] += 100.0
    torch.testing.assert_close(masked_mse(pred2, target, mask), base)
    out = masked_mse(pred.bfloat16(), target, mask)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(base.item(), rel=2e-2)


def test_optimiser_steps_lower_the_loss() -> None:
    g = torch.Generator().manual_seed(2)
    target = torch.randn(2, 6, 16, generator=g)
    mask = (torch.rand(2, 6, generator=g) > 0.5).float()
    pred = torch.zeros(2, 6, 16, requires_grad=True)
    opt = torch.optim.SGD([pred], lr=5.0)
    losses = []
    for _ in range(5):
        loss = masked_mse(pred, target, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(15 / 16, rel=1e-3)  # unbiased norm: mean square (P-1)/P
    assert all(b < a for a, b in zip(losses, losses[1:]))
    assert losses[-1] < 0.5 * losses[0]


def test_shape_errors() -> None:
    with pytest.raises(ValueError, match="must both be"):
        masked_mse(torch.zeros(2, 3, 4), torch.zeros(2, 3, 5), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="mask"):
        masked_mse(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), torch.zeros(2, 4))
