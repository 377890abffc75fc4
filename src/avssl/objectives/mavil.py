"""MAViL: Masked Audio-Video Learners (Huang et al. 2022, https://arxiv.org/abs/2212.08071).

Model (paper Sec. 3): an audio ViT on the fbank (16x16 patches) and a video ViT (2x16x16
tubelets) encode the *visible* tokens; joint fusion layers attend over the concatenated audio and
video tokens; one light decoder per modality predicts the masked tokens. A clip missing a
modality (``AVBatch.audio_mask`` / ``video_mask``) is excluded from that modality's losses, and
its placeholder tokens are no keys of the fusion layers and send no gradient to their encoder
(:class:`~avssl.models.fusion.JointFusion`); a batch whose clips all have both modalities runs
the fusion without any attention mask.

Stage 1 (Sec. 3.1-3.2):
- masked reconstruction of the raw inputs: MSE on the masked patches with per-patch normalised
  targets (norm-pix, as MAE/AudioMAE/VideoMAE), mask ratio 0.8 for audio (random) and 0.9 for
  video (tube masking, VideoMAE);
- inter-modal contrast: InfoNCE between the projected, mean-pooled *encoder* outputs of audio
  and video of the masked views, both directions, negatives gathered across ranks;
- intra-modal contrast: InfoNCE between two independently masked views of the same modality
  (the second view only runs the encoder).
Stage 2 (Sec. 3.3, self-training): a frozen stage-1 teacher sees the unmasked inputs; its
contextualised joint features (fusion-layer outputs) are the targets, normalised per token, that
the student's decoders predict at the masked positions.

Where we chose (the paper text available to us does not pin these down): the contrastive loss
weights and temperatures (defaults below, recipes say where they come from), the projection
heads (one linear layer per modality and term), and that stage 2 keeps the contrastive terms
(set their weights to 0 for pure feature reconstruction).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from avssl.data.batch import AVBatch
from avssl.losses.contrastive import key_ids
from avssl.losses.reconstruction import masked_mse
from avssl.models.decoder import TransformerDecoder
from avssl.models.masking import check_ratio, random_masking, tube_masking
from avssl.objectives import _mavil_parts as parts
from avssl.objectives.base import AVObjective


class MAViL(AVObjective):
    """MAViL objective, stage 1 or stage 2 (paper: https://arxiv.org/abs/2212.08071).

    Args:
        size: encoder size ``tiny``/``small``/``base``/``large`` (MAViL: base).
        depth: encoder depth override (debug); also caps the decoder depth when that is None.
        patch_size: spectrogram patch / tubelet side (16).
        tubelet_size: frames per video tubelet (2).
        audio_frames, num_mel_bins, num_frames, img_size: default input sizes (position-table
            cache and exported config; other sizes work).
        fusion_depth: joint audio-video layers after the encoders.
        decoder_dim, decoder_depth, decoder_heads: decoder settings (None: follow ``size``).
        mask_ratio_audio: fraction of audio patches masked (0.8, AudioMAE).
        mask_ratio_video: fraction of video tubes masked (0.9, VideoMAE).
        norm_pix_loss: per-patch normalised pixel targets in stage 1.
        inter_weight, intra_weight: weights of the inter-/intra-modal InfoNCE terms (0 = off).
        inter_temperature, intra_temperature: InfoNCE temperatures.
        proj_dim: width of the contrastive projection heads.
        gather_negatives: use negatives from every rank in the contrastive terms.
        stage: 1 (raw-input reconstruction) or 2 (self-training on teacher features).
        teacher_ckpt: stage-1 checkpoint for stage 2 (read with ``weights_only=True``).
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
        fusion_depth: int = 2,
        decoder_dim: int | None = None,
        decoder_depth: int | None = None,
        decoder_heads: int | None = None,
        mask_ratio_audio: float = 0.8,
        mask_ratio_video: float = 0.9,
        norm_pix_loss: bool = True,
        inter_weight: float = 0.01,
        intra_weight: float = 0.01,
        inter_temperature: float = 0.1,
        intra_temperature: float = 0.1,
        proj_dim: int = 256,
        gather_negatives: bool = True,
        stage: int = 1,
        teacher_ckpt: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if stage not in (1, 2):
            raise ValueError(f"MAViL stage must be 1 or 2, got {stage}")
        if stage == 2 and not teacher_ckpt:
            raise ValueError("MAViL stage 2 needs model.init_args.teacher_ckpt (a stage-1 ckpt)")
        hp = dict(self.hparams)
        backbone = parts.Backbone(hp)
        self.audio_encoder = backbone.audio
        self.video_encoder = backbone.video
        self.fusion = backbone.fusion
        # the ratios leave visible tokens on the usual grids (raises here, not at the first step)
        check_ratio("mask_ratio_audio", math.prod(backbone.audio.default_grid), mask_ratio_audio)
        tubes = math.prod(backbone.video.default_grid[1:])  # spatial positions
        check_ratio("mask_ratio_video", tubes, mask_ratio_video)
        self.audio_decoder, self.video_decoder = self._decoders(hp)
        self.proj = parts.projection_heads(
            self.audio_encoder.embed_dim, proj_dim, inter_weight, intra_weight
        )
        self.stage, self.teacher_ckpt = stage, teacher_ckpt
        self.mask_ratio_audio, self.mask_ratio_video = mask_ratio_audio, mask_ratio_video
        self.norm_pix_loss = norm_pix_loss
        self.inter_weight, self.intra_weight = inter_weight, intra_weight
        self.inter_temperature, self.intra_temperature = inter_temperature, intra_temperature
        self.gather_negatives = gather_negatives
        self.teacher: parts.Backbone | None = None
        self.teacher_loaded: torch.Tensor
        self.register_buffer("teacher_loaded", torch.zeros((), dtype=torch.long))
        if stage == 2 and teacher_ckpt:
            # the teacher's architecture is the student's (load_teacher checks the file's)
            self.teacher = parts.Backbone(hp).requires_grad_(False).eval()
            from avssl.export_ckpt import rebuilding_from_checkpoint

            if not rebuilding_from_checkpoint():  # export/eval: teacher.* of the checkpoint
                self.load_teacher(teacher_ckpt, missing_ok=True)

    def _decoders(self, hp: dict[str, Any]) -> tuple[TransformerDecoder, TransformerDecoder]:
        """Per-modality decoders: patches (stage 1) or teacher features of width D (stage 2)."""
        dim = self.audio_encoder.embed_dim
        width, depth, heads = parts.decoder_dims(hp)
        out_a = self.audio_encoder.patch_dim if hp["stage"] == 1 else dim
        out_v = self.video_encoder.patch_dim if hp["stage"] == 1 else dim
        grid_a, grid_v = self.audio_encoder.default_grid, self.video_encoder.default_grid
        return (
            TransformerDecoder(dim, out_a, width, depth, heads, grid=grid_a),
            TransformerDecoder(dim, out_v, width, depth, heads, grid=grid_v),
        )

    # ----------------------------------------------------------------- teacher (stage 2)
    def load_teacher(self, path: str, missing_ok: bool = False) -> bool:
        """Loads the frozen stage-1 teacher; with ``missing_ok`` a missing file is deferred
        (training checks in ``on_fit_start``; a resumed run's checkpoint holds the teacher).
        Rebuilding a stage-2 checkpoint for export or evaluation
        (``avssl.export_ckpt.rebuilding_from_checkpoint``) reads no teacher file: the
        checkpoint's own ``teacher.*`` fill the teacher."""
        if self.teacher is None:
            raise ValueError("MAViL.load_teacher: only stage 2 has a teacher")
        try:
            parts.load_teacher(self.teacher, path, dict(self.hparams))
        except FileNotFoundError:
            if not missing_ok:
                raise
            return False
        self.teacher_loaded.fill_(1)
        return True

    def check_before_fit(self, resuming: bool) -> None:
        if self.stage == 2 and int(self.teacher_loaded) == 0 and not resuming:
            raise ValueError(
                f"MAViL stage 2: teacher_ckpt {self.teacher_ckpt}: file not found; pass a "
                "stage-1 MAViL checkpoint (model.init_args.teacher_ckpt)"
            )

    def on_fit_start(self) -> None:
        if self.stage == 2 and int(self.teacher_loaded) == 0:
            raise RuntimeError(
                f"MAViL stage 2: teacher_ckpt {self.teacher_ckpt} was not found and no resumed "
                "checkpoint provided the teacher; pass a stage-1 checkpoint"
            )
        super().on_fit_start()

    def train(self, mode: bool = True) -> MAViL:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # frozen: always in eval mode
        return self

    @torch.no_grad()
    def teacher_targets(
        self, audio: torch.Tensor, video: torch.Tensor, oks: parts.Oks = (None, None)
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher's fusion outputs on the unmasked inputs: ``([B, Na, D], [B, Nv, D])``;
        ``oks``: ``(audio_ok, video_ok)`` of the fusion's key mask (:func:`parts.fusion_masks`)."""
        if self.teacher is None:
            raise RuntimeError("MAViL stage 1 has no teacher")
        return self.teacher(audio, video, *oks)

    # ----------------------------------------------------------------- forward
    def _mask(self, audio: torch.Tensor, video: torch.Tensor) -> dict[str, Any]:
        B, dev = audio.shape[0], audio.device
        ga = self.audio_encoder.grid_size(audio.shape)
        gv = self.video_encoder.grid_size(video.shape)
        keep_a, mask_a, restore_a = random_masking(B, math.prod(ga), self.mask_ratio_audio, dev)
        keep_v, mask_v, restore_v = tube_masking(B, gv, self.mask_ratio_video, dev)
        return {
            "grid_a": ga, "keep_a": keep_a, "mask_a": mask_a, "restore_a": restore_a,
            "grid_v": gv, "keep_v": keep_v, "mask_v": mask_v, "restore_v": restore_v,
        }  # fmt: skip

    def _forward(self, audio: torch.Tensor, video: torch.Tensor, m: dict[str, Any], oks: parts.Oks):
        """Encoders on the visible tokens, joint fusion (a missing modality's tokens are no
        keys: ``oks`` = ``(audio_ok, video_ok)`` or Nones), decoders over all positions."""
        za = self.audio_encoder.forward_features(audio, m["keep_a"])  # [B, Na_keep, D]
        zv = self.video_encoder.forward_features(video, m["keep_v"])  # [B, Nv_keep, D]
        fa, fv = self.fusion(za, zv, *oks)
        pred_a = self.audio_decoder(fa, m["restore_a"], m["grid_a"])  # [B, Na, P or D]
        pred_v = self.video_decoder(fv, m["restore_v"], m["grid_v"])  # [B, Nv, P or D]
        return za, zv, pred_a, pred_v

    def compute_losses(self, batch: AVBatch) -> dict[str, torch.Tensor]:
        audio, video, a_ok, v_ok = parts.flatten_inputs(batch)
        oks = parts.fusion_masks(batch, a_ok, v_ok)  # (None, None): every clip has both
        m = self._mask(audio, video)
        za, zv, pred_a, pred_v = self._forward(audio, video, m, oks)
        if self.stage == 1:
            target_a = self.audio_encoder.patchify(audio)  # [B, Na, P]
            target_v = self.video_encoder.patchify(video)  # [B, Nv, P]
            norm = self.norm_pix_loss
        else:
            target_a, target_v = self.teacher_targets(audio, video, oks)  # [B, N, D]
            norm = True  # per-token normalised teacher features
        losses = {
            "recon_audio": masked_mse(pred_a, target_a, m["mask_a"] * a_ok[:, None], norm),
            "recon_video": masked_mse(pred_v, target_v, m["mask_v"] * v_ok[:, None], norm),
        }
        total = losses["recon_audio"] + losses["recon_video"]
        gather = self.gather_negatives
        ids = None  # [B K] video ids of the contrastive terms (twins are no negatives)
        if self.inter_weight > 0 or self.intra_weight > 0:
            ids = key_ids(batch.key, len(audio) // len(batch), audio.device)
        if self.inter_weight > 0:
            qa = self.proj["inter_audio"](za.mean(dim=1))  # [B, E]
            qv = self.proj["inter_video"](zv.mean(dim=1))
            losses["inter"] = parts.masked_info_nce(
                qa, qv, a_ok * v_ok, self.inter_temperature, gather, ids
            )
            total = total + self.inter_weight * losses["inter"]
        if self.intra_weight > 0:
            intra = self._intra_losses(audio, video, za, zv, a_ok, v_ok, ids)
            losses.update(intra)
            total = total + self.intra_weight * (intra["intra_audio"] + intra["intra_video"])
        losses["loss"] = total
        return losses

    def _intra_losses(self, audio, video, za, zv, a_ok, v_ok, ids) -> dict[str, torch.Tensor]:
        """InfoNCE between the pooled encodings of two independently masked views."""
        m2 = self._mask(audio, video)
        za2 = self.audio_encoder.forward_features(audio, m2["keep_a"])  # [B, Na_keep, D]
        zv2 = self.video_encoder.forward_features(video, m2["keep_v"])  # [B, Nv_keep, D]
        pa, pv = self.proj["intra_audio"], self.proj["intra_video"]
        t, gather = self.intra_temperature, self.gather_negatives
        return {
            "intra_audio": parts.masked_info_nce(
                pa(za.mean(dim=1)), pa(za2.mean(dim=1)), a_ok, t, gather, ids
            ),
            "intra_video": parts.masked_info_nce(
                pv(zv.mean(dim=1)), pv(zv2.mean(dim=1)), v_ok, t, gather, ids
            ),
        }

    # ----------------------------------------------------------------- export, figures
    def export_heads(self) -> dict[str, Any] | None:
        """The inter-modal InfoNCE's linear heads (None when ``inter_weight`` is 0)."""
        if "inter_audio" not in self.proj:
            return None
        space = f"MAViL inter-modal InfoNCE (stage {self.stage})"
        return {
            "audio": self.proj["inter_audio"],
            "video": self.proj["inter_video"],
            "space": space,
        }

    def export_encoders(self) -> dict[str, Any]:
        which = "student"
        note = "MAViL stage 1 audio/video encoders (fusion and decoders not exported)"
        if self.stage == 2:
            note = "MAViL stage 2: the self-trained student's encoders (not the frozen teacher)"
        return {
            "audio": self.audio_encoder,
            "video": self.video_encoder,
            "which": which,
            "note": note,
        }

    @torch.no_grad()
    def visualize(self, batch: AVBatch) -> dict[str, torch.Tensor]:
        """Input | masked | reconstruction of the first sample (stage 2: per-token error)."""
        audio, video, a_ok, v_ok = parts.flatten_inputs(batch)
        audio, video = audio[:1], video[:1]
        oa, ov = parts.fusion_masks(batch, a_ok, v_ok)
        oks = (None if oa is None else oa[:1], None if ov is None else ov[:1])
        m = self._mask(audio, video)
        _, _, pred_a, pred_v = self._forward(audio, video, m, oks)
        if self.stage == 1:
            rec_a, rec_v = pred_a[0], pred_v[0]
        else:
            ta, tv = self.teacher_targets(audio, video, oks)
            rec_a = masked_mse_per_token(pred_a, ta)[0]
            rec_v = masked_mse_per_token(pred_v, tv)[0]
        pixel = self.stage == 1
        return {
            "audio": parts.figures(
                self.audio_encoder, audio, m["mask_a"][0], rec_a, m["grid_a"], pixel
            ),
            "video": parts.figures(
                self.video_encoder, video, m["mask_v"][0], rec_v, m["grid_v"], pixel
            ),
        }


def masked_mse_per_token(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-token squared error ``[B, N]`` against per-token normalised targets."""
    from avssl.losses.reconstruction import normalize_patches

    return (pred.float() - normalize_patches(target.float())).pow(2).mean(dim=-1)
