"""AVID-CMA: audio-visual instance discrimination with cross-modal agreement.

Morgado, Vasconcelos & Misra 2021, https://arxiv.org/abs/2004.12943. A second stage after
Cross-AVID (:class:`~avssl.objectives.contrastive.AVContrastive` with ``memory_bank: true``):
it starts from a Cross-AVID checkpoint (weights *and* memory banks) and

1. finds, for every training sample, ``positives`` other samples that agree in *both*
   modalities: the agreement of samples i and j is ``min(sim_video, sim_audio)`` of their
   memories ("consensus"; also "union" = max, "video", "audio"), and the top ``positives``
   (32) by agreement form i's positive set;
2. keeps the cross-modal instance discrimination of Cross-AVID (``nce_av``: a video feature
   against its own audio memory and 1024 negatives, and vice versa) and adds a *within-modal
   positive-set* term (``nce_pos``): a video feature against the video memories of its positive
   set, each positive against ``within_negatives`` (64) negative video memories, and the same for
   audio; negatives never include the anchor or its positives;
3. weighs them ``(nce_av + positive_weight * nce_pos) / (1 + positive_weight)`` and finds the
   positive sets again every ``resample_every`` of training (AVID-CMA: every 5 of 20 epochs).

Numbers from AVID-CMA's public Kinetics config (pos_k 32, consensus, 1024 / 64 negatives, equal
weights, resampling every 5 epochs). As in :mod:`avssl.objectives.contrastive`, AVID's binary
NCE is replaced by the softmax (InfoNCE) form: each positive is scored against the negatives.
Samples that joined the bank after the positive sets were found have none until the next
resampling (their positive-set term is left out). Rows that hold no memory of a modality (a
sample without audio; :mod:`avssl.objectives._memory_bank`) agree with no row in it: under
"consensus" such a sample is nobody's positive and has no positives itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from avssl.losses._precision import float32_loss
from avssl.objectives._mavil_parts import read_run_checkpoint
from avssl.objectives._memory_bank import MASKED_LOGIT, BankStep
from avssl.objectives.contrastive import AVContrastive

AGREEMENTS = ("consensus", "union", "video", "audio")
# settings of the Cross-AVID checkpoint that must equal this run's (the weights are loaded)
ARCH_KEYS = ("size", "depth", "patch_size", "tubelet_size", "proj_dim", "proj_hidden_dim",
             "heads", "num_mel_bins")  # fmt: skip


def agreement_positives(
    video: torch.Tensor,
    audio: torch.Tensor,
    k: int,
    agreement: str = "consensus",
    chunk: int = 4096,
    valid: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """``[N, k]`` rows of each row's ``k`` most agreeing other rows, sorted ascending; -1 (first)
    for a pick without any agreeing row left.

    Args:
        video, audio: ``[N, P]`` L2-normalised memories (row i of both is sample i).
        k: positives per row (at most N - 1).
        agreement: "consensus" (min of the two cosine similarities), "union" (max), "video",
            "audio".
        chunk: query rows per matrix product.
        valid: ``([N], [N])`` bool, the rows that hold a video and an audio memory (None: all);
            a similarity with a row (or of a row) without that memory does not count:
            "consensus" needs both, "union" either.
    """
    if agreement not in AGREEMENTS:
        raise ValueError(f"agreement must be one of {AGREEMENTS}, got {agreement!r}")
    n = video.shape[0]
    if not 0 < k < n:
        raise ValueError(f"need 0 < positives < the {n} samples in the memory bank, got {k}")
    out = []
    for start in range(0, n, chunk):
        q = slice(start, min(start + chunk, n))
        sim_v = video[q].float() @ video.float().t()  # [b, N]
        sim_a = audio[q].float() @ audio.float().t()
        if valid is not None:  # no agreement with a missing memory
            sim_v = sim_v.masked_fill(~(valid[0][q, None] & valid[0][None, :]), float("-inf"))
            sim_a = sim_a.masked_fill(~(valid[1][q, None] & valid[1][None, :]), float("-inf"))
        sim = {"consensus": torch.minimum(sim_v, sim_a), "union": torch.maximum(sim_v, sim_a),
               "video": sim_v, "audio": sim_a}[agreement]  # fmt: skip
        rows = torch.arange(q.start, q.stop, device=sim.device)
        sim[rows - q.start, rows] = float("-inf")  # never its own positive
        top = sim.topk(k, dim=1)  # [b, k]
        picks = top.indices.masked_fill(torch.isneginf(top.values), -1)
        out.append(picks.sort(dim=1).values)
    return torch.cat(out)


def negatives_avoiding(
    excluded: torch.Tensor, filled: int, count: int, gen: torch.Generator | None = None
) -> torch.Tensor:
    """``[B, count]`` rows drawn uniformly from ``range(filled)`` minus each row of ``excluded``
    (``[B, E]``, sorted ascending, distinct; e.g. the anchor and its positives). Entries
    ``>= filled`` are padding (a positive set with fewer than E - 1 rows): they exclude nothing,
    and the draws then leave out as many of the highest allowed rows."""
    b, e = excluded.shape
    if filled - e < 1:
        return excluded.new_zeros(b, 0)
    draw = torch.randint(filled - e, (b, count), device=excluded.device, generator=gen)
    # the i-th excluded value shifts every draw at or above (value - i) up by one
    ref = excluded - torch.arange(e, device=excluded.device)  # [B, E], non-decreasing
    return draw + (draw[:, :, None] >= ref[:, None, :]).sum(dim=2)


@float32_loss
def _positive_nce(
    z: torch.Tensor,
    bank: torch.Tensor,
    pos: torch.Tensor,
    neg: torch.Tensor,
    t: torch.Tensor,
    valid: torch.Tensor,
    usable: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean over anchors (``valid``) and their positives of InfoNCE(positive | negatives);
    ``usable [capacity]`` (optional): rows that hold a memory; positives (and -1 picks) and
    negatives without one are left out, and so is an anchor left without positives."""
    z = F.normalize(z.float(), dim=-1)
    pos_ok = pos >= 0 if usable is None else (pos >= 0) & usable[pos.clamp_min(0)]  # [B, K]
    s_pos = torch.einsum("bp,bkp->bk", z, bank[pos.clamp_min(0)].float()) / t  # [B, K]
    s_neg = torch.einsum("bp,bmp->bm", z, bank[neg].float()) / t  # [B, M]
    if usable is not None:
        s_neg = s_neg.masked_fill(~usable[neg], MASKED_LOGIT)
    lse_neg = s_neg.logsumexp(dim=1, keepdim=True)  # [B, 1]
    per = torch.logaddexp(s_pos, lse_neg) - s_pos  # [B, K]: -log softmax of each positive
    w = pos_ok.float()
    valid = valid * (w.sum(dim=1) > 0)
    per_anchor = (per * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)  # [B]
    return (per_anchor * valid).sum() / valid.sum().clamp_min(1.0)


