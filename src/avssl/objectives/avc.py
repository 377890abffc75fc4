"""Audio-visual correspondence (AVC): does this audio belong to this video?

L3-Net (Arandjelovic & Zisserman 2017, "Look, Listen and Learn", https://arxiv.org/abs/1705.08168)
trains an audio and a video network from scratch on a binary task: the fused embeddings of a
(video, audio) pair are classified as corresponding (same video, same time) or not (audio of
another video). "Objects that Sound" (https://arxiv.org/abs/1712.06651) keeps the task. Here:
ViT encoders, mean-pooled; fusion head ``concat -> Linear -> ReLU -> Linear -> 2 logits`` as
L3-Net's fusion layers (128 hidden units); cross-entropy.

Negatives come from the loader (``data.init_args.audio_mode: mismatched`` swaps the audio of
``mismatch_prob`` of the samples with that of another video and sets
``AVBatch.audio_mismatched``), or, with ``negatives: batch``, from the batch itself: every sample
is used twice, once with its own audio and once with the audio of the next sample (no extra
decoding, exactly half negatives).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from avssl.data.batch import AVBatch
from avssl.objectives._mavil_parts import build_encoders, flatten_inputs
from avssl.objectives.base import AVObjective


class AVC(AVObjective):
    """Audio-visual correspondence objective (paper: https://arxiv.org/abs/1705.08168).

    Args:
        size, depth, patch_size, tubelet_size: encoder architecture.
        audio_frames, num_mel_bins, num_frames, img_size: default input sizes.
        fusion_hidden_dim: hidden units of the fusion classifier (L3-Net: 128).
        negatives: "loader" (``audio_mode: mismatched`` flags) or "batch" (rolled audio).
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
        fusion_hidden_dim: int = 128,
        negatives: str = "loader",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if negatives not in ("loader", "batch"):
            raise ValueError(f"AVC negatives must be 'loader' or 'batch', got {negatives!r}")
        self.audio_encoder, self.video_encoder = build_encoders(dict(self.hparams))
        dim = self.audio_encoder.embed_dim
        self.fusion = nn.Sequential(
            nn.Linear(2 * dim, fusion_hidden_dim), nn.ReLU(), nn.Linear(fusion_hidden_dim, 2)
        )
        self.negatives = negatives

    def correspondence_logits(self, fa: torch.Tensor, fv: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, 2]`` (index 1 = corresponding) from pooled features ``[B, D]``."""
        return self.fusion(torch.cat([fa, fv], dim=-1))

    def _pairs(self, batch: AVBatch, fa, fv, a_ok, v_ok):
        """(audio features, video features, target 1=corresponds, valid) of the scored pairs."""
        k = len(fa) // len(batch)
        if self.negatives == "batch":
            other = torch.roll(torch.arange(len(batch)), 1)  # [B] the sample whose audio
            shift = other.repeat_interleave(k) * k + torch.arange(len(fa)) % k  # same clip slot
            fa2, ok2 = fa[shift], a_ok[shift]
            # a negative from the same video (a batch of 1, a key drawn twice) is no negative
            apart = torch.tensor([batch.key[int(j)] != key for j, key in zip(other, batch.key)])
            ok2 = ok2 * apart.repeat_interleave(k).to(ok2)
            target = torch.cat([torch.ones(len(fa)), torch.zeros(len(fa))]).long()
            valid = torch.cat([a_ok * v_ok, ok2 * v_ok])
            return torch.cat([fa, fa2]), torch.cat([fv, fv]), target.to(fa.device), valid
        if batch.audio_mismatched is None:
            raise ValueError(
                "AVC with negatives='loader' needs data.init_args.audio_mode: mismatched "
                "(or set model.init_args.negatives: batch)"
            )
        swapped = batch.audio_mismatched.to(fa.device).repeat_interleave(k)
        return fa, fv, (~swapped.bool()).long(), a_ok * v_ok

    def compute_losses(self, batch: AVBatch) -> dict[str, torch.Tensor]:
        audio, video, a_ok, v_ok = flatten_inputs(batch)
        fa, fv = self.audio_encoder(audio), self.video_encoder(video)  # [B K, D] each
        fa, fv, target, valid = self._pairs(batch, fa, fv, a_ok, v_ok)
        logits = self.correspondence_logits(fa, fv)  # [N, 2]
        per_pair = F.cross_entropy(logits.float(), target, reduction="none")  # [N]
        loss = (per_pair * valid).sum() / valid.sum().clamp_min(1.0)
        correct = ((logits.argmax(-1) == target).float() * valid).sum()
        return {
            "avc_ce": loss,
            "avc_accuracy": correct / valid.sum().clamp_min(1.0),
            "positive_fraction": (target.float() * valid).sum() / valid.sum().clamp_min(1.0),
            "loss": loss,
        }

    def export_encoders(self) -> dict[str, Any]:
        note = "AVC (L3-Net task) audio/video encoders; fusion classifier not exported"
        return {
            "audio": self.audio_encoder,
            "video": self.video_encoder,
            "which": "online",
            "note": note,
        }
