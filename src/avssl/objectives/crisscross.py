"""CrissCross: audio-visual SimSiam with relaxed time synchronicity (Sarkar & Etemad 2021).

Paper: https://arxiv.org/abs/2111.05329. Without negatives: each modality's pooled feature goes
through a projector, then a predictor; the loss between two views is SimSiam's symmetric negative
cosine ``D(p1, sg(z2)) / 2 + D(p2, sg(z1)) / 2`` with a stop-gradient on the target
(Chen & He 2021, https://arxiv.org/abs/2011.10566). With two clips per sample (clip 1 and 2,
``data.init_args.clips_per_video: 2``):

- intra-modal: video 1 vs video 2, audio 1 vs audio 2;
- synchronous cross-modal: video k vs audio k (the same moment when ``audio_mode: aligned``);
- asynchronous cross-modal: video 1 vs audio 2 and video 2 vs audio 1 (different moments of the
  same recording; with ``audio_mode: random`` every audio window is anywhere in the recording).

Loss ``(intra_weight * L_intra + sync_weight * L_sync + async_weight * L_async) / G``, each
term the mean of its two pairs and ``G`` the number of terms with a weight above 0: CrissCross's
code divides the weighted sum of its six pair losses by their number, which is the same.
Projector and predictor are SimSiam's (``batch_norm: true``, the default): a 3-layer projector
with batch norm after every layer (the last one without affine parameters) and a 2-layer
bottleneck predictor with batch norm on its hidden layer; batch statistics are taken over each
clip index separately, as SimSiam normalises each view's batch on its own (SimSiam's
Table 5: without these norms its ImageNet linear probe falls from 67.4 to 34.6 %). With
``batch_norm: false`` both are Linear-GELU-Linear MLPs. Multi-GPU runs should add
``--trainer.sync_batchnorm true`` (SimSiam uses synchronised batch norm; it needs GPUs).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from avssl.data.batch import AVBatch
from avssl.objectives._contrastive_heads import projection_head
from avssl.objectives._mavil_parts import build_encoders, flatten_inputs
from avssl.objectives.base import AVObjective, param_groups


def simsiam_projector(dim: int, hidden: int, out: int) -> nn.Module:
    """SimSiam's projector: (Linear-BN-ReLU) x 2, then Linear-BN without affine parameters."""
    return nn.Sequential(
        nn.Linear(dim, hidden, bias=False),
        nn.BatchNorm1d(hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden, bias=False),
        nn.BatchNorm1d(hidden),
        nn.ReLU(),
        nn.Linear(hidden, out, bias=False),
        nn.BatchNorm1d(out, affine=False),
    )


def simsiam_predictor(dim: int, hidden: int) -> nn.Module:
    """SimSiam's bottleneck predictor: Linear-BN-ReLU, then Linear (with bias)."""
    return nn.Sequential(
        nn.Linear(dim, hidden, bias=False),
        nn.BatchNorm1d(hidden),
        nn.ReLU(),
        nn.Linear(hidden, dim),
    )


def simsiam_loss(p1, z1, p2, z2, valid: torch.Tensor) -> torch.Tensor:
    """Symmetric negative cosine with stop-gradient targets, mean over valid rows ``[B]``."""
    d1 = -F.cosine_similarity(p1.float(), z2.detach().float(), dim=-1)  # [B]
    d2 = -F.cosine_similarity(p2.float(), z1.detach().float(), dim=-1)
    per_row = 0.5 * (d1 + d2)
    return (per_row * valid).sum() / valid.sum().clamp_min(1.0)