class AVIDCMA(AVContrastive):
    """AVID-CMA (paper: https://arxiv.org/abs/2004.12943); see the module docstring.

    Args:
        avid_ckpt: Cross-AVID checkpoint to start from (weights and memory banks; read with
            ``weights_only=True``); required unless a run is resumed.
        positives: positive-set size per sample (AVID-CMA: 32).
        agreement: "consensus" (AVID-CMA), "union", "video" or "audio".
        positive_weight: weight of the within-modal positive-set term against the cross-modal
            instance term (AVID-CMA's Kinetics config: 1).
        within_negatives: negatives per positive in the positive-set term (AVID-CMA: 64).
        resample_every: find the positive sets again every this fraction of the training steps
            (AVID-CMA: every 5 of 20 epochs, 0.25); 0 = never.
        **kwargs: :class:`AVContrastive` settings (the memory bank is always on, Cross-AVID's
            weights 1 / 0).
    """

    def __init__(
        self,
        avid_ckpt: str | None = None,
        positives: int = 32,
        agreement: str = "consensus",
        positive_weight: float = 1.0,
        within_negatives: int = 64,
        resample_every: float = 0.25,
        **kwargs: Any,
    ) -> None:
        for key in ("memory_bank", "cross_weight", "within_weight"):
            kwargs.pop(key, None)
        super().__init__(memory_bank=True, cross_weight=1.0, within_weight=0.0, **kwargs)
        if agreement not in AGREEMENTS:
            raise ValueError(f"agreement must be one of {AGREEMENTS}, got {agreement!r}")
        if positives < 1 or within_negatives < 1 or positive_weight < 0:
            raise ValueError("positives and within_negatives must be >= 1, positive_weight >= 0")
        if not 0.0 <= resample_every <= 1.0:
            raise ValueError(f"resample_every must be in [0, 1], got {resample_every}")
        self.avid_ckpt, self.num_positives, self.agreement = avid_ckpt, positives, agreement
        self.positive_weight, self.within_negatives = positive_weight, within_negatives
        self.resample_every = resample_every
        self.positive_rows: torch.Tensor | None = None  # [rows, positives] bank rows
        self.found_at = -1  # the step the positive sets were last found at
        self.times_found = 0  # logged as loss/positive_sets_found

    # ----------------------------------------------------------------- start from Cross-AVID
    def check_before_fit(self, resuming: bool) -> None:
        if not resuming:
            self.load_avid(self.avid_ckpt)

    def load_avid(self, path: str | None) -> None:
        """Loads the weights and memory banks of a Cross-AVID checkpoint (one-line errors)."""
        what = f"AVID-CMA avid_ckpt {path}"
        if not path or not Path(path).is_file():
            raise ValueError(
                f"{what}: file not found; pass a Cross-AVID checkpoint "
                "(model.init_args.avid_ckpt, from make pretrain RECIPE=avid)"
            )
        ckpt = read_run_checkpoint(path, what)
        objective = str((ckpt.get("avssl") or {}).get("objective", "?")).rsplit(".", 1)[-1]
        hp = ckpt.get("hyper_parameters") or {}
        bank = ckpt.get("avid_bank")
        if objective not in ("AVContrastive", "AVIDCMA") or not hp.get("memory_bank") or not bank:
            raise ValueError(f"{what}: a checkpoint of {objective} without an AVID memory bank, "
                             "not of Cross-AVID (make pretrain RECIPE=avid)")  # fmt: skip
        for key in ARCH_KEYS:
            if key in hp and hp[key] != self.hparams.get(key):
                raise ValueError(f"{what}: {key}={hp[key]!r} differs from this run's "
                                 f"{self.hparams.get(key)!r}")  # fmt: skip
        state = {k: v for k, v in ckpt["state_dict"].items() if k != "log_inv_temp"}
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if k != "log_inv_temp"]
        if missing or unexpected:
            raise ValueError(f"{what}: weights do not match, e.g. {(missing + unexpected)[:3]}")
        super().on_load_checkpoint({"avid_bank": bank})  # the memory banks and their keys
        self.positive_rows = None  # found on the training device at the first step

    # ----------------------------------------------------------------- positive sets
    @torch.no_grad()
    def find_positives(self) -> None:
        """The positive set of every bank row from the current memories."""
        n = len(self.bank_index)
        self.bank = {m: b.to(self.device) for m, b in self.bank.items()}
        self.bank_valid = {m: v.to(self.device) for m, v in self.bank_valid.items()}
        k = min(self.num_positives, n - 1)
        valid = (self.bank_valid["video"][:n], self.bank_valid["audio"][:n])
        self.positive_rows = agreement_positives(
            self.bank["video"][:n], self.bank["audio"][:n], k, self.agreement, valid=valid
        )
        self.found_at = self.global_step
        self.times_found += 1

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_start(batch, batch_idx)
        total = int(self.trainer.estimated_stepping_batches) if self._trainer else 0
        every = int(round(self.resample_every * total))
        step = self.global_step
        due = every > 0 and step > 0 and step % every == 0 and self.found_at != step
        if self.bank and len(self.bank_index) > 1 and (self.positive_rows is None or due):
            self.find_positives()

    def _bank_negatives(self, rows: torch.Tensor, filled: int) -> torch.Tensor:
        """Cross-AVID's negatives, avoiding the anchor's positive set where it has one."""
        base = super()._bank_negatives(rows, filled)
        pos = self._positives_of(rows)
        if pos is None:
            return base
        excluded = torch.cat([rows[:, None], pos], dim=1)  # [B, 1 + K]
        excluded = excluded.masked_fill(excluded < 0, filled + excluded.shape[1])  # padding
        avoid = negatives_avoiding(excluded.sort(dim=1).values, filled, self.bank_negatives)
        if avoid.shape != base.shape:  # too few rows outside the positive sets
            return base
        have = rows < len(self.positive_rows)  # type: ignore[arg-type]
        return torch.where(have[:, None], avoid, base)

    def _positives_of(self, rows: torch.Tensor) -> torch.Tensor | None:
        """``[B, K]`` positive rows of ``rows`` (rows without a set point to themselves)."""
        if self.positive_rows is None:
            return None
        if self.positive_rows.device != rows.device:  # once (e.g. restored on the CPU)
            self.positive_rows = self.positive_rows.to(rows.device)
        table = self.positive_rows
        have = rows < len(table)
        pos = table[rows.clamp(max=len(table) - 1)]
        return torch.where(have[:, None], pos, rows[:, None].expand_as(pos))

    def _more_bank_terms(self, out, total, step: BankStep, za, zv, a_ok, v_ok) -> torch.Tensor:
        rows, neg, t = step.rows, step.neg, step.t
        pos = self._positives_of(rows)
        if pos is None or self.positive_rows is None or neg.shape[1] == 0:
            return total
        has_set = (rows < len(self.positive_rows)).float()
        out["positive_sets_found"] = torch.tensor(float(self.times_found))
        within = neg[:, : self.within_negatives]
        v_use, a_use = step.usable["video"], step.usable["audio"]
        out["nce_pos"] = 0.5 * (
            _positive_nce(zv, self.bank["video"], pos, within, t, v_ok * has_set, v_use)
            + _positive_nce(za, self.bank["audio"], pos, within, t, a_ok * has_set, a_use)
        )
        return (total + self.positive_weight * out["nce_pos"]) / (1.0 + self.positive_weight)

    # ----------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.positive_rows is not None:
            checkpoint["cma_positives"] = self.positive_rows.detach().cpu()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        if checkpoint.get("cma_positives") is not None:
            self.positive_rows = checkpoint["cma_positives"].clone()

    def export_encoders(self) -> dict[str, Any]:
        out = super().export_encoders()
        out["note"] = "AVID-CMA: the trained audio/video encoders"
        return out
