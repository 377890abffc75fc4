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

AVID memory bank, as implemented (methods in :mod:`avssl.objectives._avid_memory`, parts in
:mod:`avssl.objectives._memory_bank`): one entry per *training sample*, found by its sample key
through a key -> row table that grows lazily (a new key gets the next row, initialised with its
current feature); negatives are drawn uniformly with replacement from the rows filled so far, so
early on (or on a small dataset) a negative can repeat. A row holds a memory of a modality only once
a clip of the sample *with* that modality was trained on: a clip without audio writes no audio
memory (the loader's all-zero fbank is no sound), and rows without one are left out of the
negatives. The update of a batch (new keys, new and moved memories) is staged and committed only
when its loss is finite (``commit_state``), so a skipped batch leaves the bank as it was. Under DDP,
keys and features of every rank are all-gathered before the bank update so that all ranks hold the
same bank. The table, the banks and their validity flags are saved in the checkpoint
(``checkpoint["avid_bank"]``) and restored on resume. A FIFO queue (MoCo) would be smaller but would
not keep AVID's per-sample positive memory.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from avssl.data.batch import AVBatch
from avssl.losses.contrastive import key_ids, mil_nce
from avssl.objectives._avid_memory import MemoryBankMixin
from avssl.objectives._contrastive_heads import audio_video_heads, pooled
from avssl.objectives._mavil_parts import build_encoders, flatten_inputs, masked_info_nce
from avssl.objectives.base import AVObjective


class AVContrastive(MemoryBankMixin, AVObjective):
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
        _check_options(
            directions, clip_positives, memory_bank, drop_token, cross_weight, within_weight
        )
        self.direction_scale = 2.0 if directions == "sum" else 1.0
        self.clip_positives = clip_positives
        self.audio_encoder, self.video_encoder = build_encoders(dict(self.hparams))
        self.heads = heads
        self.audio_proj, self.video_proj = audio_video_heads(
            heads, self.audio_encoder.embed_dim, proj_hidden_dim, proj_dim
        )
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
        else:
            losses = {"nce_av": self._batch_nce(za, zv, a_ok * v_ok, t, ids)}
        total = losses.pop("bank_loss", losses["nce_av"])
        if self.intra_weight > 0:
            losses.update(self._within_nce(za, zv, a_ok, v_ok, t, ids))
            total = total + self.intra_weight * (losses["nce_aa"] + losses["nce_vv"])
        losses["temperature"] = t.detach()
        losses["loss"] = total
        return losses

    def _batch_nce(
        self, za: torch.Tensor, zv: torch.Tensor, ok: torch.Tensor, t: Any, ids: Any
    ) -> torch.Tensor:
        """Batch-mode audio-video NCE of ``[B, K, P]`` features (``ok`` ``[B, K]``: both
        modalities present): MIL-NCE over the K clips, or one term per clip slot, so that clips
        of one sample are never each other's negatives."""
        k, g = za.shape[1], self.gather_negatives
        if self.clip_positives == "mil" and k > 1:
            valid = ok[:, 0]
            av = [mil_nce(zv, za[:, i], t, False, g, valid, ids) for i in range(k)]  # audio
            av += [mil_nce(za, zv[:, i], t, False, g, valid, ids) for i in range(k)]  # video
        else:
            av = [masked_info_nce(za[:, i], zv[:, i], ok[:, i], t, g, ids) for i in range(k)]
        return torch.stack(av).mean() * self.direction_scale

    def _within_nce(self, za, zv, a_ok, v_ok, t: Any, ids: Any) -> dict[str, torch.Tensor]:
        """Within-modal NCE between a sample's first two clips (``[B, K, P]`` features)."""
        if za.shape[1] < 2:
            raise ValueError(
                "AVContrastive: intra_weight > 0 needs 2 clips per sample "
                "(set data.init_args.clips_per_video: 2)"
            )
        g, d = self.gather_negatives, self.direction_scale
        aa_ok, vv_ok = a_ok[:, 0] * a_ok[:, 1], v_ok[:, 0] * v_ok[:, 1]
        return {
            "nce_aa": d * masked_info_nce(za[:, 0], za[:, 1], aa_ok, t, g, ids),
            "nce_vv": d * masked_info_nce(zv[:, 0], zv[:, 1], vv_ok, t, g, ids),
        }

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


def _check_options(
    directions: str,
    clip_positives: str,
    memory_bank: bool,
    drop_token: float,
    cross_weight: float,
    within_weight: float,
) -> None:
    """A ValueError naming the option for a value :class:`AVContrastive` cannot use, or a
    batch-mode option with the memory bank (and AVID's bank weights without it)."""
    if directions not in ("mean", "sum"):
        raise ValueError(f"directions must be 'mean' or 'sum', got {directions!r}")
    if directions == "sum" and memory_bank:
        raise ValueError("directions: sum is a batch-mode option (memory_bank: false)")
    if clip_positives not in ("slot", "mil"):
        raise ValueError(f"clip_positives must be 'slot' or 'mil', got {clip_positives!r}")
    if clip_positives == "mil" and memory_bank:
        raise ValueError("clip_positives: mil is a batch-mode option (memory_bank: false)")
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
