"""Audio-video contrastive learning: VATT-style batch NCE and AVID's memory bank.

- VATT (Akbari et al. 2021, https://arxiv.org/abs/2104.11178): each modality's pooled encoder
  output goes through a projection head into a common space; a symmetric NCE pairs the audio and
  video of one clip against the other clips of the (all-rank) batch, temperature 0.07. DropToken
  feeds only a random subset of the input tokens to the encoder during training (VATT drops 50%),
  which cuts the cost of a step roughly in proportion.
- AVID (Morgado et al. 2021, https://arxiv.org/abs/2004.12943): Cross-AVID compares each video
  feature with the *memory* of the audio of the same sample (positive) and with 1024 memories of
  random other samples (negatives), T 0.07, and vice versa; memories are slow averages
  ``m <- normalize(0.5 m + 0.5 f)`` of past features. AVID's NCE is a binary noise-contrastive
  estimate; we use the softmax (InfoNCE) form over 1 positive + the negatives. AVID's variants
  weigh the cross-modal terms (video vs audio memories and back) and the within-modal ones
  (video vs video memories, audio vs audio memories) by ``cross_weight`` and ``within_weight``,
  normalised by their sum as AVID's code does: Cross-AVID 1 / 0 (the paper's choice), Self-AVID
  0 / 1, Joint-AVID 1 / 1.

AVID memory bank, as implemented (parts in :mod:`avssl.objectives._memory_bank`): one entry per
*training sample*, found by its sample key through a key -> row table that grows lazily (a new
key gets the next row, initialised with its current feature); negatives are drawn uniformly with
replacement from the rows filled so far, so early on (or on a small dataset) a negative can
repeat. A row holds a memory of a modality only once a clip of the sample *with* that modality
was trained on: a clip without audio writes no audio memory (the loader's all-zero fbank is no
sound), and rows without one are left out of the negatives. The update of a batch (new keys,
new and moved memories) is staged and committed only when its loss is finite (``commit_state``),
so a skipped batch leaves the bank as it was. Under DDP, keys and features of every rank are
all-gathered before the bank update so that all ranks hold the same bank. The table, the banks
and their validity flags are saved in the checkpoint (``checkpoint["avid_bank"]``) and restored
on resume. A FIFO queue (MoCo) would be smaller but would not keep AVID's per-sample positive
memory.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from avssl.data.batch import AVBatch
from avssl.losses.contrastive import key_ids, mil_nce
from avssl.models.masking import random_masking
from avssl.models.vit import ViTEncoder
from avssl.objectives._mavil_parts import build_encoders, flatten_inputs, masked_info_nce
from avssl.objectives._memory_bank import (
    BankStep,
    bank_negative_rows,
    gather_keys_and_tensors,
    grown,
    holds_memory,
    memory_nce,
)
from avssl.objectives.base import AVObjective


def projection_head(dim: int, hidden: int, out: int) -> nn.Module:
    """Linear (``hidden == 0``) or Linear-GELU-Linear projection into the contrastive space."""
    if hidden <= 0:
        return nn.Linear(dim, out)
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, out))


HEADS = ("mlp", "fac", "avid")


def avid_head(dim: int, hidden: int, out: int) -> nn.Module:
    """AVID's projection head (both modalities): Linear-ReLU-Linear-ReLU-Linear, two hidden
    layers ``hidden`` wide (AVID's Kinetics config: 512, 512, then 128; Morgado et al. 2021,
    https://arxiv.org/abs/2004.12943, and its public code)."""
    return nn.Sequential(
        nn.Linear(dim, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, out),
    )


def fac_video_head(dim: int, out: int) -> nn.Module:
    """The video-to-audio-video head of MMV's fine-and-coarse (FAC) design, which VATT uses:
    Linear-BN-ReLU-Linear-BN, both linear layers ``out`` wide and without bias (Alayrac et al.
    2020, https://arxiv.org/abs/2006.16228). The batch norms standardise each output dimension
    over the batch, which keeps the video embeddings of a batch apart."""
    return nn.Sequential(
        nn.Linear(dim, out, bias=False),
        nn.BatchNorm1d(out),
        nn.ReLU(),
        nn.Linear(out, out, bias=False),
        nn.BatchNorm1d(out),
    )


def pooled(encoder: ViTEncoder, x: torch.Tensor, drop: float) -> torch.Tensor:
    """Mean-pooled features ``[B, D]``; with ``drop > 0`` only a random subset of tokens is fed
    to the encoder (DropToken, VATT)."""
    if drop <= 0:
        return encoder(x)
    n = math.prod(encoder.grid_size(x.shape))
    keep, _, _ = random_masking(x.shape[0], n, drop, x.device)  # keep [B, N_keep]
    return encoder(x, keep)


class AVContrastive(AVObjective):
    """Audio-video contrastive objective: VATT (batch negatives) or AVID (memory bank).

    Papers: VATT https://arxiv.org/abs/2104.11178, AVID https://arxiv.org/abs/2004.12943.

    Args:
        size, depth, patch_size, tubelet_size: encoder architecture (see ``AudioViT``/``VideoViT``).
        audio_frames, num_mel_bins, num_frames, img_size: default input sizes (cache/export).
        proj_dim: width of the common space (VATT: 512 for audio-video).
        proj_hidden_dim: hidden width of the projection MLPs (0 = linear heads); ``heads="mlp"``.
        heads: "mlp" = the same head for both modalities (``proj_hidden_dim``); "fac" = MMV's
            FAC audio-video heads as VATT has them: video Linear-BN-ReLU-Linear-BN
            (:func:`fac_video_head`), audio one Linear (needs >= 2 samples per device batch);
            "avid" = AVID's heads on both modalities (:func:`avid_head`, ``proj_hidden_dim``
            wide).
        temperature: NCE temperature (0.07, VATT and AVID); initial value when learnable.
        learnable_temperature: learn ``log(1/T)`` (CLIP style), T clamped to >= 0.01.
        drop_token: fraction of input tokens dropped before the encoders in training (VATT: 0.5).
        intra_weight: weight of audio-audio and video-video terms between the first two clips of
            a sample (needs ``clips_per_video >= 2`` in the data); 0 = off.
        gather_negatives: batch mode: negatives from every rank.
        memory_bank: False = VATT batch NCE; True = AVID memory-bank NCE.
        bank_negatives: negatives drawn from the bank per anchor (AVID: 1024).
        bank_momentum: memory update momentum (AVID: 0.5).
        cross_weight, within_weight: memory-bank mode: weights of AVID's cross-modal and
            within-modal terms, normalised by their sum (Cross-AVID 1 / 0, Self-AVID 0 / 1,
            Joint-AVID 1 / 1).
        clip_positives: batch mode with K > 1 clips per sample (``clips_per_video``): "slot" =
            clip k of the audio pairs with clip k of the video only (one NCE per clip slot);
            "mil" = every audio clip has all K video clips of its sample as positives and vice
            versa (MIL-NCE, Miech et al. 2020, https://arxiv.org/abs/1912.06430; the
            several-positives case of DESIGN section 4); same loss when K = 1.
        directions: batch mode: how each symmetric NCE combines its two directions (audio
            anchors against video candidates and the reverse), "mean" or "sum" (VATT's
            ``SymmetricNCE`` adds them: twice the mean, the same gradients up to that factor).
        **kwargs: optimisation settings of :class:`~avssl.objectives.base.AVObjective`.
    """

    def __init__(
        self,
        size: str = "base",
        depth: int | None = None,
        patch_size: int = 16,
        tubelet_size: int = 2,
        audio_frames: int = 1024,
        num_mel_bins: int = 128,
        num_frames: int = 8,
        img_size: int = 224,
        proj_dim: int = 512,
        proj_hidden_dim: int = 2048,
        heads: str = "mlp",
        temperature: float = 0.07,
        learnable_temperature: bool = False,
        drop_token: float = 0.0,
        intra_weight: float = 0.0,
        gather_negatives: bool = True,
        memory_bank: bool = False,
        bank_negatives: int = 1024,
        bank_momentum: float = 0.5,
        cross_weight: float = 1.0,
        within_weight: float = 0.0,
        clip_positives: str = "slot",
        directions: str = "mean",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if directions not in ("mean", "sum"):
            raise ValueError(f"directions must be 'mean' or 'sum', got {directions!r}")
        if directions == "sum" and memory_bank:
            raise ValueError("directions: sum is a batch-mode option (memory_bank: false)")
        self.direction_scale = 2.0 if directions == "sum" else 1.0
        if clip_positives not in ("slot", "mil"):
            raise ValueError(f"clip_positives must be 'slot' or 'mil', got {clip_positives!r}")
        if clip_positives == "mil" and memory_bank:
            raise ValueError("clip_positives: mil is a batch-mode option (memory_bank: false)")
        self.clip_positives = clip_positives
        if not 0.0 <= drop_token < 1.0:
            raise ValueError(f"drop_token must be in [0, 1), got {drop_token}")
        if min(cross_weight, within_weight) < 0 or cross_weight + within_weight <= 0:
            raise ValueError(
                "cross_weight and within_weight must be >= 0 with a positive sum, got "
                f"{cross_weight} and {within_weight}"
            )
        if not memory_bank and (cross_weight, within_weight) != (1.0, 0.0):
            raise ValueError(
                "cross_weight and within_weight weigh AVID's memory-bank terms (memory_bank: "
                "true); batch mode has intra_weight for within-modal terms"
            )
        self.audio_encoder, self.video_encoder = build_encoders(dict(self.hparams))
        if heads not in HEADS:
            raise ValueError(f"heads must be one of {', '.join(HEADS)}, got {heads!r}")
        dim = self.audio_encoder.embed_dim
        self.heads = heads
        if heads == "fac":
            self.audio_proj: nn.Module = nn.Linear(dim, proj_dim)
            self.video_proj: nn.Module = fac_video_head(dim, proj_dim)
        elif heads == "avid":
            if proj_hidden_dim <= 0:
                raise ValueError(f"heads: avid needs proj_hidden_dim > 0, got {proj_hidden_dim}")
            self.audio_proj = avid_head(dim, proj_hidden_dim, proj_dim)
            self.video_proj = avid_head(dim, proj_hidden_dim, proj_dim)
        else:
            self.audio_proj = projection_head(dim, proj_hidden_dim, proj_dim)
            self.video_proj = projection_head(dim, proj_hidden_dim, proj_dim)
        log_inv_t = torch.tensor(math.log(1.0 / temperature))
        if learnable_temperature:
            self.log_inv_temp = nn.Parameter(log_inv_t)
        else:
            self.register_buffer("log_inv_temp", log_inv_t)
        self.drop_token, self.intra_weight = drop_token, intra_weight
        self.gather_negatives, self.memory_bank = gather_negatives, memory_bank
        self.bank_negatives, self.bank_momentum = bank_negatives, bank_momentum
        total = cross_weight + within_weight
        self.bank_weights = (cross_weight / total, within_weight / total)
        self.bank_index: dict[str, int] = {}  # sample key -> bank row
        self.bank: dict[str, torch.Tensor] = {}  # modality -> [rows, proj_dim], L2-normalised
        self.bank_valid: dict[str, torch.Tensor] = {}  # modality -> [rows] bool: holds a memory
        self._bank_pending: tuple | None = None  # the last training batch's update (staged)

    def temperature(self) -> torch.Tensor:
        """Current temperature (a tensor; learnable when so configured), clamped to >= 0.01."""
        return 1.0 / self.log_inv_temp.exp().clamp(max=100.0)

    def embed(self, audio: torch.Tensor, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected features ``([B, P], [B, P])`` (DropToken only while training)."""
        drop = self.drop_token if self.training else 0.0
        za = self.audio_proj(pooled(self.audio_encoder, audio, drop))
        zv = self.video_proj(pooled(self.video_encoder, video, drop))
        return za, zv

    def compute_losses(self, batch: AVBatch) -> dict[str, torch.Tensor]:
        if self.heads == "fac" and self.training and len(batch) < 2:
            raise ValueError(
                "AVContrastive with heads: fac needs at least 2 samples per batch on each device "
                "(batch norm in the video head); raise data.init_args.batch_size"
            )
        audio, video, a_ok, v_ok = flatten_inputs(batch)
        k = batch.audio.shape[1] if batch.audio.ndim == 5 else 1
        za, zv = self.embed(audio, video)  # [B K, P] each
        za, zv = za.reshape(-1, k, za.shape[-1]), zv.reshape(-1, k, zv.shape[-1])  # [B, K, P]
        a_ok, v_ok = a_ok.reshape(-1, k), v_ok.reshape(-1, k)  # [B, K]
        t: Any = self.temperature()  # a tensor: learnable temperatures get gradients
        # [B] video ids for the terms with batch negatives: twins of one video are no negatives
        batch_terms = not self.memory_bank or self.intra_weight > 0
        ids = key_ids(batch.key, device=za.device) if batch_terms else None
        if self.memory_bank:
            losses = self._bank_losses(batch.key, za[:, 0], zv[:, 0], a_ok[:, 0], v_ok[:, 0], t)
        elif self.clip_positives == "mil" and k > 1:
            valid, g = a_ok[:, 0] * v_ok[:, 0], self.gather_negatives
            av = [mil_nce(zv, za[:, i], t, False, g, valid, ids) for i in range(k)]  # audio
            av += [mil_nce(za, zv[:, i], t, False, g, valid, ids) for i in range(k)]  # video
            losses = {"nce_av": torch.stack(av).mean() * self.direction_scale}
        else:
            av = [
                masked_info_nce(
                    za[:, i], zv[:, i], a_ok[:, i] * v_ok[:, i], t, self.gather_negatives, ids
                )
                for i in range(k)
            ]  # one term per clip slot: clips of one sample are never each other's negatives
            losses = {"nce_av": torch.stack(av).mean() * self.direction_scale}
        total = losses.pop("bank_loss", losses["nce_av"])
        if self.intra_weight > 0:
            if k < 2:
                raise ValueError(
                    "AVContrastive: intra_weight > 0 needs 2 clips per sample "
                    "(set data.init_args.clips_per_video: 2)"
                )
            g, d = self.gather_negatives, self.direction_scale
            aa_ok, vv_ok = a_ok[:, 0] * a_ok[:, 1], v_ok[:, 0] * v_ok[:, 1]
            losses["nce_aa"] = d * masked_info_nce(za[:, 0], za[:, 1], aa_ok, t, g, ids)
            losses["nce_vv"] = d * masked_info_nce(zv[:, 0], zv[:, 1], vv_ok, t, g, ids)
            total = total + self.intra_weight * (losses["nce_aa"] + losses["nce_vv"])
        losses["temperature"] = t.detach()
        losses["loss"] = total
        return losses

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

    def export_heads(self) -> dict[str, Any] | None:
        """The two projection heads, unless only within-modal terms trained them (Self-AVID)."""
        if self.memory_bank and self.bank_weights[0] == 0:
            return None
        kind = "AVID cross-modal memory NCE" if self.memory_bank else "VATT-style audio-video NCE"
        return {"audio": self.audio_proj, "video": self.video_proj, "space": kind}

    def export_encoders(self) -> dict[str, Any]:
        kind = "AVID memory-bank NCE" if self.memory_bank else "VATT-style audio-video NCE"
        note = f"{kind}: the trained audio/video encoders"
        return {
            "audio": self.audio_encoder,
            "video": self.video_encoder,
            "which": "online",
            "note": note,
        }
