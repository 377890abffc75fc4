"""cluster_cross_entropy: hand values, loop reference, ignored labels, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from avssl.losses.clustering import cluster_cross_entropy


def ref_cluster_ce(logits: np.ndarray, labels: np.ndarray) -> float:
    terms = []
    for row, y in zip(logits, labels):
        if y == -1:
            continue
        log_z = math.log(sum(math.exp(v) for v in row))
        terms.append(log_z - row[y])
    return sum(terms) / len(terms)


def test_hand_values() -> None:
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    # row 0: ln 2; row 1 target 0: -ln(3/4)
    got = cluster_cross_entropy(logits, torch.tensor([1, 0]))
    assert got.item() == pytest.approx((math.log(2) - math.log(0.75)) / 2, abs=1e-6)
    # the unknown row is skipped, not counted as 0
    got = cluster_cross_entropy(logits, torch.tensor([-1, 0]))
    assert got.item() == pytest.approx(-math.log(0.75), abs=1e-6)


def test_matches_loop_reference() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(9, 5, generator=g)
    labels = torch.tensor([0, -1, 4, 2, 2, -1, 1, 3, 0])
    want = ref_cluster_ce(logits.numpy().astype(np.float64), labels.numpy())
    assert cluster_cross_entropy(logits, labels).item() == pytest.approx(want, rel=1e-5)


def test_all_unknown_is_zero_with_zero_gradient() -> None:
    logits = torch.randn(4, 3, requires_grad=True)
    loss = cluster_cross_entropy(logits, torch.full((4,), -1))
    assert loss.item() == 0.0
    loss.backward()
    assert logits.grad is not None and torch.equal(logits.grad, torch.zeros(4, 3))


def test_gradient_only_on_known_rows_and_steps_lower_it() -> None:
    logits = torch.zeros(3, 4, requires_grad=True)
    labels = torch.tensor([2, -1, 0])
    cluster_cross_entropy(logits, labels).backward()
    assert torch.equal(logits.grad[1], torch.zeros(4))
    assert logits.grad[0, 2] < 0 and logits.grad[2, 0] < 0
    opt = torch.optim.SGD([logits], lr=1.0)
    first = cluster_cross_entropy(logits, labels).item()
    for _ in range(10):
        opt.zero_grad()
        cluster_cross_entropy(logits, labels).backward()
        opt.step()
    assert cluster_cross_entropy(logits, labels).item() < 0.2 * first


def test_bad_inputs_are_errors() -> None:
    with pytest.raises(ValueError, match="out of range"):
        cluster_cross_entropy(torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="expected logits"):
        cluster_cross_entropy(torch.zeros(2, 3), torch.tensor([0, 1, 2]))