class CrissCross(AVObjective):
    """CrissCross objective (paper: https://arxiv.org/abs/2111.05329).

    Args:
        size, depth, patch_size, tubelet_size: encoder architecture.
        audio_frames, num_mel_bins, num_frames, img_size: default input sizes.
        proj_dim, proj_hidden_dim: projector output and hidden widths.
        pred_hidden_dim: predictor bottleneck width (SimSiam: proj_dim / 4).
        intra_weight, sync_weight, async_weight: term weights (>= 0, at least one above 0; a
            term with weight 0 is off and leaves the divisor ``G``).
        batch_norm: SimSiam's projector and predictor with batch norm (True) or plain
            Linear-GELU-Linear MLPs (False).
        predictor_lr_scale: > 0: the predictors train at this multiple of the peak learning
            rate, held constant (no warm-up, no decay), as SimSiam fixes its predictor's rate
            and CrissCross's config sets its predictors to 10x the backbones' rate, constant;
            None: the predictors follow the schedule of everything else.
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
        proj_dim: int = 2048,
        proj_hidden_dim: int = 2048,
        pred_hidden_dim: int = 512,
        intra_weight: float = 1.0,
        sync_weight: float = 1.0,
        async_weight: float = 1.0,
        batch_norm: bool = True,
        predictor_lr_scale: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if predictor_lr_scale is not None and predictor_lr_scale <= 0:
            raise ValueError(f"predictor_lr_scale must be > 0 or null, got {predictor_lr_scale}")
        self.predictor_lr_scale = predictor_lr_scale
        self.audio_encoder, self.video_encoder = build_encoders(dict(self.hparams))
        dim = self.audio_encoder.embed_dim
        modalities = ("audio", "video")
        if batch_norm:
            proj = {m: simsiam_projector(dim, proj_hidden_dim, proj_dim) for m in modalities}
            pred = {m: simsiam_predictor(proj_dim, pred_hidden_dim) for m in modalities}
        else:
            proj = {m: projection_head(dim, proj_hidden_dim, proj_dim) for m in modalities}
            pred = {m: projection_head(proj_dim, pred_hidden_dim, proj_dim) for m in modalities}
        self.projector, self.predictor = nn.ModuleDict(proj), nn.ModuleDict(pred)
        self.batch_norm = batch_norm
        self.weights = {"intra": intra_weight, "sync": sync_weight, "async": async_weight}
        if min(self.weights.values()) < 0 or max(self.weights.values()) <= 0:
            raise ValueError(
                "CrissCross term weights must be >= 0 with at least one above 0, got "
                f"intra {intra_weight}, sync {sync_weight}, async {async_weight}"
            )
        self.num_terms = sum(v > 0 for v in self.weights.values())

    def optimizer_groups(self, lr: float) -> list[dict[str, Any]]:
        """Everything but the predictors on the schedule; the predictors at
        ``predictor_lr_scale * lr``, constant, when that is set."""
        if self.predictor_lr_scale is None:
            return super().optimizer_groups(lr)
        pred = {id(p) for p in self.predictor.parameters()}
        rest = param_groups(self, self.weight_decay)
        for g in rest:
            g["params"] = [p for p in g["params"] if id(p) not in pred]
        fixed = param_groups(self.predictor, self.weight_decay)
        for g in fixed:
            g.update(lr=lr * self.predictor_lr_scale, constant_lr=True)
        return rest + fixed

    def compute_losses(self, batch: AVBatch) -> dict[str, torch.Tensor]:
        if batch.video.ndim != 6 or batch.video.shape[1] < 2:
            raise ValueError(
                "CrissCross needs 2 clips per sample: set data.init_args.clips_per_video: 2"
            )
        if self.batch_norm and self.training and len(batch) < 2:
            raise ValueError(
                "CrissCross with batch_norm: true needs at least 2 samples per batch on each "
                "device (SimSiam's batch norm); raise data.init_args.batch_size or set "
                "model.init_args.batch_norm: false"
            )
        audio, video, a_ok, v_ok = flatten_inputs(batch)
        k = batch.video.shape[1]
        z, p = {}, {}
        for m, x in (("audio", audio), ("video", video)):
            enc = self.audio_encoder if m == "audio" else self.video_encoder
            feats = enc(x).reshape(len(batch), k, -1)  # [B, K, D]
            # one view (clip index) at a time through the heads: per-view batch statistics
            zs = [self.projector[m](feats[:, c]) for c in range(k)]  # K x [B, E]
            z[m] = torch.stack(zs, dim=1)  # [B, K, E]
            p[m] = torch.stack([self.predictor[m](zc) for zc in zs], dim=1)
        ok = {"audio": a_ok.reshape(-1, k), "video": v_ok.reshape(-1, k)}  # [B, K]

        def pair(m1: str, c1: int, m2: str, c2: int) -> torch.Tensor:
            valid = ok[m1][:, c1] * ok[m2][:, c2]
            return simsiam_loss(p[m1][:, c1], z[m1][:, c1], p[m2][:, c2], z[m2][:, c2], valid)

        losses = {
            "intra": 0.5 * (pair("video", 0, "video", 1) + pair("audio", 0, "audio", 1)),
            "sync": 0.5 * (pair("video", 0, "audio", 0) + pair("video", 1, "audio", 1)),
            "async": 0.5 * (pair("video", 0, "audio", 1) + pair("video", 1, "audio", 0)),
        }
        w = self.weights
        total = w["intra"] * losses["intra"] + w["sync"] * losses["sync"]
        losses["loss"] = (total + w["async"] * losses["async"]) / self.num_terms
        return losses

    def export_heads(self) -> dict[str, Any] | None:
        """The spaces CrissCross's cross-modal terms compare, one per direction: audio queries
        as the audio predictor's output (audio projector, then predictor) against the video
        projector's output, ``-cos(p_a, sg(z_v))``, and (``"v2a"``) video queries as the video
        predictor's output against the audio projector's, ``-cos(p_v, sg(z_a))``. None when
        only the within-modal term trains (sync and async weights 0)."""
        if self.weights["sync"] == 0 and self.weights["async"] == 0:
            return None
        return {
            "audio": nn.Sequential(self.projector["audio"], self.predictor["audio"]),
            "video": self.projector["video"],
            "space": "CrissCross cross-modal SimSiam (audio predictor vs video projector)",
            "v2a": {
                "audio": self.projector["audio"],
                "video": nn.Sequential(self.projector["video"], self.predictor["video"]),
                "space": "CrissCross cross-modal SimSiam (video predictor vs audio projector)",
            },
        }

    def export_encoders(self) -> dict[str, Any]:
        note = "CrissCross audio/video encoders (projection heads: see export_heads)"
        return {
            "audio": self.audio_encoder,
            "video": self.video_encoder,
            "which": "online",
            "note": note,
        }
