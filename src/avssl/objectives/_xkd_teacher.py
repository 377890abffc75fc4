"""XKD's teachers: the DINO heads, the EMA teachers and their centres, and the cross-modal
distillation and domain-alignment terms of :class:`~avssl.objectives.xkd.XKD`.

XKD: Sarkar & Etemad 2022, https://arxiv.org/abs/2211.13929; DINO (heads, centred and sharpened
teacher targets): Caron et al. 2021, https://arxiv.org/abs/2104.14294. The objective as a whole
is told in the docstring of :mod:`avssl.objectives.xkd`. :class:`XKDTeacherMixin` is a part of
``XKD`` (it reads the attributes that constructor sets); it is not meant to be used on its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from avssl.losses.distillation import coral, dino_distill, mean_coral, mmd, update_center
from avssl.models.utils import cosine_schedule, ema_update
from avssl.models.vit import AudioViT, VideoViT, ViTEncoder
from avssl.objectives._xkd_views import attention_pool, tokens_and_attention
from avssl.objectives.base import AVObjective

ALIGNS = {"mmd": mmd, "coral": coral, "mean_coral": mean_coral}  # align option -> loss


class DINOHead(nn.Module):
    """DINO projection head: 3-layer MLP, L2-normalised bottleneck, cosine prototypes.

    The last layer is DINO's weight-normalised linear layer with its norm fixed to 1, written
    as a product with L2-normalised prototype rows. Paper: https://arxiv.org/abs/2104.14294.
    ``hidden_norm`` puts a LayerNorm after each hidden linear layer (before its GELU) and
    ``out_norm`` a LayerNorm without affine parameters on the ``out`` cosines, which rescales
    each clip's logits to zero mean and unit variance before the temperatures (XKD's projector
    ``2048-gelu-3-256-8192-norm3`` has both).
    """

    def __init__(
        self,
        dim: int,
        hidden: int,
        bottleneck: int,
        out: int,
        hidden_norm: bool = False,
        out_norm: bool = False,
    ) -> None:
        super().__init__()

        def layer(fan_in: int) -> list[nn.Module]:
            norm: list[nn.Module] = [nn.LayerNorm(hidden)] if hidden_norm else []
            return [nn.Linear(fan_in, hidden), *norm, nn.GELU()]

        self.mlp = nn.Sequential(*layer(dim), *layer(hidden), nn.Linear(hidden, bottleneck))
        self.prototypes = nn.Parameter(torch.randn(out, bottleneck) * 0.02)
        self.out_norm = nn.LayerNorm(out, elementwise_affine=False) if out_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.normalize(self.mlp(x), dim=-1)  # [B, bottleneck]
        cos = h @ F.normalize(self.prototypes, dim=-1).T  # [B, out], cosines in [-1, 1]
        return self.out_norm(cos)


class XKDTeacherMixin(AVObjective):
    """The teacher side of :class:`~avssl.objectives.xkd.XKD`: the students the EMA teachers
    mirror, the teachers' logits and centres, the distillation and alignment terms, the EMA."""

    audio_encoder: AudioViT
    video_encoder: VideoViT
    audio_head: DINOHead
    video_head: DINOHead
    teacher: nn.ModuleDict
    center_audio: torch.Tensor
    center_video: torch.Tensor
    cfg: dict[str, Any]
    ema_momentum: float
    _staged_centres: tuple[torch.Tensor, torch.Tensor] | None  # (video, audio)

    def student(self) -> nn.ModuleDict:
        """The student modules that the teacher mirrors (a view, not a registered child)."""
        return nn.ModuleDict(
            {
                "audio": self.audio_encoder,
                "video": self.video_encoder,
                "audio_head": self.audio_head,
                "video_head": self.video_head,
            }
        )

    def clip_params(self) -> Iterator[nn.Parameter]:
        """``clip_grad_per_param`` clips the students' encoders and DINO heads only, as XKD's
        ``XKD_Net.clip_gradients`` (its ``vid_student`` / ``aud_student``: backbone + head);
        the decoders (mask token, decoder blocks, projections) are not clipped. A shared
        backbone's trunk is listed once."""
        return self.student().parameters()

    @torch.no_grad()
    def _teacher_logits(self, x: torch.Tensor, modality: str) -> torch.Tensor:
        enc: ViTEncoder = self.teacher[modality]  # type: ignore[assignment]
        if self.cfg["teacher_pooling"] == "attention":
            pooled = attention_pool(*tokens_and_attention(enc, x))
        else:
            pooled = enc(x)  # mean of the tokens
        return self.teacher[f"{modality}_head"](pooled).float()  # [B, K]

    # ----------------------------------------------------------------- distillation, alignment
    def _cross_modal_terms(
        self,
        students_a: list[torch.Tensor],
        students_v: list[torch.Tensor],
        t_a: torch.Tensor,
        t_v: torch.Tensor,
        both: torch.Tensor,
    ):
        """``(kd_a, kd_v, align)``: the DINO cross-entropies of the student views' head logits
        ``[B, K]`` towards the other modality's teacher, and the domain alignment, over the
        clips with both modalities (``both [B]``); the first view of each list is the global."""
        s_a, s_v = students_a[0], students_v[0]
        c = self.cfg
        if bool(both.any()):  # video teacher -> audio student views, and the reverse
            t_temp_v, t_temp_a, s_temp = (
                c["teacher_temp_video"], c["teacher_temp_audio"], c["student_temp"])  # fmt: skip
            kd_a = sum(
                dino_distill(s[both], t_v[both], self.center_video, s_temp, t_temp_v)
                for s in students_a
            ) / len(students_a)
            kd_v = sum(
                dino_distill(s[both], t_a[both], self.center_audio, s_temp, t_temp_a)
                for s in students_v
            ) / len(students_v)
        else:
            kd_a = kd_v = (s_a.sum() + s_v.sum()) * 0.0
        align_fn = ALIGNS[c["align"]]
        if int(both.sum()) >= 2:  # students' (all views) and no-gradient teachers' gaps
            align_s = align_fn(
                torch.cat([s[both] for s in students_v]).float(),
                torch.cat([s[both] for s in students_a]).float(),
            )
            align = 0.5 * (align_s + align_fn(t_v[both], t_a[both]))
        else:
            align = (s_a.sum() + s_v.sum()) * 0.0
        return kd_a, kd_v, align

    def _stage_centres(self, t_a: torch.Tensor, t_v: torch.Tensor, both: torch.Tensor) -> None:
        """Stages the teacher centres of this batch (training only; :meth:`commit_state`)."""
        self._staged_centres = None
        if self.training:  # centres of the clips distilled (a missing input's logits are not)
            m = self.cfg["center_momentum"]  # committed only when the loss is finite (commit_state)
            self._staged_centres = (
                update_center(self.center_video, t_v[both], m),
                update_center(self.center_audio, t_a[both], m),
            )

    @torch.no_grad()
    def commit_state(self) -> None:
        """The teacher centres staged by the last training batch (its loss was finite)."""
        if self._staged_centres is not None:
            self.center_video.copy_(self._staged_centres[0])
            self.center_audio.copy_(self._staged_centres[1])
            self._staged_centres = None

    # ----------------------------------------------------------------- EMA teacher
    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """The optimiser step, then the teacher EMA at the momentum of the step just taken:
        once per optimiser step (not after the micro-batches of an accumulation window that
        take none), and not after a step that changed nothing because all its micro-batches
        were skipped for non-finite losses (``last_step_skipped``; the students did not move).
        Done here, not in ``on_train_batch_end``: Lightning runs the callbacks' batch-end
        hooks first, so ModelCheckpoint saved every checkpoint with the teacher one update
        behind, and a run resumed from it never made that update."""
        step = self.trainer.global_step  # this step's index (counted once it is taken)
        super().optimizer_step(*args, **kwargs)
        if not self.last_step_skipped:
            self.update_teacher(step, int(self.trainer.estimated_stepping_batches))

    @torch.no_grad()
    def update_teacher(self, step: int, total_steps: int) -> float:
        """EMA of the students into the teachers, momentum cosine ``ema_start -> ema_end``."""
        start, end = self.cfg["ema_start"], self.cfg["ema_end"]
        self.ema_momentum = cosine_schedule(step, max(total_steps, 1), start, end)
        ema_update(self.teacher, self.student(), self.ema_momentum)
        return self.ema_momentum
