"""AVID's memory-bank NCE as methods of :class:`~avssl.objectives.contrastive.AVContrastive`
(``memory_bank: true``): the rows of a batch, the staged and committed memory updates, the
cross-modal and within-modal memory terms, and the bank in the checkpoint.

AVID: Morgado et al. 2021, https://arxiv.org/abs/2004.12943. How the bank works is told in the
docstring of :mod:`avssl.objectives.contrastive`; its tensor parts are in
:mod:`avssl.objectives._memory_bank`. :class:`MemoryBankMixin` is a part of ``AVContrastive``
(it reads the attributes that constructor sets); it is not meant to be used on its own.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from avssl.objectives._memory_bank import (
    BankStep,
    bank_negative_rows,
    gather_keys_and_tensors,
    grown,
    holds_memory,
    memory_nce,
)
from avssl.objectives.base import AVObjective


class MemoryBankMixin(AVObjective):
    """AVID's memory bank of :class:`~avssl.objectives.contrastive.AVContrastive`."""

    memory_bank: bool
    bank_negatives: int
    bank_momentum: float
    bank_weights: tuple[float, float]  # (cross-modal, within-modal), normalised by their sum
    bank_index: dict[str, int]
    bank: dict[str, torch.Tensor]
    bank_valid: dict[str, torch.Tensor]
    _bank_pending: tuple | None

    # ----------------------------------------------------------------- AVID memory bank
    def no_validation_reason(self) -> str | None:
        """AVID's memory NCE compares each clip with its own memory row, which only training
        clips have (a validation clip would be added to the memory)."""
        if self.memory_bank:
            return "its memory NCE needs each clip's memory row, and only training clips have one"
        return None

    def _bank_rows(self, keys: list[str]) -> tuple[torch.Tensor, list[str]]:
        """Rows ``[B]`` of ``keys`` and the new keys; a new key gets the next free row, which
        joins the table when the batch is committed (:meth:`commit_state`)."""
        new = [k for k in dict.fromkeys(keys) if k not in self.bank_index]
        slot = {k: len(self.bank_index) + i for i, k in enumerate(new)}
        rows = [self.bank_index[k] if k in self.bank_index else slot[k] for k in keys]
        return torch.tensor(rows, device=self.device), new

    @torch.no_grad()
    def _bank_stage(
        self,
        rows: torch.Tensor,
        filled: int,
        feats: dict[str, torch.Tensor],
        has: dict[str, torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        """Grows the banks to hold ``filled`` rows and writes the (finite) feature of every row that
        holds no memory of a modality its clip has (``has [B]``): AVID's first memory, the
        positive of this batch's loss. Such a row is still no valid memory (a batch that is not
        committed leaves none). Returns per modality the rows usable in this batch's loss."""
        usable = {}
        for m, f in feats.items():
            bank, valid = grown(self.bank.get(m), self.bank_valid.get(m), filled, f)
            ok = (has[m] > 0.5) & torch.isfinite(f).all(dim=1)
            fresh = ok & ~valid[rows]  # [B]
            bank[rows] = torch.where(fresh[:, None], F.normalize(f.float(), dim=-1), bank[rows])
            self.bank[m], self.bank_valid[m] = bank, valid
            usable[m] = valid.clone()
            usable[m][rows] = valid[rows] | fresh
        return usable

    def _bank_losses(self, keys, za, zv, a_ok, v_ok, t) -> dict[str, torch.Tensor]:
        """AVID: video vs audio memories and audio vs video memories (cross-modal,
        ``nce_av``), video vs video and audio vs audio memories (within-modal, ``nce_within``);
        ``bank_loss`` weighs them as the module docstring says."""
        mine = {"audio": za.detach(), "video": zv.detach(), "audio_ok": a_ok, "video_ok": v_ok}
        all_keys, every = gather_keys_and_tensors(keys, mine)
        rows_all, new = self._bank_rows(all_keys)
        feats = {m: every[m] for m in ("audio", "video")}
        has = {m: every[f"{m}_ok"] for m in ("audio", "video")}
        filled = len(self.bank_index) + len(new)  # rows in use, this batch's new ones too
        usable = self._bank_stage(rows_all, filled, feats, has)
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        rows = rows_all[rank * len(keys) : (rank + 1) * len(keys)]  # this rank's samples
        step = BankStep(rows, self._bank_negatives(rows, filled), t, usable)
        w_cross, w_within = self.bank_weights
        out = {"bank_rows": torch.tensor(float(filled))}
        out["nce_av"] = 0.5 * (
            self._memory_term(zv, "audio", step, a_ok * v_ok)
            + self._memory_term(za, "video", step, a_ok * v_ok)
        )
        total = w_cross * out["nce_av"]
        if w_within > 0:  # a modality's own memory: needs only that modality
            out["nce_within"] = 0.5 * (
                self._memory_term(zv, "video", step, v_ok)
                + self._memory_term(za, "audio", step, a_ok)
            )
            total = total + w_within * out["nce_within"]
        total = self._more_bank_terms(out, total, step, za, zv, a_ok, v_ok)
        self._bank_pending = (new, rows_all, feats, has) if self.training else None
        out["bank_loss"] = total
        return out

    def _memory_term(self, z: torch.Tensor, bank: str, step: BankStep, valid: torch.Tensor):
        """:func:`memory_nce` of ``z`` against the ``bank`` modality's memories."""
        return memory_nce(z, self.bank[bank], step.rows, step.neg, step.t, valid, step.usable[bank])

    def _bank_negatives(self, rows: torch.Tensor, filled: int) -> torch.Tensor:
        """``[B, bank_negatives]`` negative rows per anchor (:func:`bank_negative_rows`)."""
        return bank_negative_rows(rows, filled, self.bank_negatives)

    def _more_bank_terms(self, out, total, step: BankStep, za, zv, a_ok, v_ok) -> torch.Tensor:
        """Subclass hook: extra memory terms against the banks before their update (added to
        ``out``); returns the new total. AVID-CMA's positive-set terms use it."""
        return total

    def commit_state(self) -> None:
        """The last training batch's memory update (its loss was finite): its new keys join
        the table and its rows move (:meth:`_bank_update`)."""
        pending, self._bank_pending = self._bank_pending, None
        if pending is None:
            return
        new, rows, feats, has = pending
        start = len(self.bank_index)
        self.bank_index.update({k: start + i for i, k in enumerate(new)})
        self._bank_update(rows, feats, has)

    @torch.no_grad()
    def _bank_update(
        self, rows: torch.Tensor, feats: dict[str, torch.Tensor], has: dict[str, torch.Tensor]
    ) -> None:
        """AVID's memory update ``m <- normalize(momentum m + (1 - momentum) f)`` of the rows
        whose clip has the modality (``has [B]``, finite features only); those rows hold a
        memory from now on; the rows of a missing modality stay as they are."""
        m = self.bank_momentum
        for mod, f in feats.items():
            bank, valid = self.bank[mod], self.bank_valid[mod]
            ok = (has[mod] > 0.5) & torch.isfinite(f).all(dim=1)  # [B]
            old = bank[rows]
            mixed = m * old + (1 - m) * F.normalize(f.float(), dim=-1).to(bank.dtype)
            bank[rows] = torch.where(ok[:, None], F.normalize(mixed, dim=-1), old)
            valid[rows] = valid[rows] | ok

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.memory_bank:
            n = len(self.bank_index)
            checkpoint["avid_bank"] = {
                "keys": sorted(self.bank_index, key=self.bank_index.__getitem__),
                **{m: b[:n].detach().cpu() for m, b in self.bank.items()},
                **{f"{m}_valid": v[:n].cpu() for m, v in self.bank_valid.items()},
            }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restores the bank; a bank saved without validity flags (before avssl kept them)
        counts its finite, non-zero rows as memories (:func:`holds_memory`)."""
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("avid_bank")
        if state:
            self.bank_index = {k: i for i, k in enumerate(state["keys"])}
            self.bank = {m: state[m].float() for m in ("audio", "video") if m in state}
            self.bank_valid = {
                m: state[f"{m}_valid"].bool() if f"{m}_valid" in state else holds_memory(b)
                for m, b in self.bank.items()
            }
            self._bank_pending = None
