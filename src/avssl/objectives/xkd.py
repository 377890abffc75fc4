"""XKD: cross-modal knowledge distillation with domain alignment (Sarkar & Etemad 2022).

Paper: https://arxiv.org/abs/2211.13929. Per modality a student ViT learns by masked
reconstruction (norm-pix MSE on the masked patches, mask 0.85 video / 0.80 audio, uniform random
masking as the reference config) and an EMA teacher of it (momentum cosine-scheduled from 0.997
to 1 over training) sees the unmasked input. Cross-modal distillation: the *video* teacher's
centred, sharpened distribution is the target of the *audio* student and vice versa (DINO
cross-entropy, https://arxiv.org/abs/2104.14294; teacher T 0.1 video / 0.07 audio, student T
0.1, centre momentum 0.9). The student's global feature is the mean of its masked-encoder tokens,
as in the reference code. Domain alignment: MMD (sum of Gaussian kernels) between the audio and
video students' head outputs, averaged with the same gap between the teachers' head outputs
(as the reference code; the teachers' term carries no gradient, so the students' gap enters at
weight 1/2) (CORAL by option). Loss ``(5 recon + 1 kd + 1 align) / 7``.
The modality-agnostic variant (``shared_backbone: true``) shares the transformer blocks and final
norm of the audio and video students (patch embeddings, decoders and heads stay per modality).

The recipes clip each gradient tensor of the students' encoders and heads to norm 0.3 as the
reference does (DINO's per-parameter clipping, ``clip_grad_per_param`` of
:class:`~avssl.objectives.base.AVObjective`, over :meth:`XKD.clip_params`; the decoders are
not clipped, as in XKD's ``clip_gradients``).
Local views (``local_views: true``, the recipes): as the reference code, the teachers see a
*local* view of each clip (a quarter of its duration, a small crop of the frame with its own
colour and volume jitter, made by the loader; see :mod:`avssl.objectives._xkd_views`), the
students both the masked global view and the unmasked local view; each student view is
distilled towards the other modality's teacher (the two cross-entropies averaged) and the
students' alignment term takes both views. A local view's tokens take the encoder's
position table resized to their smaller grid (``pos_for_smaller_grid: interpolate``, as XKD's
``interpolate_pos_encoding`` and DINO's local crops), not the first positions of the clip's.
Teacher pooling (``teacher_pooling: attention``, the recipes): the teacher's tokens are weighted
by the attention they receive in its last block before the mean, as the reference code.
``align: coral`` is Deep CORAL (covariances only); ``align: mean_coral`` is the CORAL of XKD's
code (DomainBed's: the squared gaps of the means and of the covariances, each averaged).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from pytorch_lightning.utilities import rank_zero_info

from avssl.data.batch import AVBatch
from avssl.data.local_view import LocalViewSpec
from avssl.losses.reconstruction import masked_mse
from avssl.models.decoder import TransformerDecoder
from avssl.models.masking import check_ratio, random_masking
from avssl.objectives._mavil_parts import build_encoders, decoder_dims, flatten_inputs
from avssl.objectives._xkd_teacher import ALIGNS, DINOHead, XKDTeacherMixin
from avssl.objectives._xkd_views import (
    audio_resize_boxes,
    audio_resize_crop,
    blur_views,
    check_local_options,
    loader_spec,
    local_audio_view,
    local_video_view,
    whole_units,
)
from avssl.objectives.base import AVObjective


class XKD(XKDTeacherMixin, AVObjective):
    """XKD objective (paper: https://arxiv.org/abs/2211.13929).

    Args:
        size, depth, patch_size, tubelet_size: encoder architecture.
        audio_frames, num_mel_bins, num_frames, img_size: default input sizes.
        shared_backbone: modality-agnostic variant (one transformer for both modalities).
        decoder_dim, decoder_depth, decoder_heads: decoders (None: follow ``size``).
        mask_ratio_audio, mask_ratio_video: masked fraction (XKD: 0.80 and 0.85).
        norm_pix_loss: per-patch normalised reconstruction targets.
        head_hidden_dim, head_bottleneck_dim, head_out_dim: DINO heads (XKD: 2048, 256, 8192).
        head_norm: LayerNorms in the heads' hidden layers and on their outputs (XKD's
            projector ``norm3``; see :class:`DINOHead`). Off: DINO's head (plain cosines).
        teacher_temp_video, teacher_temp_audio, student_temp: distillation temperatures.
        center_momentum: EMA momentum of the teacher centres (0.9).
        ema_start, ema_end: teacher momentum, cosine schedule over the training steps.
        align: "mmd", "coral" or "mean_coral" domain alignment (see the module docstring).
        recon_weight, kd_weight, align_weight: loss weights (5:1:1), normalised by their sum.
        export_which: "teacher" or "student" encoders for export (see `export_encoders`).
        local_views: teachers on a local view, students on both views (XKD's code; see the
            module docstring). Off: teachers and students on the global view only.
        local_temporal_ratio: the local view's share of the frames is 1 / this (XKD: 4).
        local_spatial_ratio: local view side = global side / this (XKD: 1.16, 112 -> 96 px).
        local_crop_scale: area range of the local crop, a fraction of the frame (XKD:
            0.08-0.4; of the global view with ``local_source: device``).
        local_flip_p, local_grey_p, local_blur_p: the local view's flip, grey-scale and blur
            probabilities (XKD: 0.5, 0.2, 0.5).
        local_jitter, local_jitter_p, local_hue: the local view's own colour jitter
            (brightness, contrast, saturation factors in 1 +- jitter, hue in +- hue turns, with
            probability jitter_p; XKD: 0.4, every clip, 0.2); ``local_source: loader`` only.
        local_gain_db: the local audio's own volume jitter, uniform in +- this many dB (XKD:
            x U(0.8, 1.2), -1.9 to +1.6 dB); ``local_source: loader`` only.
        local_source: "loader" (the loader makes the local views from the decoded frames and
            audio; ``AVBatch.local``) or "device" (cut from the global view on the device,
            sharing its colour jitter and volume; also used for batches without local views).
        local_audio_resize: the local audio view also takes XKD's random time/frequency
            rescaling (BYOL-A's random resize crop; ``_xkd_views.audio_resize_crop``).
        teacher_pooling: "mean" of the teacher's tokens, or "attention"-weighted (XKD's code).
        pos_for_smaller_grid: position table of an input with a smaller token grid than the
            encoders' default (``num_frames``/``img_size``/``audio_frames``), e.g. the local
            views: "interpolate" (XKD's ``interpolate_pos_encoding``: the default grid's table
            resized trilinearly, so a local view spans the whole clip's positions) or "prefix"
            (the first positions of the default grid; see :class:`~avssl.models.vit.ViTEncoder`).
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
        shared_backbone: bool = False,
        decoder_dim: int | None = None,
        decoder_depth: int | None = None,
        decoder_heads: int | None = None,
        mask_ratio_audio: float = 0.80,
        mask_ratio_video: float = 0.85,
        norm_pix_loss: bool = True,
        head_hidden_dim: int = 2048,
        head_bottleneck_dim: int = 256,
        head_out_dim: int = 8192,
        head_norm: bool = False,
        teacher_temp_video: float = 0.1,
        teacher_temp_audio: float = 0.07,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
        ema_start: float = 0.997,
        ema_end: float = 1.0,
        align: str = "mmd",
        recon_weight: float = 5.0,
        kd_weight: float = 1.0,
        align_weight: float = 1.0,
        export_which: str = "teacher",
        local_views: bool = False,
        local_temporal_ratio: float = 4.0,
        local_spatial_ratio: float = 1.16,
        local_crop_scale: tuple[float, float] | list[float] = (0.08, 0.4),
        local_flip_p: float = 0.5,
        local_grey_p: float = 0.2,
        local_blur_p: float = 0.5,
        local_audio_resize: bool = False,
        local_jitter: float = 0.4,
        local_jitter_p: float = 1.0,
        local_hue: float = 0.2,
        local_gain_db: float = 1.9,
        local_source: str = "loader",
        teacher_pooling: str = "mean",
        pos_for_smaller_grid: str = "interpolate",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_local_options(
            local_temporal_ratio, local_spatial_ratio, local_crop_scale,
            (local_flip_p, local_grey_p, local_blur_p), teacher_pooling,
            (local_jitter, local_jitter_p, local_hue, local_gain_db), local_source,
        )  # fmt: skip
        if align not in ALIGNS:
            raise ValueError(f"XKD align must be one of {sorted(ALIGNS)}, got {align!r}")
        if export_which not in ("teacher", "student"):
            raise ValueError(
                f"XKD export_which must be 'teacher' or 'student', got {export_which!r}"
            )
        hp = dict(self.hparams)
        self.audio_encoder, self.video_encoder = build_encoders(hp)
        # the ratios leave visible tokens on the usual grids (raises here, not at the first step)
        check_ratio(
            "mask_ratio_audio", math.prod(self.audio_encoder.default_grid), mask_ratio_audio
        )
        check_ratio(
            "mask_ratio_video", math.prod(self.video_encoder.default_grid), mask_ratio_video
        )
        if shared_backbone:  # modality-agnostic: one transformer trunk
            self.video_encoder.blocks = self.audio_encoder.blocks
            self.video_encoder.norm = self.audio_encoder.norm
        dim = self.audio_encoder.embed_dim
        head = (dim, head_hidden_dim, head_bottleneck_dim, head_out_dim, head_norm, head_norm)
        self.audio_head, self.video_head = DINOHead(*head), DINOHead(*head)
        dec = decoder_dims(hp)
        self.audio_decoder = TransformerDecoder(
            dim, self.audio_encoder.patch_dim, *dec, grid=self.audio_encoder.default_grid
        )
        self.video_decoder = TransformerDecoder(
            dim, self.video_encoder.patch_dim, *dec, grid=self.video_encoder.default_grid
        )
        self.teacher = copy.deepcopy(self.student()).requires_grad_(False)
        self.register_buffer("center_audio", torch.zeros(1, head_out_dim))
        self.register_buffer("center_video", torch.zeros(1, head_out_dim))
        self.ema_momentum = ema_start
        self._staged_centres: tuple[torch.Tensor, torch.Tensor] | None = None  # (video, audio)
        self._told_device_cut = False
        total = recon_weight + kd_weight + align_weight
        self.weights = (recon_weight / total, kd_weight / total, align_weight / total)
        self.cfg = hp

    # ----------------------------------------------------------------- losses
    def _student_branch(self, x: torch.Tensor, modality: str, ok: torch.Tensor):
        """Masked reconstruction loss and head logits ``[B, K]`` of the masked encoding."""
        enc = self.audio_encoder if modality == "audio" else self.video_encoder
        dec = self.audio_decoder if modality == "audio" else self.video_decoder
        ratio = self.cfg[f"mask_ratio_{modality}"]
        grid = enc.grid_size(x.shape)
        keep, mask, restore = random_masking(x.shape[0], math.prod(grid), ratio, x.device)
        z = enc.forward_features(x, keep)  # [B, N_keep, D]
        pred = dec(z, restore, grid)  # [B, N, P]
        recon = masked_mse(pred, enc.patchify(x), mask * ok[:, None], self.cfg["norm_pix_loss"])
        head = self.audio_head if modality == "audio" else self.video_head
        return recon, head(z.mean(dim=1))

    def local_view_spec(
        self, num_frames: int, crop_size: int, audio_frames: int
    ) -> LocalViewSpec | None:
        """The loader's local view (``local_source: loader``; :func:`_xkd_views.loader_spec`)."""
        c = self.cfg
        if not c["local_views"] or c["local_source"] != "loader":
            return None
        a_enc, v_enc = self.audio_encoder, self.video_encoder
        sizes = (num_frames, crop_size, audio_frames)
        return loader_spec(c, a_enc.patch_size, v_enc.tubelet_size, v_enc.patch_size, sizes)

    def local_views(self, audio: torch.Tensor, video: torch.Tensor, local: AVBatch | None = None):
        """The local views ``(audio [B, 1, Ta', F], video [B, C, T', S, S])``: the loader's
        (``local``, ``AVBatch.local``) with the blur and the audio's resize crop added, else
        cut from the global ones (module :mod:`avssl.objectives._xkd_views`)."""
        c = self.cfg
        if local is not None:
            local_a, local_v, _, _ = flatten_inputs(local)
            return self._audio_resize(local_a), blur_views(local_v, c["local_blur_p"])
        if c["local_source"] == "loader" and not self._told_device_cut:
            self._told_device_cut = True
            rank_zero_info(
                "[xkd] a batch without the loader's local views (a data module without "
                "request_local_view): its local views cut from the global view on the device"
            )
        a_enc, v_enc = self.audio_encoder, self.video_encoder
        frames_a = whole_units(audio.shape[2], c["local_temporal_ratio"], a_enc.patch_size)
        frames_v = whole_units(video.shape[2], c["local_temporal_ratio"], v_enc.tubelet_size)
        side = whole_units(video.shape[-1], c["local_spatial_ratio"], v_enc.patch_size)
        local_v = local_video_view(
            video, frames_v, side, tuple(c["local_crop_scale"]),
            c["local_flip_p"], c["local_grey_p"], c["local_blur_p"],
        )  # fmt: skip
        local_a = local_audio_view(audio, frames_a)  # [B, 1, frames_a, F]
        return self._audio_resize(local_a), local_v

    def _audio_resize(self, local_a: torch.Tensor) -> torch.Tensor:
        """XKD's random resize crop of the local fbanks ``[B, 1, Ta', F]`` (when enabled)."""
        if not self.cfg["local_audio_resize"]:
            return local_a
        B, _, frames, bins = local_a.shape
        return audio_resize_crop(local_a, audio_resize_boxes(B, frames, bins, local_a.device))

    def compute_losses(self, batch: AVBatch) -> dict[str, torch.Tensor]:
        audio, video, a_ok, v_ok = flatten_inputs(batch)
        recon_a, s_a = self._student_branch(audio, "audio", a_ok)
        recon_v, s_v = self._student_branch(video, "video", v_ok)
        students_a, students_v = [s_a], [s_v]  # head logits per student view
        if self.cfg["local_views"]:
            audio, video = self.local_views(audio, video, batch.local)  # the teachers' view
            students_a.append(self.audio_head(self.audio_encoder(audio)))
            students_v.append(self.video_head(self.video_encoder(video)))
        t_a = self._teacher_logits(audio, "audio")
        t_v = self._teacher_logits(video, "video")
        both = (a_ok * v_ok) > 0.5  # distil and align only where both modalities exist
        kd_a, kd_v, align = self._cross_modal_terms(students_a, students_v, t_a, t_v, both)
        self._stage_centres(t_a, t_v, both)
        recon, kd = 0.5 * (recon_a + recon_v), 0.5 * (kd_a + kd_v)
        w_r, w_k, w_a = self.weights
        return {
            "recon_audio": recon_a, "recon_video": recon_v,
            "kd_video_to_audio": kd_a, "kd_audio_to_video": kd_v,
            "align": align, "ema_momentum": torch.tensor(self.ema_momentum),
            "loss": w_r * recon + w_k * kd + w_a * align,
        }  # fmt: skip

    # ----------------------------------------------------------------- export
    def export_encoders(self) -> dict[str, Any]:
        """The EMA teachers by default.

        XKD's reference code saves both teacher and student backbones; we export the teachers
        by default because, as in DINO, the EMA teacher is the smoother and usually the better
        feature extractor; the paper's text available to us does not say which one it evaluates.
        ``export_which: student`` exports the students.
        """
        which = self.cfg["export_which"]
        src = self.teacher if which == "teacher" else self.student()
        shared = " (modality-agnostic: shared trunk)" if self.cfg["shared_backbone"] else ""
        note = f"XKD {which} encoders{shared}; heads and decoders not exported"
        return {"audio": src["audio"], "video": src["video"], "which": which, "note": note}
