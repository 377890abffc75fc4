"""k-means for deep clustering (XDC, DeepCluster), torch with an optional faiss backend.

XDC (Alwassel et al. 2020, https://arxiv.org/abs/1911.12667) re-clusters the features of each
modality every epoch; DeepCluster (Caron et al. 2018, https://arxiv.org/abs/1807.05520) showed
that empty clusters must be handled or the pseudo-labels collapse. Here:

- the torch backend seeds with k-means++; during its Lloyd iterations an empty cluster takes
  over half of the largest cluster: it gets that cluster's centroid, both moved apart by a
  small perturbation, ``+-1e-4 * (|c| + 1e-4)`` per dimension. This is faiss's idea (the
  clustering DeepCluster and XDC ran), not its exact rule: faiss (``split_clusters`` in
  ``Clustering.cpp``) draws the donor at random with probability ``(size - 1) / (N - K)``
  instead of taking the largest, and scales the centroid by ``1 +- 1/1024`` with the sign
  alternating over dimensions (a zero coordinate stays equal in both);
- after the last iteration (either backend) any cluster still empty is *reseeded* with the point
  farthest from its own centroid (taken from a cluster of size > 1), and the assignments are
  recomputed, so that every returned assignment is the nearest centroid and, for N >= K distinct
  points, no cluster is empty.

faiss is imported lazily (it is an optional dependency); the torch backend is used when faiss is
missing or ``backend="torch"``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class KMeansResult:
    """Output of `kmeans`.

    Attributes:
        centroids: float ``[K, D]``.
        assignments: long ``[N]``, index of the nearest centroid of each point.
        inertia: sum of squared distances of the points to their centroid.
        num_reseeded: number of empty clusters reseeded after the last iteration.
        backend: "torch" or "faiss".
    """

    centroids: torch.Tensor
    assignments: torch.Tensor
    inertia: float
    num_reseeded: int
    backend: str


def _sq_dists(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Squared distances ``[N, K]`` between points ``[N, D]`` and centroids ``[K, D]``."""
    return (x.pow(2).sum(1, keepdim=True) - 2.0 * x @ c.T + c.pow(2).sum(1)[None]).clamp_min(0)


