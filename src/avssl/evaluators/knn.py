"""Weighted k-nearest-neighbour classifier on frozen features.

Convention of DINO's ``knn_classifier`` (Caron et al., 2021, https://arxiv.org/abs/2104.14294,
after Wu et al., 2018, https://arxiv.org/abs/1805.01978) and solo-learn's
``WeightedKNNClassifier``: features are L2-normalised, the k training items with the highest
cosine similarity vote for their class with weight ``exp(sim / T)``; a class's score is the sum
of its votes.

Ties are deterministic: among training items with equal similarity the one with the lower index
in ``train_x`` is taken first, and :func:`avssl.evaluators._tensors.topk_accuracy` resolves equal
class scores toward the lower class id.
"""

from __future__ import annotations

import numpy as np
import torch

from avssl.evaluators._tensors import (
    ArrayLike,
    as_feature_pair,
    as_labels,
    l2_normalize,
    num_classes_for,
    pick_device,
    row_chunk,
)

try:  # faiss-cpu: an explicit backend only (slower than the torch path on 2 CPU cores)
    import faiss
except ImportError:  # pragma: no cover - faiss is an install requirement
    faiss = None  # type: ignore[assignment]

# Use bf16 candidates (on CPUs with bf16 units) when the similarity matrix has at least this
# many entries.
BF16_MIN_PAIRS = 1 << 24
BF16_U = 2.0**-8  # unit roundoff of bfloat16 (8 significant bits)


def cpu_has_bf16() -> bool:
    """True when the CPU multiplies bf16 natively (AVX512-BF16 or AMX), Linux only."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def knn_predict(
    train_x: ArrayLike,
    train_y: ArrayLike,
    test_x: ArrayLike,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    *,
    device: str | torch.device | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Class scores of a weighted kNN vote.

    Args:
        train_x: ``[N, D]`` training features (any scale; L2-normalised here).
        train_y: ``[N]`` class ids.
        test_x: ``[M, D]`` test features.
        k: number of neighbours (capped at N).
        temperature: T in the vote weight ``exp(sim / T)``.
        num_classes: C; defaults to ``max(train_y) + 1``.
        device: torch device for the torch backend; None -> CUDA when available.
        backend: "torch" (chunked float matmul + topk), "faiss" (``IndexFlatIP``, float32,
            CPU), "bf16" (bf16 matmul on CPU picks candidates, float32 decides, see
            :func:`_neighbours_bf16`) or "auto": "bf16" for large float32 problems on a CPU
            with bf16 instructions and k <= 64; "torch" otherwise (at 100k x 768 train, 10k
            test features on 2 AVX-512 cores without bf16: torch 8.8 s, faiss 1.15 45 s).
            Every backend returns the float32 top-k (ties -> lower index).

    Returns:
        float ``[M, C]`` scores on the CPU (float64 when the inputs are float64).
    """
    xtr, xte = as_feature_pair(train_x, test_x)
    xtr, xte = l2_normalize(xtr), l2_normalize(xte).to(xtr.dtype)
    ytr = as_labels(train_y, len(xtr), "train_y")
    if len(xtr) == 0:
        raise ValueError("knn_predict needs at least one training item")
    c = num_classes_for(ytr, num_classes, "train_y")
    kk = min(int(k), len(xtr))
    dev = pick_device(device)
    backend = _choose(backend, dev, xtr, xte, kk)
    if backend == "faiss":  # faiss computes in float32
        sims, idx = _neighbours_faiss(xtr.float(), xte.float(), kk)
    elif backend == "bf16":
        sims, idx = _neighbours_bf16(xtr.float(), xte.float(), kk)
    else:
        sims, idx = _neighbours_torch(xtr.to(dev), xte, kk)
    sims = sims.to(xtr.dtype)
    weights = (sims / temperature).exp()  # [M, k]
    scores = torch.zeros(len(xte), c, dtype=xtr.dtype)
    return scores.scatter_add_(1, ytr[idx], weights)


def _choose(backend: str, dev: torch.device, xtr: torch.Tensor, xte: torch.Tensor, k: int) -> str:
    if backend != "auto":
        if backend not in ("torch", "faiss", "bf16"):
            raise ValueError(f"backend must be auto, torch, faiss or bf16, got {backend!r}")
        if backend == "faiss" and faiss is None:
            raise ValueError("backend='faiss' needs the faiss-cpu package, which is not installed")
        return backend
    big = len(xtr) * len(xte) >= BF16_MIN_PAIRS and xtr.dtype == torch.float32
    if dev.type != "cpu" or not big:
        return "torch"
    if k <= 64 and 8 * k < len(xtr) and cpu_has_bf16():
        return "bf16"
    return "torch"


def _neighbours_torch(xtr: torch.Tensor, xte: torch.Tensor, k: int) -> tuple:
    """Top-k (similarity, index) per test row, chunked over test rows; ties -> lower index.

    Every chunk's similarities go into one buffer allocated once: a fresh ``[b, N]`` block per
    chunk is fresh memory the kernel must fault in, which cost a third of the matmul's time at
    100k x 768 on 2 CPU cores (330 -> 214 ms per 335-row chunk)."""
    out_s, out_i = [], []
    step = max(1, min(row_chunk(len(xtr)), len(xte)))
    buf = torch.empty(step, len(xtr), dtype=xtr.dtype, device=xtr.device)
    for start in range(0, len(xte), step):
        q = xte[start : start + step].to(xtr.device)
        sim = torch.mm(q, xtr.T, out=buf[: len(q)])  # [b, N]
        s, i = _topk_lowest_index(sim, k)
        out_s.append(s.cpu())
        out_i.append(i.cpu())
    return torch.cat(out_s), torch.cat(out_i)


