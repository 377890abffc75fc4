"""Helpers of the MAViL objective (backbone, masked InfoNCE, teacher loading, figures); the
encoder builder, input flattening and masked InfoNCE also serve the other objectives.

MAViL: Huang et al. 2022, "MAViL: Masked Audio-Video Learners", https://arxiv.org/abs/2212.08071.
"""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from avssl.data.batch import MODALITIES_COMPLETE, AVBatch
from avssl.losses._precision import float32_loss
from avssl.losses.contrastive import gather_plain, gather_with_grad, rank_and_world, twins
from avssl.models.fusion import JointFusion
from avssl.models.vit import SIZES, AudioViT, VideoViT
from avssl.objectives import _viz

# Hyper-parameters that fix the backbone's architecture: the stage-2 teacher must match them.
ARCH_KEYS = ("size", "depth", "patch_size", "tubelet_size", "fusion_depth")
DECODER_DIM = {"tiny": 192, "small": 256, "base": 512, "large": 512}  # MAE/CAV-MAE: 512 at B


def build_encoders(hp: dict[str, Any]) -> tuple[AudioViT, VideoViT]:
    """Audio and video ViTs from the shared hyper-parameters of the objectives in this package
    (``pos_for_smaller_grid`` when the objective has it, else the encoders' ``"prefix"``)."""
    pos = hp.get("pos_for_smaller_grid", "prefix")
    audio = AudioViT(
        size=hp["size"],
        depth=hp["depth"],
        patch_size=hp["patch_size"],
        input_size=(hp["audio_frames"], hp["num_mel_bins"]),
        pos_for_smaller_grid=pos,
    )
    video = VideoViT(
        size=hp["size"],
        depth=hp["depth"],
        patch_size=hp["patch_size"],
        tubelet_size=hp["tubelet_size"],
        num_frames=hp["num_frames"],
        img_size=hp["img_size"],
        pos_for_smaller_grid=pos,
    )
    return audio, video


class Backbone(nn.Module):
    """Audio ViT, video ViT and the joint fusion layers built from MAViL hyper-parameters."""

    def __init__(self, hp: dict[str, Any]) -> None:
        super().__init__()
        self.audio, self.video = build_encoders(hp)
        heads = SIZES[hp["size"]][2]
        # single_norms=False: MAViL never runs one modality alone through the joint layers,
        # and DDP (find_unused_parameters=False) must not see idle parameters.
        self.fusion = JointFusion(
            self.audio.embed_dim, depth=hp["fusion_depth"], num_heads=heads, single_norms=False
        )

    def forward(
        self,
        audio: torch.Tensor,
        video: torch.Tensor,
        audio_ok: torch.Tensor | None = None,
        video_ok: torch.Tensor | None = None,
    ):
        """Unmasked inputs -> fusion outputs ``([B, Na, D], [B, Nv, D])``; ``*_ok``: the
        clips' present modalities for the fusion's key mask (None: all present)."""
        za = self.audio.forward_features(audio)  # [B, Na, D]
        zv = self.video.forward_features(video)  # [B, Nv, D]
        return self.fusion(za, zv, audio_ok, video_ok)


# AVBatch.extra key: True when every clip of the batch has audio and video, set on the host by
# the loader's collate (avssl.data.batching.collate)
COMPLETE = MODALITIES_COMPLETE


def modalities_complete(batch: AVBatch) -> bool | None:
    """Whether every clip of ``batch`` has both modalities, when known without waiting for
    the device: True with no masks, the masks' value when they are host tensors (or the
    :data:`COMPLETE` flag set before the transfer says it), None for masks on an accelerator."""
    flag = batch.extra.get(COMPLETE)
    if flag is not None:
        return bool(flag)
    masks = [m for m in (batch.audio_mask, batch.video_mask) if m is not None]
    if any(m.device.type != "cpu" for m in masks):
        return None  # reading it would be a host sync
    return all(bool(m.all()) for m in masks)


Oks = tuple[torch.Tensor | None, torch.Tensor | None]  # (audio_ok, video_ok) of the fusion


def fusion_masks(batch: AVBatch, a_ok: torch.Tensor, v_ok: torch.Tensor) -> Oks:
    """The ``(audio_ok, video_ok)`` of :meth:`JointFusion.forward`: ``(None, None)`` when
    every clip has both modalities (no attention mask: SDPA's fastest kernels, the values of
    an unmasked fusion), else the ``[B']`` flags of :func:`flatten_inputs` (a mask whose
    shape depends only on the batch's: no graph break, no host sync)."""
    if modalities_complete(batch):
        return None, None
    return a_ok, v_ok