def assign(x: torch.Tensor, centroids: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    """Index ``[N]`` of the nearest centroid of each row of ``x`` (squared L2)."""
    out = [_sq_dists(x[i : i + chunk], centroids).argmin(dim=1) for i in range(0, len(x), chunk)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long, device=x.device)


def _split_empty(centroids: torch.Tensor, counts: torch.Tensor, eps: float = 1e-4) -> None:
    """In place: each empty cluster takes half of the currently largest one (its centroid, both
    moved apart by ``+-eps * (|c| + eps)``; the module docstring says how faiss differs)."""
    for k in torch.nonzero(counts == 0).flatten().tolist():
        big = int(counts.argmax())
        noise = eps * (centroids[big].abs() + eps)
        centroids[k] = centroids[big] + noise
        centroids[big] = centroids[big] - noise
        counts[k] = counts[big] // 2
        counts[big] -= counts[k]


def _kmeans_pp(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): ``[K, D]`` points drawn by D^2."""
    first = int(torch.randint(len(x), (1,), generator=generator))
    centroids = [x[first]]
    d2 = (x - x[first]).pow(2).sum(1).cpu()  # [N]
    for _ in range(1, k):
        if float(d2.sum()) <= 0:  # all remaining points coincide with a centroid
            nxt = int(torch.randint(len(x), (1,), generator=generator))
        else:
            nxt = int(torch.multinomial(d2 / d2.sum(), 1, generator=generator))
        centroids.append(x[nxt])
        d2 = torch.minimum(d2, (x - x[nxt]).pow(2).sum(1).cpu())
    return torch.stack(centroids).clone()


def _lloyd_torch(
    x: torch.Tensor, k: int, num_iters: int, generator: torch.Generator
) -> torch.Tensor:
    """Lloyd iterations from a k-means++ seeding; returns centroids ``[K, D]``."""
    centroids = _kmeans_pp(x, k, generator)
    for _ in range(num_iters):
        labels = assign(x, centroids)
        counts = torch.bincount(labels, minlength=k)
        sums = torch.zeros_like(centroids).index_add_(0, labels, x)
        nonempty = counts > 0
        new = centroids.clone()
        new[nonempty] = sums[nonempty] / counts[nonempty, None].to(x.dtype)
        _split_empty(new, counts.clone())
        if torch.allclose(new, centroids):
            centroids = new
            break
        centroids = new
    return centroids


def _lloyd_faiss(x: torch.Tensor, k: int, num_iters: int, seed: int) -> torch.Tensor:
    """faiss k-means (which splits empty clusters itself); returns centroids ``[K, D]``."""
    import faiss  # optional dependency, imported lazily
    import numpy as np

    data = np.ascontiguousarray(x.detach().cpu().float().numpy())
    km = faiss.Kmeans(
        data.shape[1],
        k,
        niter=num_iters,
        seed=seed,
        verbose=False,
        min_points_per_centroid=1,
        max_points_per_centroid=max(256, len(data)),  # no subsampling
    )
    km.train(data)
    assert km.centroids is not None
    return torch.from_numpy(km.centroids.copy()).to(device=x.device, dtype=x.dtype)


def _reseed_empty(x: torch.Tensor, centroids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Reseeds clusters left empty with far points; returns final assignments and the count."""
    k = len(centroids)
    reseeded = 0
    labels = assign(x, centroids)
    for _ in range(k):  # each round fixes >= 1 empty cluster when N >= K distinct points
        counts = torch.bincount(labels, minlength=k)
        empty = torch.nonzero(counts == 0).flatten().tolist()
        if not empty:
            break
        dist = (x - centroids[labels]).pow(2).sum(1)  # [N]
        dist[counts[labels] <= 1] = -1.0  # never take the only point of a cluster
        taken = 0
        for c in empty:
            far = int(dist.argmax())
            if dist[far] <= 0:
                break
            centroids[c] = x[far]
            dist[far] = -1.0
            reseeded += 1
            taken += 1
        labels = assign(x, centroids)
        if taken == 0:
            break
    return labels, reseeded


def kmeans(
    x: torch.Tensor,
    num_clusters: int,
    num_iters: int = 20,
    seed: int = 0,
    backend: str = "auto",
) -> KMeansResult:
    """k-means (squared L2) of the rows of ``x``.

    Args:
        x: float ``[N, D]`` features (L2-normalise them first for spherical clustering).
        num_clusters: K, 1 <= K <= N.
        num_iters: Lloyd iterations.
        seed: seed of the initial centroids (deterministic for a given input).
        backend: "auto" (faiss when importable, else torch), "faiss" or "torch".

    Returns:
        `KMeansResult`; its assignments are the nearest centroid of each point.
    """
    if x.dim() != 2:
        raise ValueError(f"kmeans: expected features [N, D], got {tuple(x.shape)}")
    if not 1 <= num_clusters <= len(x):
        raise ValueError(f"kmeans: num_clusters={num_clusters} must be in [1, N={len(x)}]")
    if backend not in ("auto", "faiss", "torch"):
        raise ValueError(f"kmeans: unknown backend {backend!r} (auto, faiss, torch)")
    x = x.detach().float()
    if backend == "auto":
        try:
            import faiss  # noqa: F401

            backend = "faiss"
        except ImportError:
            backend = "torch"
    if backend == "faiss":
        centroids = _lloyd_faiss(x, num_clusters, num_iters, seed)
    else:
        gen = torch.Generator().manual_seed(seed)
        centroids = _lloyd_torch(x, num_clusters, num_iters, gen)
    labels, reseeded = _reseed_empty(x, centroids)
    inertia = float((x - centroids[labels]).pow(2).sum())
    return KMeansResult(centroids, labels, inertia, reseeded, backend)
