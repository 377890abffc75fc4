"""dino_distill, update_center, mmd, coral, mean_coral: hand values, slow NumPy references,
optimisation."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from avssl.losses.distillation import (
    MMD_GAMMAS,
    coral,
    dino_distill,
    mean_coral,
    mmd,
    update_center,
)
from tests.ranks import free_port, run_ranks

LN3 = math.log(3.0)


# ---------------------------------------------------------------- slow references (loops)
def _np_softmax(row: np.ndarray) -> np.ndarray:
    e = np.exp(row - row.max())
    return e / e.sum()


def ref_dino(s: np.ndarray, t: np.ndarray, c: np.ndarray, ts: float, tt: float) -> float:
    total = 0.0
    for i in range(len(s)):
        p = _np_softmax((t[i] - c) / tt)
        q = _np_softmax(s[i] / ts)
        total += -sum(p[k] * math.log(q[k]) for k in range(len(p)))
    return total / len(s)


def ref_mmd(x: np.ndarray, y: np.ndarray, gammas: tuple[float, ...]) -> float:
    def k(a: np.ndarray, b: np.ndarray) -> float:
        d2 = float(((a - b) ** 2).sum())
        return sum(math.exp(-g * d2) for g in gammas)

    kxx = np.mean([[k(a, b) for b in x] for a in x])
    kyy = np.mean([[k(a, b) for b in y] for a in y])
    kxy = np.mean([[k(a, b) for b in y] for a in x])
    return float(kxx + kyy - 2 * kxy)


def ref_coral(x: np.ndarray, y: np.ndarray) -> float:
    def cov(a: np.ndarray) -> np.ndarray:
        n, d = a.shape
        m = a.mean(0)
        c = np.zeros((d, d))
        for i in range(n):
            c += np.outer(a[i] - m, a[i] - m)
        return c / (n - 1)

    d = x.shape[1]
    return float(((cov(x) - cov(y)) ** 2).sum() / (4 * d * d))


# ---------------------------------------------------------------- dino_distill
def test_dino_uniform_student_gives_log2() -> None:
    # log_softmax([0, 0]) = [-ln 2, -ln 2]; any teacher distribution sums to 1.
    s = torch.zeros(3, 2)
    t = torch.randn(3, 2)
    loss = dino_distill(s, t, torch.zeros(2), student_temp=0.1, teacher_temp=0.04)
    assert loss.item() == pytest.approx(math.log(2.0), abs=1e-6)


def test_dino_hand_values() -> None:
    s = torch.tensor([[LN3, 0.0]])  # softmax -> [3/4, 1/4]
    t = torch.tensor([[LN3, 0.0]])
    # teacher = student: the entropy of [3/4, 1/4]
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert dino_distill(s, t, torch.zeros(2), 1.0, 1.0).item() == pytest.approx(h, abs=1e-6)
    # centring by [ln 3, 0] makes the teacher uniform: 0.5 * (ln 4/3 + ln 4)
    centred = dino_distill(s, t, torch.tensor([LN3, 0.0]), 1.0, 1.0).item()
    assert centred == pytest.approx(0.5 * math.log(16.0 / 3.0), abs=1e-6)
    # student temperature 0.5 on halved logits is the same distribution
    assert dino_distill(s / 2, t, torch.zeros(1, 2), 0.5, 1.0).item() == pytest.approx(h, abs=1e-6)


def test_dino_matches_loop_reference_and_teacher_is_detached() -> None:
    g = torch.Generator().manual_seed(0)
    s = torch.randn(5, 7, generator=g, requires_grad=True)
    t = torch.randn(5, 7, generator=g, requires_grad=True)
    c = torch.randn(7, generator=g)
    loss = dino_distill(s, t, c, 0.1, 0.07)
    want = ref_dino(s.detach().numpy(), t.detach().numpy(), c.numpy(), 0.1, 0.07)
    assert loss.item() == pytest.approx(want, rel=1e-5)
    loss.backward()
    assert t.grad is None and s.grad is not None and s.grad.abs().sum() > 0


def test_dino_steps_lower_the_loss() -> None:
    g = torch.Generator().manual_seed(1)
    s = torch.randn(8, 16, generator=g, requires_grad=True)
    t = torch.randn(8, 16, generator=g)
    opt = torch.optim.SGD([s], lr=0.05)
    first = dino_distill(s, t, torch.zeros(16), 0.1, 0.04).item()
    for _ in range(20):
        opt.zero_grad()
        dino_distill(s, t, torch.zeros(16), 0.1, 0.04).backward()
        opt.step()
    assert dino_distill(s, t, torch.zeros(16), 0.1, 0.04).item() < 0.5 * first


def test_dino_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        dino_distill(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(3), 0.1, 0.1)


# ---------------------------------------------------------------- update_center
def test_update_center_hand_value_and_shape() -> None:
    center = torch.zeros(1, 2)
    new = update_center(center, torch.tensor([[1.0, 2.0], [3.0, 4.0]]), momentum=0.9)
    assert new.shape == (1, 2)
    assert torch.allclose(new, torch.tensor([[0.2, 0.3]]))
    assert torch.equal(center, torch.zeros(1, 2))  # functional
    again = update_center(new, torch.tensor([[2.0, 3.0]]), momentum=0.5)
    assert torch.allclose(again, torch.tensor([[1.1, 1.65]]))


def test_update_center_converges_to_the_mean() -> None:
    center = torch.zeros(4)
    logits = torch.tensor([[1.0, -1.0, 2.0, 0.0]]).repeat(3, 1)
    for _ in range(200):
        center = update_center(center, logits, momentum=0.9)
    assert torch.allclose(center, logits[0], atol=1e-6)


def _center_worker(rank: int, port: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    # rank 0 holds 1 row, rank 1 holds 3 rows: the global mean weighs rows, not ranks
    logits = torch.tensor([[4.0, 0.0]]) if rank == 0 else torch.zeros(3, 2)
    out[rank] = update_center(torch.zeros(2), logits, momentum=0.0).tolist()
    dist.destroy_process_group()


def test_update_center_uses_the_cross_rank_mean() -> None:
    out = mp.Manager().dict()
    run_ranks(_center_worker, (free_port(), out))
    assert out[0] == pytest.approx([1.0, 0.0]) and out[1] == pytest.approx([1.0, 0.0])


# ---------------------------------------------------------------- mmd
def test_mmd_hand_values() -> None:
    x, y = torch.tensor([[0.0]]), torch.tensor([[1.0]])
    assert mmd(x, y, gammas=(1.0,)).item() == pytest.approx(2 - 2 / math.e, abs=1e-6)
    # default bandwidths at squared distance 1: 2 * sum_g (1 - exp(-g))
    want = 2 * sum(1 - math.exp(-g) for g in MMD_GAMMAS)
    assert mmd(x, y).item() == pytest.approx(want, abs=1e-6)
    z = torch.randn(6, 3)
    assert mmd(z, z).item() == pytest.approx(0.0, abs=1e-5)


def test_mmd_matches_loop_reference() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(6, 4, generator=g) * 0.5
    y = torch.randn(5, 4, generator=g) * 0.5 + 0.3
    want = ref_mmd(x.numpy().astype(np.float64), y.numpy().astype(np.float64), MMD_GAMMAS)
    assert mmd(x, y).item() == pytest.approx(want, rel=1e-4, abs=1e-6)


def test_mmd_steps_lower_the_loss() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(16, 4, generator=g, requires_grad=True)
    y = torch.randn(16, 4, generator=g) + 2.0
    opt = torch.optim.SGD([x], lr=5.0)  # the kernel means spread the gradient over N^2 pairs
    first = mmd(x, y).item()
    for _ in range(30):
        opt.zero_grad()
        mmd(x, y).backward()
        opt.step()
    assert mmd(x, y).item() < 0.5 * first


# ---------------------------------------------------------------- coral
def test_coral_hand_value() -> None:
    x = torch.tensor([[0.0], [2.0]])  # variance 2
    y = torch.tensor([[0.0], [1.0]])  # variance 0.5
    assert coral(x, y).item() == pytest.approx(1.5**2 / 4, abs=1e-6)
    assert coral(x, x + 5.0).item() == pytest.approx(0.0, abs=1e-6)  # means are ignored


def test_coral_matches_loop_reference() -> None:
    g = torch.Generator().manual_seed(4)
    x = torch.randn(7, 3, generator=g)
    y = torch.randn(9, 3, generator=g) * 2.0
    assert coral(x, y).item() == pytest.approx(ref_coral(x.numpy(), y.numpy()), rel=1e-5)


def _descend(loss_fn, seed: int, scale: float, shift: float, steps: int) -> tuple[float, float]:
    """(first, last) value of ``loss_fn(x, y)`` over ``steps`` SGD steps (lr 5) on ``x``, with
    ``x`` standard normal and ``y`` normal of std ``scale`` around ``shift`` ([32, 3] each)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 3, generator=g, requires_grad=True)
    y = torch.randn(32, 3, generator=g) * scale + shift
    opt = torch.optim.SGD([x], lr=5.0)
    first = loss_fn(x, y).item()
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(x, y).backward()
        opt.step()
    return first, loss_fn(x, y).item()