def _topk_lowest_index(sim: torch.Tensor, k: int) -> tuple:
    """``topk`` whose choice among equal values at the k-th place is the lowest column index."""
    n = sim.shape[1]
    if k >= n:
        order = torch.sort(sim, dim=1, descending=True, stable=True).indices
        return sim.gather(1, order), order
    vals, idx = sim.topk(k + 1, dim=1)  # [b, k+1], sorted descending
    tied = (vals[:, k - 1] == vals[:, k]).nonzero().flatten()
    vals, idx = vals[:, :k], idx[:, :k]
    for r in tied.tolist():  # rare: only rows with a tie across the k-th place
        order = torch.sort(sim[r], descending=True, stable=True).indices[:k]
        vals[r], idx[r] = sim[r, order], order
    return vals, idx


def _neighbours_faiss(xtr: torch.Tensor, xte: torch.Tensor, k: int) -> tuple:
    """Top-k by ``faiss.IndexFlatIP``; rows with a tie across the k-th place redone in torch."""
    index = faiss.IndexFlatIP(xtr.shape[1])
    index.add(np.ascontiguousarray(xtr.numpy(), dtype=np.float32))
    kq = min(k + 1, len(xtr))
    s, i = index.search(np.ascontiguousarray(xte.numpy(), dtype=np.float32), kq)
    sims, idx = torch.from_numpy(s), torch.from_numpy(i).long()
    if kq > k:
        tied = (sims[:, k - 1] == sims[:, k]).nonzero().flatten()
        sims, idx = sims[:, :k].clone(), idx[:, :k].clone()
        if len(tied):
            ts, ti = _neighbours_torch(xtr, xte[tied], k)
            sims[tied], idx[tied] = ts, ti
    return sims, idx


def _neighbours_bf16(xtr: torch.Tensor, xte: torch.Tensor, k: int) -> tuple:
    """Exact float32 top-k, with a bf16 matmul (twice as fast on CPUs with bf16 units) choosing
    ``m = 2k + 16`` candidates per query.

    The candidates' similarities are recomputed in float32. For unit vectors q, x and their bf16
    roundings, ``|q'.x' - q.x| <= |q' - q| (1 + u) + max_j |x'_j - x_j|`` (u = 2^-8), plus about
    ``u |s|`` for rounding the output to bf16 and ``D 2^-24`` for float32 accumulation, both in
    the bf16 matmul and in the float32 recomputation. When the k-th float32 similarity exceeds
    the m-th bf16 one by more than that bound (with margin), no item outside the candidates can
    enter the top k and the result is exact; other rows are redone by :func:`_neighbours_torch`.
    """
    m = min(2 * k + 16, len(xtr))
    xb = xtr.bfloat16()
    x_err = (xb.float() - xtr).norm(dim=1).max().item()
    accum = 2 * xtr.shape[1] * 2.0**-24
    step = max(1, min(row_chunk(len(xtr)), (1 << 25) // (m * xtr.shape[1]), len(xte)))
    buf = torch.empty(step, len(xtr), dtype=torch.bfloat16)
    out_s, out_i = [], []
    for start in range(0, len(xte), step):
        q = xte[start : start + step]
        qb = q.bfloat16()
        vb, ib = torch.mm(qb, xb.T, out=buf[: len(q)]).topk(m, dim=1)  # [b, m] candidates
        ib = ib.sort(dim=1).values  # ascending train index: ties -> lower index below
        sim = torch.bmm(xtr[ib], q[:, :, None])[:, :, 0]  # [b, m] float32
        s, j = _topk_lowest_index(sim, k)
        i = ib.gather(1, j)
        tau = vb[:, -1].float()
        in_err = (qb.float() - q).norm(dim=1) * (1 + BF16_U) + x_err  # [b]
        err = (1 + BF16_U) * in_err + (BF16_U + 2 * BF16_U**2) * tau.abs() + 2 * accum
        bad = (s[:, -1] <= tau + err).nonzero().flatten()
        if len(bad):
            s[bad], i[bad] = _neighbours_torch(xtr, q[bad], k)
        out_s.append(s)
        out_i.append(i)
    return torch.cat(out_s), torch.cat(out_i)


def knn_evaluate(
    train_x: ArrayLike,
    train_y: ArrayLike,
    test_x: ArrayLike,
    test_y: ArrayLike,
    ks: tuple[int, ...] = (20, 200),
    temperature: float = 0.07,
    num_classes: int | None = None,
    **kwargs,
) -> dict:
    """Top-1/top-5 accuracy (percent) and predictions for each k in ``ks``.

    Returns:
        ``{k: {"top1": float, "top5": float, "pred": LongTensor [M]}}``.
    """
    from avssl.evaluators._tensors import topk_accuracy

    out = {}
    for k in ks:
        scores = knn_predict(train_x, train_y, test_x, k, temperature, num_classes, **kwargs)
        res = topk_accuracy(scores, test_y, (1, 5))
        res["pred"] = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, 0]
        out[int(k)] = res
    return out