def decoder_dims(hp: dict[str, Any]) -> tuple[int, int, int]:
    """(width, depth, heads) of the decoders; None settings follow the encoder size."""
    dim = hp["decoder_dim"] or DECODER_DIM[hp["size"]]
    depth = hp["decoder_depth"]
    if depth is None:
        depth = 8 if hp["depth"] is None else min(8, hp["depth"])  # MAE/AudioMAE: 8 blocks
    heads = hp["decoder_heads"] or max(dim // 32, 1)  # MAE: 512 wide, 16 heads (32 per head)
    return dim, depth, heads


def projection_heads(dim: int, out: int, inter: float, intra: float) -> nn.ModuleDict:
    """Linear projections for the contrastive terms that are on (no idle parameters)."""
    names = []
    if inter > 0:
        names += ["inter_audio", "inter_video"]
    if intra > 0:
        names += ["intra_audio", "intra_video"]
    return nn.ModuleDict({n: nn.Linear(dim, out) for n in names})


def flatten_inputs(batch: AVBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(audio [B', 1, Ta, F], video [B', C, T, H, W], audio_ok [B'], video_ok [B'])``.

    With K clips per sample (``[B, K, ...]``) the clips become separate samples, B' = B K.
    ``*_ok`` are float 0/1: 0 where the modality is missing (excluded from its losses).
    """
    audio, video = batch.audio, batch.video
    B = audio.shape[0]
    k = audio.shape[1] if audio.ndim == 5 else 1
    if audio.ndim == 5:
        audio = audio.flatten(0, 1)  # [B K, 1, Ta, F]
    if video.ndim == 6:
        video = video.flatten(0, 1)  # [B K, C, T, H, W]
    ones = torch.ones(B, dtype=torch.bool, device=audio.device)
    a_ok = batch.audio_mask if batch.audio_mask is not None else ones
    v_ok = batch.video_mask if batch.video_mask is not None else ones
    a_ok = a_ok.to(audio.device).repeat_interleave(k).float()  # [B K]
    v_ok = v_ok.to(audio.device).repeat_interleave(k).float()
    return audio, video, a_ok, v_ok


@float32_loss
def masked_info_nce(
    a: torch.Tensor,
    b: torch.Tensor,
    valid: torch.Tensor,
    temperature: float,
    gather: bool = True,
    ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE where invalid rows are neither anchors nor negatives.

    Row i of ``a`` matches row i of ``b`` (CPC, https://arxiv.org/abs/1807.03748); the loss is
    the mean of the a->b and b->a cross-entropies over the valid local rows, with the rows of
    every rank as candidates when ``gather`` (gradients flow through the gather). With all rows
    valid it equals ``avssl.losses.contrastive.info_nce(a, b, temperature, gather=gather)``.

    Args:
        a, b: ``[B, D]`` features (L2-normalised here).
        valid: ``[B]`` float/bool, 0 where the pair must be ignored (missing modality).
        temperature: softmax temperature.
        gather: candidates from all ranks.
        ids: optional ``[B]`` video ids (``avssl.losses.contrastive.key_ids``): another entry
            of the same video (a twin in the batch, or another of its K clips) is no negative.

    Returns:
        Scalar float32 loss (0 when no row is valid).
    """
    a = F.normalize(a.float(), dim=-1)
    b = F.normalize(b.float(), dim=-1)
    valid = valid.float()
    rank = rank_and_world()[0] if gather else 0  # 0 inside rank_local (validation)
    a_all = gather_with_grad(a) if gather else a  # [W B, D]
    b_all = gather_with_grad(b) if gather else b
    v_all = gather_plain(valid) if gather else valid  # [W B]
    labels = torch.arange(a.shape[0], device=a.device) + rank * a.shape[0]
    dead = (v_all < 0.5)[None, :]  # [1, W B] invalid candidates
    twin = twins(ids, gather, labels)
    if twin is not None:
        dead = dead | twin  # [B, W B]
    logits_ab = (a @ b_all.t() / temperature).masked_fill(dead, -1e4)  # [B, W B]
    logits_ba = (b @ a_all.t() / temperature).masked_fill(dead, -1e4)
    per_row = 0.5 * (
        F.cross_entropy(logits_ab, labels, reduction="none")
        + F.cross_entropy(logits_ba, labels, reduction="none")
    )  # [B]
    return (per_row * valid).sum() / valid.sum().clamp_min(1.0)


def read_run_checkpoint(path: str, what: str) -> dict[str, Any]:
    """Another run's Lightning checkpoint (``weights_only=True``) for an objective that starts
    from it (MAViL stage 2's teacher, AVID-CMA's Cross-AVID run); ``what`` prefixes the
    one-line ``ValueError`` for a file that is not one, or a damaged one (a CRC mismatch)."""
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{what}: not a checkpoint (no torch.save archive)")
    from avssl.checkpoint_read import check_archive
    from avssl.cli import UserError

    try:
        check_archive(Path(path))  # torch.load checks no CRC: damaged bytes load as weights
    except UserError as err:
        raise ValueError(f"{what}: {str(err).removeprefix(f'{path}: ')}") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - a non-checkpoint fails in many ways in torch.load
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(f"{what}: unreadable ({first})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ValueError(f"{what}: not a Lightning checkpoint (no state_dict)")
    return ckpt


def load_teacher(teacher: Backbone, path: str, student_hp: dict[str, Any]) -> None:
    """Loads the backbone (audio, video, fusion) of a stage-1 MAViL checkpoint into ``teacher``.

    The file is read with ``weights_only=True``. Its architecture hyper-parameters must equal
    the student's (:data:`ARCH_KEYS`): MAViL's teacher and student share one architecture.

    Raises:
        FileNotFoundError, ValueError: with the path and the mismatching setting.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"MAViL teacher_ckpt {path}: file not found")
    ckpt = read_run_checkpoint(path, f"MAViL teacher_ckpt {path}")
    objective = str((ckpt.get("avssl") or {}).get("objective", "avssl.objectives.mavil.MAViL"))
    hp = ckpt.get("hyper_parameters") or {}
    if not objective.endswith(".MAViL") or hp.get("stage", 1) != 1:
        raise ValueError(
            f"MAViL teacher_ckpt {path}: a checkpoint of {objective.rsplit('.', 1)[-1]}"
            f"{' stage ' + str(hp['stage']) if 'stage' in hp else ''}, not of MAViL stage 1"
        )
    for key in ARCH_KEYS:
        if key in hp and hp[key] != student_hp[key]:
            raise ValueError(
                f"MAViL teacher_ckpt {path}: {key}={hp[key]!r} differs from the student's "
                f"{student_hp[key]!r}; stage 2 needs the stage-1 architecture"
            )
    prefixes = {"audio_encoder.": "audio.", "video_encoder.": "video.", "fusion.": "fusion."}
    state = {}
    for k, v in ckpt["state_dict"].items():
        for src, dst in prefixes.items():
            if k.startswith(src):
                state[dst + k[len(src) :]] = v
    missing, _ = teacher.load_state_dict(state, strict=False)
    if missing:
        raise ValueError(f"MAViL teacher_ckpt {path}: missing weights, e.g. {missing[:3]}")


def figures(
    encoder: AudioViT | VideoViT,
    x: torch.Tensor,
    mask: torch.Tensor,
    recon: torch.Tensor,
    grid: tuple[int, ...],
    pixel: bool,
) -> torch.Tensor:
    """Input | masked | reconstruction figure of one sample ``x [1, ...]``.

    ``recon`` is ``[N, P]`` norm-pix predictions (pixel targets) or ``[N]`` per-token errors
    (feature targets, painted onto the patches).
    """
    target = encoder.patchify(x)[0]  # [N, P]
    low = float(target.min())
    masked = _viz.masked_fill(target, mask, low)
    if pixel:
        recon = _viz.paste(target, _viz.denorm_pred(recon.float(), target), mask)
    else:
        err = recon.float() / recon.float().max().clamp_min(1e-6)  # [N] in [0, 1]
        span = float(target.max()) - low
        recon = (low + err[:, None] * span).expand_as(target)  # [N, P]
    images = [encoder.unpatchify(t[None], grid)[0] for t in (target, masked, recon)]  # type: ignore[arg-type]
    if x.ndim == 4:  # audio [1, 1, Ta, F]
        return _viz.spectrogram_panel(*(img[0] for img in images))
    return _viz.video_panel(*images)
