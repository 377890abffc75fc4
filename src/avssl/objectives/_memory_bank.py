"""AVID's memory bank: its rows, which of them hold a memory, its negatives and its NCE.

Parts of :class:`~avssl.objectives.contrastive.AVContrastive` (``memory_bank: true``) and of
AVID-CMA. A bank is a float32 tensor ``[capacity, P]`` per modality (L2-normalised memories)
with a bool vector ``[capacity]`` beside it saying which rows hold a memory of that modality: a
row holds none before its sample's first committed batch, nor for a modality the sample lacks
(no audio track: the loader's all-zero fbank is no sound to remember). Rows without a memory
are never drawn into a softmax (their logits are masked), are never a positive, and take no
part in the agreement of AVID-CMA.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from avssl.losses._precision import float32_loss
from avssl.losses.contrastive import gather_plain

MASKED_LOGIT = -1.0e4  # a left-out candidate: exp() is 0 in float32, gradients stay finite


@dataclass
class BankStep:
    """What the memory terms of one batch share.

    Attributes:
        rows: ``[B]`` bank rows of this rank's samples.
        neg: ``[B, M]`` negative rows drawn per anchor.
        t: the temperature (a tensor).
        usable: modality -> ``[capacity]`` bool, the rows that hold a memory for this batch's
            loss (the valid rows plus the rows this batch initialises).
    """

    rows: torch.Tensor
    neg: torch.Tensor
    t: torch.Tensor
    usable: dict[str, torch.Tensor]


def holds_memory(bank: torch.Tensor) -> torch.Tensor:
    """``[N]`` bool: rows that hold a memory, as far as the values tell (finite and not all
    zero); the validity of a bank saved before the flags were kept."""
    return torch.isfinite(bank).all(dim=1) & (bank.abs().sum(dim=1) > 0)


def grown(
    bank: torch.Tensor | None, valid: torch.Tensor | None, need: int, like: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``bank`` (float32, on ``like``'s device; new when None) and its validity (from the values
    when None) with room for ``need`` rows, doubling; new rows are zero and hold no memory."""
    if bank is None:
        bank = like.new_zeros(0, like.shape[1], dtype=torch.float32)
    bank = bank.to(like.device, torch.float32)
    valid = holds_memory(bank) if valid is None else valid.to(bank.device)
    if need > len(bank):
        extra = max(need, 2 * len(bank)) - len(bank)
        bank = torch.cat([bank, bank.new_zeros(extra, bank.shape[1])])
        valid = torch.cat([valid, valid.new_zeros(extra)])
    return bank, valid


def bank_negative_rows(rows: torch.Tensor, filled: int, count: int) -> torch.Tensor:
    """``[B, count]`` bank rows drawn uniformly from the ``filled`` rows other than each
    anchor's own row ``rows [B]`` (its positive); ``[B, 0]`` when the bank holds one row.

    AVID samples its negatives uniformly from a memory of the whole training set (Kinetics),
    where drawing the anchor's own memory is negligible; on a few hundred clips 1024 uniform
    draws would hold the positive about 4 times each, which puts a floor of about ln(5) under
    the loss, so it is excluded: draw from ``filled - 1`` rows and skip the anchor's. Rows
    without a memory may be drawn; the loss leaves them out (``usable``).
    """
    if filled < 2:
        return rows.new_zeros(len(rows), 0)
    neg = torch.randint(filled - 1, (len(rows), count), device=rows.device)
    return neg + (neg >= rows[:, None]).long()


@float32_loss
def memory_nce(
    z: torch.Tensor,
    bank: torch.Tensor,
    rows: torch.Tensor,
    neg: torch.Tensor,
    t: torch.Tensor,
    valid: torch.Tensor,
    usable: torch.Tensor | None = None,
) -> torch.Tensor:
    """InfoNCE of ``z [B, P]`` against its memory ``bank[rows]`` and ``bank[neg] [B, M, P]``,
    mean over the anchors ``valid [B]``; ``usable [capacity]`` (optional): rows that hold a
    memory; an anchor whose own row holds none is left out, and so is a negative without one."""
    z = F.normalize(z.float(), dim=-1)
    pos = (z * bank[rows].float()).sum(-1, keepdim=True) / t  # [B, 1]
    negs = torch.einsum("bp,bmp->bm", z, bank[neg].float()) / t  # [B, M]
    if usable is not None:
        valid = valid * usable[rows]
        negs = negs.masked_fill(~usable[neg], MASKED_LOGIT)
    logits = torch.cat([pos, negs], dim=1)  # [B, 1 + M], positive at 0
    target = torch.zeros(len(z), dtype=torch.long, device=z.device)
    per_row = F.cross_entropy(logits, target, reduction="none")  # [B]
    return (per_row * valid).sum() / valid.sum().clamp_min(1.0)


def gather_keys_and_tensors(
    keys: list[str], tensors: dict[str, torch.Tensor]
) -> tuple[list[str], dict[str, torch.Tensor]]:
    """All ranks' keys and (detached) per-sample tensors ``[B, ...]``, rank-ordered; identity
    when not distributed. The tensors travel as one float32 ``[B, sum of widths]`` gather."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(keys), tensors
    key_lists: list[list[str]] = [[] for _ in range(dist.get_world_size())]
    dist.all_gather_object(key_lists, list(keys))
    flat = [t.detach().reshape(len(t), -1).float() for t in tensors.values()]  # [B, w] each
    every = gather_plain(torch.cat(flat, dim=1))  # [W B, sum w]
    parts = every.split([f.shape[1] for f in flat], dim=1)
    out = {
        m: part.reshape(-1, *t.shape[1:]).to(t.dtype)
        for (m, t), part in zip(tensors.items(), parts)
    }
    return [k for ks in key_lists for k in ks], out
