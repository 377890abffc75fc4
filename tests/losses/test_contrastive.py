"""info_nce / mil_nce against hand values and NumPy loops; learning; gather over 2 processes."""

from __future__ import annotations

import math
import socket
from datetime import timedelta

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from avssl.losses.contrastive import gather_with_grad, info_nce, key_ids, mil_nce
from avssl.objectives._mavil_parts import masked_info_nce


def _np_normalize(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _np_info_nce(a, b, t: float, symmetric: bool) -> float:
    a, b = _np_normalize(np.asarray(a, np.float64)), _np_normalize(np.asarray(b, np.float64))
    B = a.shape[0]

    def one_way(x, y):
        total = 0.0
        for i in range(B):
            scores = [float(x[i] @ y[j]) / t for j in range(B)]
            total += -scores[i] + math.log(sum(math.exp(s) for s in scores))
        return total / B

    return 0.5 * (one_way(a, b) + one_way(b, a)) if symmetric else one_way(a, b)


def _np_mil_nce(a, b, t: float, symmetric: bool) -> float:
    a, b = _np_normalize(np.asarray(a, np.float64)), _np_normalize(np.asarray(b, np.float64))
    B, K, _ = a.shape
    s = lambda i, j, k: float(b[i] @ a[j, k]) / t  # anchor b_i vs clip k of sample j
    l_ba = l_ab = 0.0
    for i in range(B):
        pos = sum(math.exp(s(i, i, k)) for k in range(K))
        l_ba += -math.log(pos / sum(math.exp(s(i, j, k)) for j in range(B) for k in range(K)))
        l_ab += -math.log(pos / sum(math.exp(s(j, i, k)) for j in range(B) for k in range(K)))
    return 0.5 * (l_ba + l_ab) / B if symmetric else l_ba / B


def test_info_nce_hand_computed() -> None:
    eye = torch.eye(2)
    # logits [[1, 0], [0, 1]] / T: each row's CE is log(1 + e^{-1/T})
    assert info_nce(eye, eye, temperature=1.0).item() == pytest.approx(math.log(1 + math.exp(-1)))
    assert info_nce(eye, eye, temperature=0.5).item() == pytest.approx(math.log(1 + math.exp(-2)))
    # a = [e1, e2], b = [e2, e1]: positives score 0, negatives 1/T
    swapped = eye.flip(0)
    assert info_nce(eye, swapped, 1.0).item() == pytest.approx(math.log(1 + math.e))
    # normalisation inside: scaling rows changes nothing
    assert info_nce(3 * eye, 0.1 * eye, 1.0).item() == pytest.approx(math.log(1 + math.exp(-1)))


@pytest.mark.parametrize("symmetric", [True, False])
def test_info_nce_matches_numpy_loop(symmetric: bool) -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    got = info_nce(a, b, temperature=0.1, symmetric=symmetric).item()
    assert got == pytest.approx(_np_info_nce(a, b, 0.1, symmetric), rel=1e-5)


@pytest.mark.parametrize("symmetric", [True, False])
def test_mil_nce_matches_numpy_loop(symmetric: bool) -> None:
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(4, 3, 5, generator=g), torch.randn(4, 5, generator=g)
    got = mil_nce(a, b, temperature=0.2, symmetric=symmetric).item()
    assert got == pytest.approx(_np_mil_nce(a, b, 0.2, symmetric), rel=1e-5)


def test_mil_nce_with_one_positive_is_info_nce() -> None:
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(5, 1, 8, generator=g), torch.randn(5, 8, generator=g)
    for sym in (True, False):
        torch.testing.assert_close(mil_nce(a, b, 0.07, sym), info_nce(b, a[:, 0], 0.07, sym))


def test_mil_nce_hand_computed() -> None:
    # B=2, K=2, D=2, T=1: b_0 = e1, b_1 = e2; sample 0's clips = (e1, e2), sample 1's = (e2, e2)
    a = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [0.0, 1.0]]])
    b = torch.eye(2)
    e = math.e
    # b->a: anchor 0: pos e + 1, all e + 1 + 1 + 1; anchor 1: pos 2e, all 1 + e + 2e
    l_ba = (-math.log((e + 1) / (e + 3)) - math.log(2 * e / (3 * e + 1))) / 2
    got = mil_nce(a, b, temperature=1.0, symmetric=False).item()
    assert got == pytest.approx(l_ba)