def test_coral_steps_lower_the_loss_and_errors() -> None:
    first, last = _descend(coral, seed=5, scale=3.0, shift=0.0, steps=30)
    assert last < 0.01 * first
    with pytest.raises(ValueError, match="at least 2"):
        coral(torch.zeros(1, 3), torch.zeros(4, 3))


# ---------------------------------------------------------------- mean_coral
def test_mean_coral_hand_value() -> None:
    x = torch.tensor([[0.0], [2.0]])  # mean 1, variance 2
    y = torch.tensor([[0.0], [1.0]])  # mean 0.5, variance 0.5
    assert mean_coral(x, y).item() == pytest.approx(0.5**2 + 1.5**2, abs=1e-6)
    assert mean_coral(x, x + 5.0).item() == pytest.approx(25.0, abs=1e-5)  # means count
    assert mean_coral(x, x).item() == pytest.approx(0.0, abs=1e-7)


def test_mean_coral_matches_numpy() -> None:
    g = torch.Generator().manual_seed(6)
    x = torch.randn(7, 3, generator=g) + 1.0
    y = torch.randn(9, 3, generator=g) * 2.0
    xn, yn = x.double().numpy(), y.double().numpy()
    means = np.mean((xn.mean(0) - yn.mean(0)) ** 2)
    covs = np.mean((np.cov(xn, rowvar=False) - np.cov(yn, rowvar=False)) ** 2)
    assert mean_coral(x, y).item() == pytest.approx(means + covs, rel=1e-5)
    # its covariance term is 4x Deep CORAL's
    assert mean_coral(x, y - y.mean(0) + x.mean(0)).item() == pytest.approx(
        4 * coral(x, y).item(), rel=1e-5
    )


def test_mean_coral_steps_lower_the_loss_and_errors() -> None:
    first, last = _descend(mean_coral, seed=7, scale=2.0, shift=3.0, steps=100)
    assert last < 0.01 * first
    with pytest.raises(ValueError, match="mean_coral: needs at least 2"):
        mean_coral(torch.zeros(4, 3), torch.zeros(1, 3))
    with pytest.raises(ValueError, match=r"mean_coral: expected \[Nx, D\]"):
        mean_coral(torch.zeros(4, 3), torch.zeros(4, 2))
