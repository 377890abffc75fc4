"""k-means: nearest-centroid assignments, recovered blobs, empty clusters, both backends."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avssl.models.kmeans import _reseed_empty, _split_empty, assign, kmeans


def _blobs(n_per: int = 30, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    x = torch.cat([c + 0.5 * torch.randn(n_per, 2, generator=g) for c in centres])
    return x, torch.arange(4).repeat_interleave(n_per)


BACKENDS = ["torch", "faiss"]  # faiss-cpu is a dependency (setup.cfg)


@pytest.mark.parametrize("backend", BACKENDS)
def test_recovers_blobs_and_assignments_are_nearest_centroid(backend: str) -> None:
    x, truth = _blobs()
    res = kmeans(x, 4, num_iters=20, seed=0, backend=backend)
    assert res.backend == backend
    # slow reference: nearest centroid by a loop over points and centroids
    c = res.centroids.numpy()
    for i, p in enumerate(x.numpy()):
        d = [float(((p - c[k]) ** 2).sum()) for k in range(len(c))]
        assert res.assignments[i].item() == int(np.argmin(d))
    # each true blob maps to exactly one cluster and vice versa
    pairs = {(int(t), int(a)) for t, a in zip(truth, res.assignments)}
    assert len(pairs) == 4 and len({a for _, a in pairs}) == 4
    want_inertia = float(((x - res.centroids[res.assignments]) ** 2).sum())
    assert res.inertia == pytest.approx(want_inertia, rel=1e-5)


def test_hand_example() -> None:
    x = torch.tensor([[0.0], [1.0], [10.0], [11.0]])
    res = kmeans(x, 2, seed=0, backend="torch")
    assert sorted(res.centroids.flatten().tolist()) == pytest.approx([0.5, 10.5])
    assert res.assignments[0] == res.assignments[1] != res.assignments[2] == res.assignments[3]
    assert res.inertia == pytest.approx(1.0)


def test_deterministic_for_a_seed() -> None:
    x, _ = _blobs(seed=3)
    a = kmeans(x, 6, seed=7, backend="torch")
    b = kmeans(x, 6, seed=7, backend="torch")
    assert torch.equal(a.assignments, b.assignments) and torch.equal(a.centroids, b.centroids)


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_empty_cluster_when_k_equals_n(backend: str) -> None:
    # K = N distinct points: only a one-point-per-cluster solution has no empty cluster
    x = torch.tensor([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.1, 5.0], [9.0, 0.0]])
    res = kmeans(x, 5, num_iters=10, seed=1, backend=backend)
    assert torch.bincount(res.assignments, minlength=5).tolist() == [1] * 5
    assert res.inertia == pytest.approx(0.0, abs=1e-6)


def test_empty_cluster_is_reseeded_after_bad_centroids() -> None:
    # a tight pair and a far point, with a cluster that no point is near
    x = torch.tensor([[0.0], [0.2], [4.0]])
    centroids = torch.tensor([[0.1], [4.0], [100.0]])
    labels, reseeded = _reseed_empty(x, centroids.clone())
    assert reseeded == 1
    assert torch.bincount(labels, minlength=3).tolist() == [1, 1, 1]


def test_split_empty_takes_half_of_the_largest() -> None:
    centroids = torch.tensor([[1.0, 1.0], [5.0, 5.0], [0.0, 0.0]])
    counts = torch.tensor([10, 3, 0])
    _split_empty(centroids, counts)
    assert counts.tolist() == [5, 3, 5]
    assert torch.allclose(centroids[2], torch.tensor([1.0, 1.0]), atol=1e-3)
    assert not torch.equal(centroids[0], centroids[2])
    assert torch.allclose((centroids[0] + centroids[2]) / 2, torch.tensor([1.0, 1.0]))


def test_duplicate_points_do_not_crash() -> None:
    x = torch.zeros(10, 3)
    res = kmeans(x, 3, backend="torch")
    assert res.assignments.shape == (10,) and res.inertia == pytest.approx(0.0)


def test_assign_and_errors() -> None:
    c = torch.tensor([[0.0, 0.0], [3.0, 0.0]])
    assert assign(torch.tensor([[1.0, 0.0], [2.0, 1.0]]), c).tolist() == [0, 1]
    with pytest.raises(ValueError, match="num_clusters"):
        kmeans(torch.zeros(3, 2), 4)
    with pytest.raises(ValueError, match="backend"):
        kmeans(torch.zeros(3, 2), 2, backend="sklearn")