@pytest.mark.parametrize("symmetric", [True, False])
def test_mil_nce_valid_mask_leaves_samples_out(symmetric: bool) -> None:
    """Samples with valid 0 are neither anchors nor candidates: the loss equals MIL-NCE on the
    valid samples alone; with none valid it is 0."""
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(5, 3, 4, generator=g), torch.randn(5, 4, generator=g)
    valid = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0])
    keep = valid.bool()
    got = mil_nce(a, b, 0.1, symmetric, valid=valid)
    torch.testing.assert_close(got, mil_nce(a[keep], b[keep], 0.1, symmetric))
    assert float(mil_nce(a, b, 0.1, symmetric, valid=torch.zeros(5))) == 0.0
    torch.testing.assert_close(mil_nce(a, b, 0.1, symmetric, valid=torch.ones(5)),
                               mil_nce(a, b, 0.1, symmetric))  # fmt: skip


def test_learnable_temperature_and_errors() -> None:
    a, b = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    t = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)
    info_nce(a, b, temperature=t).backward()
    eps = 1e-3  # the temperature's gradient against a central finite difference
    numeric = (info_nce(a, b, temperature=0.1 + eps) - info_nce(a, b, temperature=0.1 - eps)) / (
        2 * eps
    )
    assert float(t.grad) == pytest.approx(float(numeric), rel=1e-3)
    with pytest.raises(ValueError, match="info_nce"):
        info_nce(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match="mil_nce"):
        mil_nce(torch.randn(4, 3), torch.randn(4, 3))
    x = torch.randn(3, 2)
    assert gather_with_grad(x) is x  # identity when not distributed


