"""EMA update, cosine schedules and initialisation helpers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from avssl.models.utils import (
    cosine_schedule,
    count_parameters,
    ema_update,
    init_weights,
    trunc_normal_,
    warmup_cosine_factor,
)


def test_ema_update_by_hand() -> None:
    teacher, student = nn.Linear(2, 1), nn.Linear(2, 1)
    with torch.no_grad():
        teacher.weight.fill_(1.0), teacher.bias.fill_(0.0)
        student.weight.fill_(3.0), student.bias.fill_(10.0)
    ema_update(teacher, student, 0.9)
    torch.testing.assert_close(teacher.weight, torch.full((1, 2), 1.2))  # 0.9*1 + 0.1*3
    torch.testing.assert_close(teacher.bias, torch.tensor([1.0]))
    ema_update(teacher, student, torch.tensor(0.5))
    torch.testing.assert_close(teacher.weight, torch.full((1, 2), 2.1))
    ema_update(teacher, student, 1.0)
    torch.testing.assert_close(teacher.weight, torch.full((1, 2), 2.1))
    ema_update(teacher, student, 0.0)
    torch.testing.assert_close(teacher.bias, torch.tensor([10.0]))


def test_ema_update_copies_buffers_and_checks_structure() -> None:
    t, s = nn.BatchNorm1d(3), nn.BatchNorm1d(3)
    s.running_mean.fill_(2.0)
    ema_update(t, s, 0.99)
    assert torch.equal(t.running_mean, s.running_mean)
    with pytest.raises(ValueError, match="different parameter lists"):
        ema_update(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), 0.9)


def test_cosine_schedule_values() -> None:
    assert cosine_schedule(0, 100, 0.997, 1.0) == pytest.approx(0.997)
    assert cosine_schedule(100, 100, 0.997, 1.0) == pytest.approx(1.0)
    assert cosine_schedule(50, 100, 0.997, 1.0) == pytest.approx(0.9985)
    assert cosine_schedule(500, 100, 0.997, 1.0) == pytest.approx(1.0)  # clamped
    # warm-up: linear from warmup_start to base
    assert cosine_schedule(5, 110, 1.0, 0.0, warmup_steps=10) == pytest.approx(0.5)
    mid = cosine_schedule(60, 110, 1.0, 0.0, warmup_steps=10)
    assert mid == pytest.approx(0.5)
    assert cosine_schedule(35, 110, 1.0, 0.0, 10) == pytest.approx(
        0.5 * (1 + math.cos(math.pi / 4))
    )
    with pytest.raises(ValueError):
        cosine_schedule(0, 0, 1.0, 0.0)


def test_warmup_cosine_factor() -> None:
    vals = [warmup_cosine_factor(s, 4, 20, min_ratio=0.1) for s in range(21)]
    assert vals[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert vals[4] == pytest.approx(1.0) and vals[20] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(vals[4:], vals[5:]))


def test_trunc_normal_and_init() -> None:
    torch.manual_seed(0)
    x = trunc_normal_(torch.empty(200_000), std=0.02)
    assert x.abs().max() <= 0.04 + 1e-7
    assert x.std().item() == pytest.approx(0.02 * 0.8796, rel=0.02)  # std of N(0,1) cut at 2
    assert abs(x.mean().item()) < 2e-4
    m = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8), nn.Conv2d(1, 4, 2))
    m.apply(init_weights)
    assert torch.all(m[0].bias == 0) and torch.all(m[1].weight == 1)
    bound = math.sqrt(6 / (4 + 4))  # xavier on the flattened [4, 1*2*2] kernel
    assert m[2].weight.abs().max() <= bound
    assert count_parameters(m) == 72 + 16 + 20
