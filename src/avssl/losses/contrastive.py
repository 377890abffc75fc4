"""Contrastive losses between modalities: InfoNCE, MIL-NCE, and a cross-rank gather.

- InfoNCE: van den Oord et al. 2018, "Representation Learning with Contrastive Predictive
  Coding" (CPC), https://arxiv.org/abs/1807.03748; used between audio and video by VATT
  (Akbari et al. 2021, https://arxiv.org/abs/2104.11178), MMV, LAVA and CAV-MAE.
- MIL-NCE: Miech et al. 2020, "End-to-End Learning of Visual Representations from Uncurated
  Instructional Videos", https://arxiv.org/abs/1912.06430 (several positives per sample).
- Negatives from every rank: features are all-gathered with gradients (as SimCLR / VATT);
  inside :func:`rank_local` (validation) each rank keeps its own batch.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator

import torch
import torch.distributed as dist
import torch.nn.functional as F

from avssl.losses._precision import float32_loss

_RANK_LOCAL = [False]  # set inside rank_local()


@contextlib.contextmanager
def rank_local() -> Iterator[None]:
    """Within it the gathers here are the identity: each rank's losses take its own batch
    only. For validation, where ranks may hold different numbers and sizes of batches (a
    collective there would wait forever or fail on the shapes)."""
    before = _RANK_LOCAL[0]
    _RANK_LOCAL[0] = True
    try:
        yield
    finally:
        _RANK_LOCAL[0] = before


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` when not distributed
    (or inside :func:`rank_local`)."""
    if _RANK_LOCAL[0]:
        return 0, 1
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _AllGatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums the gradients of every rank and keeps the local slice."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        rank, world = rank_and_world()
        ctx.rank, ctx.local = rank, x.shape[0]
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x)
        return torch.cat(parts, dim=0)  # [W * B, ...], rank order

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)  # d(sum of every rank's loss)/d(gathered)
        return grad[ctx.rank * ctx.local : (ctx.rank + 1) * ctx.local]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All-gathers ``x [B, ...]`` from every rank along dim 0 keeping gradients.

    The backward pass sums, over ranks, the gradients that every rank's loss sends to this
    rank's slice, so that after DDP averages parameter gradients over the W ranks the result is
    the gradient of the mean of the per-rank losses (the loss on the whole global batch).
    Every rank must pass the same shape. Identity when torch.distributed is not initialised.

    Returns:
        ``[W * B, ...]`` with rank r's rows at ``r * B : (r + 1) * B``.
    """
    _, world = rank_and_world()
    if world == 1:
        return x
    return _AllGatherWithGrad.apply(x)


def _check_pair(name: str, a: torch.Tensor, b: torch.Tensor) -> None:
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"{name}: a {tuple(a.shape)} and b {tuple(b.shape)} must both be [B, D]")


def _targets(
    a: torch.Tensor, b: torch.Tensor, gather: bool, need_a: bool = True, need_b: bool = True
):
    """Gathered candidates and the labels of the local rows among them. A one-way loss uses
    one side's candidates only: the other (``need_a`` / ``need_b`` False) comes back local, not
    gathered (it is not used)."""
    if not gather:
        return a, b, torch.arange(a.shape[0], device=a.device)
    rank, _ = rank_and_world()
    labels = torch.arange(a.shape[0], device=a.device) + rank * a.shape[0]
    return (gather_with_grad(a) if need_a else a), (gather_with_grad(b) if need_b else b), labels


@float32_loss
def info_nce(
    a: torch.Tensor,
    b: torch.Tensor,
    temperature: float | torch.Tensor = 0.07,
    symmetric: bool = True,
    gather: bool = False,
) -> torch.Tensor:
    """InfoNCE between two views: row i of ``a`` matches row i of ``b``, other rows are negatives.

    Args:
        a: ``[B, D]`` features of view/modality A (L2-normalised here).
        b: ``[B, D]`` features of B.
        temperature: softmax temperature (float or a learnable scalar tensor).
        symmetric: mean of the a->b and b->a cross-entropies (VATT sums them); else a->b only
            (CAV-MAE's default).
        gather: use the rows of every rank as candidates (:func:`gather_with_grad`).

    Returns:
        Scalar loss (float32), mean over the local rows.
    """
    _check_pair("info_nce", a, b)
    a = F.normalize(a.float(), dim=-1)
    b = F.normalize(b.float(), dim=-1)
    a_all, b_all, labels = _targets(a, b, gather, need_a=symmetric)  # a->b needs only b_all
    loss = F.cross_entropy(a @ b_all.t() / temperature, labels)  # [B, W*B] logits
    if symmetric:
        loss = 0.5 * (loss + F.cross_entropy(b @ a_all.t() / temperature, labels))
    return loss


@float32_loss
def mil_nce(
    a: torch.Tensor,
    b: torch.Tensor,
    temperature: float | torch.Tensor = 0.07,
    symmetric: bool = True,
    gather: bool = False,
    valid: torch.Tensor | None = None,
    ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """MIL-NCE with K positives per sample (Miech et al. 2020).

    ``a [B, K, D]`` holds K candidates per sample (e.g. K clips of one video), ``b [B, D]`` one
    feature per sample; the K pairs ``(a[i, k], b[i])`` are positives, all pairs with another
    sample are negatives. Direction b->a: ``-log(sum_k e^{s(b_i, a_ik)} / sum_{j,k}
    e^{s(b_i, a_jk)})``; direction a->b: ``-log(sum_k e^{s(b_i, a_ik)} / sum_{j,k}
    e^{s(b_j, a_ik)})``, with ``s = cos / temperature``. With K = 1 this equals
    ``info_nce(b, a[:, 0])``.

    Args:
        a: ``[B, K, D]`` bags of positives.
        b: ``[B, D]`` anchors.
        temperature: softmax temperature.
        symmetric: mean of both directions; else b->a only.
        gather: candidates from every rank (:func:`gather_with_grad`).
        valid: optional ``[B]`` 0/1: samples with 0 (a missing modality) are neither anchors
            nor candidates.
        ids: optional ``[B]`` video ids (:func:`key_ids`): another sample of the same video
            is not a negative.

    Returns:
        Scalar loss (float32), mean over the local (valid) samples; 0 when none is valid.
    """
    if a.ndim != 3 or b.ndim != 2 or a.shape[0] != b.shape[0] or a.shape[2] != b.shape[1]:
        raise ValueError(
            f"mil_nce: a {tuple(a.shape)} must be [B, K, D], b {tuple(b.shape)} [B, D]"
        )
    a = F.normalize(a.float(), dim=-1)
    b = F.normalize(b.float(), dim=-1)
    a_all, b_all, labels = _targets(a, b, gather, need_b=symmetric)  # b->a needs only a_all
    rows = torch.arange(a.shape[0], device=a.device)
    w = torch.ones(a.shape[0], device=a.device) if valid is None else valid.float()
    dead = None  # [1 or B, W*B, 1] candidates that are not there (None: every one is)
    if valid is not None:
        dead = ((gather_plain(w) if gather else w) < 0.5)[None, :, None]
    twin = twins(ids, gather, labels)
    if twin is not None:
        dead = twin[:, :, None] if dead is None else dead | twin[:, :, None]

    def direction(s: torch.Tensor) -> torch.Tensor:  # s [B, W*B, K] -> mean over valid rows
        if dead is not None:
            s = s.masked_fill(dead, -1e4)
        per_row = s.flatten(1).logsumexp(dim=1) - s[rows, labels].logsumexp(dim=1)  # [B]
        return (per_row * w).sum() / w.sum().clamp_min(1.0)

    loss = direction(torch.einsum("id,jkd->ijk", b, a_all) / temperature)
    if symmetric:
        loss = 0.5 * (loss + direction(torch.einsum("ikd,jd->ijk", a, b_all) / temperature))
    return loss


def key_ids(keys: list[str], repeat: int = 1, device: torch.device | str = "cpu") -> torch.Tensor:
    """int64 ``[B * repeat]`` ids of sample keys (BLAKE2b, the same on every rank and run), each
    repeated ``repeat`` times (the K clips of a sample): the losses' ``ids`` argument, which keeps
    two entries of one video in a batch from being each other's negatives."""
    ids = [int.from_bytes(hashlib.blake2b(k.encode(), digest_size=8).digest(), "little",
                          signed=True) for k in keys]  # fmt: skip
    out = torch.tensor(ids, dtype=torch.long).repeat_interleave(repeat)
    if torch.device(device).type == "cuda":  # from pinned memory: no host-device sync
        return out.pin_memory().to(device, non_blocking=True)
    return out.to(device)


def twins(ids: torch.Tensor | None, gather: bool, labels: torch.Tensor) -> torch.Tensor | None:
    """``[B, W B]`` bool: candidate j is another entry of row i's video (same id, not its own
    positive); None without ids."""
    if ids is None:
        return None
    ids_all = gather_plain(ids) if gather else ids  # [W B]
    same = ids[:, None] == ids_all[None, :]
    same[torch.arange(len(ids), device=ids.device), labels] = False
    return same


def gather_plain(x: torch.Tensor) -> torch.Tensor:
    """All-gathers ``x [B, ...]`` without gradients (masks, labels); identity when not
    distributed."""
    _, world = rank_and_world()
    if world == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)