@pytest.mark.parametrize("which", ["info_nce", "mil_nce"])
def test_optimiser_steps_lower_the_loss(which: str) -> None:
    g = torch.Generator().manual_seed(3)
    a = (
        torch.randn(8, 2, 16, generator=g)
        if which == "mil_nce"
        else torch.randn(8, 16, generator=g)
    )
    b = torch.randn(8, 16, generator=g)
    a.requires_grad_(True)
    b.requires_grad_(True)
    fn = mil_nce if which == "mil_nce" else info_nce
    opt = torch.optim.Adam([a, b], lr=0.05)
    losses = []
    for _ in range(6):
        loss = fn(a, b, temperature=0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(y < x for x, y in zip(losses, losses[1:]))
    assert losses[-1] < 0.7 * losses[0]


# ---- twins: two entries of one video in a batch ----------------------------------------------


def test_key_ids_are_stable_and_repeat_per_clip() -> None:
    ids = key_ids(["ucf101/A/v1", "ucf101/A/v2", "ucf101/A/v1"], repeat=2)
    assert ids.dtype == torch.long and len(ids) == 6
    assert ids[0] == ids[1] == ids[4] == ids[5] and ids[0] != ids[2]
    assert int(ids[0]) == int(key_ids(["ucf101/A/v1"])[0])  # the same in every process


def _nce_without(a, b, t, twin):
    """Reference: symmetric InfoNCE whose logits at ``twin`` (row, candidate) are dropped."""
    a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    s = (a @ b.t() / t).masked_fill(twin, float("-inf"))
    labels = torch.arange(len(a))
    return 0.5 * (F.cross_entropy(s, labels) + F.cross_entropy(s.t(), labels))


def test_twins_are_not_negatives() -> None:
    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    keys = ["v/a", "v/b", "v/a", "v/c", "v/b"]  # rows 0, 2 and rows 1, 4: one video each
    twin = torch.zeros(5, 5, dtype=torch.bool)
    for i, j in [(0, 2), (2, 0), (1, 4), (4, 1)]:
        twin[i, j] = True
    ones = torch.ones(5)
    got = masked_info_nce(a, b, ones, 0.1, False, key_ids(keys))
    torch.testing.assert_close(got, _nce_without(a, b, 0.1, twin))
    plain = masked_info_nce(a, b, ones, 0.1, False)  # distinct keys: the plain loss
    torch.testing.assert_close(
        plain, masked_info_nce(a, b, ones, 0.1, False, key_ids(list("abcde")))
    )
    assert not torch.allclose(got, plain)
    bags = torch.randn(5, 1, 8, generator=g)  # MIL-NCE with one positive is InfoNCE
    torch.testing.assert_close(
        mil_nce(bags, b, 0.1, ids=key_ids(keys)), _nce_without(b, bags[:, 0], 0.1, twin)
    )


# ---- gather across 2 gloo processes ------------------------------------------------------


def _masked(a, b, temperature, valid, ids=None, gather=False):
    """MAViL's masked InfoNCE in the keyword form of the cases below."""
    return masked_info_nce(a, b, valid, temperature, gather, ids)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gather_worker(rank: int, world: int, port: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=60),
    )
    try:
        g = torch.Generator().manual_seed(0)  # same global batch on every rank
        B, K, D = 3, 2, 8
        full = {
            "a": torch.randn(world * B, D, generator=g),
            "b": torch.randn(world * B, D, generator=g),
            "bag": torch.randn(world * B, K, D, generator=g),
        }
        sl = slice(rank * B, (rank + 1) * B)
        twin_ids = torch.tensor([7, 1, 2, 7, 4, 4])
        cases = [
            ("info_nce", info_nce, "a", {"symmetric": True}),
            ("info_nce", info_nce, "a", {"symmetric": False}),
            ("mil_nce", mil_nce, "bag", {"symmetric": True}),
            ("mil_nce", mil_nce, "bag", {"symmetric": False}),
            # one left-out sample per rank (equal valid counts: the mean of the rank means is
            # the whole-batch mean); left-out samples are candidates on no rank
            (
                "mil_nce",
                mil_nce,
                "bag",
                {"symmetric": True, "valid": torch.tensor([1.0, 0, 1] * world)},
            ),
            # one video on both ranks (global rows 0 and 3) and one twice on rank 1 (4, 5):
            # twins are no negatives, across the ranks too
            ("mil_nce", mil_nce, "bag", {"ids": twin_ids}),
            ("masked_info_nce", _masked, "a", {"ids": twin_ids, "valid": torch.ones(6)}),
        ]
        for name, fn, first, kw in cases:
            x_full = full[first].clone().requires_grad_(True)
            y_full = full["b"].clone().requires_grad_(True)
            ref = fn(x_full, y_full, temperature=0.1, **kw)  # single process, whole batch
            ref_gx, ref_gy = torch.autograd.grad(ref, [x_full, y_full])
            x = full[first][sl].clone().requires_grad_(True)
            y = full["b"][sl].clone().requires_grad_(True)
            local = {k: (v[sl] if k in ("valid", "ids") else v) for k, v in kw.items()}
            loss = fn(x, y, temperature=0.1, gather=True, **local)
            loss.backward()
            mean_loss = loss.detach().clone()
            dist.all_reduce(mean_loss)
            mean_loss /= world  # what DDP reports: the mean of the per-rank losses
            torch.testing.assert_close(mean_loss, ref.detach(), msg=f"{name} {kw} value")
            # DDP averages gradients over ranks: grad / world is the whole-batch gradient
            torch.testing.assert_close(x.grad / world, ref_gx[sl], msg=f"{name} {kw} grad a")
            torch.testing.assert_close(y.grad / world, ref_gy[sl], msg=f"{name} {kw} grad b")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("fn,first", [(info_nce, "a"), (mil_nce, "bag")])
@pytest.mark.parametrize("symmetric", [True, False])
def test_one_way_losses_gather_only_the_side_they_use(monkeypatch, fn, first, symmetric) -> None:
    """A one-way loss compares local anchors with one side's gathered candidates: gathering the
    other side as well was a wasted all-gather per step (its result never used)."""
    import avssl.losses.contrastive as contrastive

    gathered: list[tuple[int, ...]] = []

    def counting_gather(x):
        gathered.append(tuple(x.shape))
        return x

    monkeypatch.setattr(contrastive, "gather_with_grad", counting_gather)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 2, 8, generator=g) if first == "bag" else torch.randn(4, 8, generator=g)
    y = torch.randn(4, 8, generator=g)
    with_gather = fn(x, y, 0.1, symmetric=symmetric, gather=True)
    assert len(gathered) == (2 if symmetric else 1)
    if not symmetric:  # the side gathered is the one the single direction takes candidates from
        assert gathered == ([tuple(y.shape)] if fn is info_nce else [tuple(x.shape)])
    torch.testing.assert_close(with_gather, fn(x, y, 0.1, symmetric=symmetric))


def test_gather_across_two_gloo_processes_matches_single_process() -> None:
    mp.spawn(_gather_worker, args=(2, _free_port()), nprocs=2, join=True)
