"""The configurations of ``bench/step.py``: input shapes, step modules, inputs, FLOP count.

``shapes`` gives each configuration's inputs, ``build`` its step module (``forward(batch)``
returns the losses), ``random_batch`` its inputs, ``count_flops`` its model FLOPs per sample
and ``compile_stacks`` the ``--compile stacks`` option.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from avssl.data.batch import MODALITIES_COMPLETE, AVBatch
from avssl.losses.contrastive import info_nce
from avssl.losses.reconstruction import masked_mse
from avssl.models import AudioViT, VideoViT
from avssl.models.decoder import JointDecoder, TransformerDecoder
from avssl.models.fusion import JointFusion
from avssl.models.layers import set_fused_attention
from avssl.models.masking import random_masking, tube_masking, videomae_keep
from avssl.models.vit import ViTEncoder


@dataclass
class Shape:
    """Inputs of one configuration; ``fast_batch``/``base_batch`` are the GPU defaults."""

    audio: tuple[int, int] = (1024, 128)
    frames: int = 16
    img: int = 224
    fast_batch: int = 128
    base_batch: int = 48
    extra: dict[str, Any] = field(default_factory=dict)
    modalities: tuple[str, ...] = ("audio", "video")  # what --data loads for the step


def shapes(size: str) -> dict[str, Shape]:
    """Reference inputs, or small ones at ``--size tiny`` (CPU smoke runs)."""
    if size == "tiny":
        return {
            "cavmae": Shape((64, 128), 1, 32, 2, 2, {"dec_dim": 64}),
            "videomae": Shape((64, 128), 4, 64, 2, 2, {"dec_dim": 64}, ("video",)),
            "mavil": Shape((64, 128), 4, 64, 2, 2),
        }
    return {
        "cavmae": Shape((1024, 128), 1, 224, 128, 48, {"dec_dim": 512}),
        "videomae": Shape((1024, 128), 16, 224, 64, 32, {"dec_dim": 384}, ("video",)),
        "mavil": Shape((1024, 128), 8, 224, 64, 32),
    }


class CavMaeStep(nn.Module):
    """The CAV-MAE step: 11 + 1 layers, joint decoder, mask 0.75, MSE + 0.01 InfoNCE."""

    def __init__(self, size: str, shape: Shape) -> None:
        super().__init__()
        self.audio = AudioViT(size, depth=11, input_size=shape.audio)
        self.video = VideoViT(size, depth=11, tubelet_size=1, num_frames=1, img_size=shape.img)
        d = self.audio.embed_dim
        self.fusion = JointFusion(d, depth=1, num_heads=self.audio.num_heads, single_norms=True)
        dims = {"audio": d, "video": d}
        patch = {"audio": self.audio.patch_dim, "video": self.video.patch_dim}
        grids = {"audio": self.audio.default_grid, "video": self.video.default_grid}
        dec = shape.extra["dec_dim"]
        self.decoder = JointDecoder(dims, patch, dec, 8, dec // 32, grids=grids)

    def forward(self, batch: AVBatch) -> dict[str, torch.Tensor]:
        audio, video = batch.audio, batch.video
        B, dev = audio.shape[0], audio.device
        ga, gv = self.audio.grid_size(audio.shape), self.video.grid_size(video.shape)
        ka, ma, ra = random_masking(B, self.audio.num_tokens(audio.shape), 0.75, dev)
        kv, mv, rv = random_masking(B, self.video.num_tokens(video.shape), 0.75, dev)
        za = self.audio.forward_features(audio, ka)  # [B, Na_keep, D]
        zv = self.video.forward_features(video, kv)  # [B, Nv_keep, D]
        fa, fv = self.fusion(za, zv)
        pred = self.decoder({"audio": (fa, ra, ga), "video": (fv, rv, gv)})
        rec_a = masked_mse(pred["audio"], self.audio.patchify(audio), ma)
        rec_v = masked_mse(pred["video"], self.video.patchify(video), mv)
        ca = self.fusion.forward_single(za, "audio").mean(dim=1)  # [B, D]
        cv = self.fusion.forward_single(zv, "video").mean(dim=1)
        nce = info_nce(ca, cv, temperature=0.05, symmetric=False)
        return {"loss": rec_a + rec_v + 0.01 * nce, "nce": nce}


class VideoMaeStep(nn.Module):
    """The VideoMAE step: tube mask 0.9, decoder 4 x 384, norm-pix MSE on masked tubelets."""

    def __init__(self, size: str, shape: Shape) -> None:
        super().__init__()
        self.video = VideoViT(size, num_frames=shape.frames, img_size=shape.img)
        dec = shape.extra["dec_dim"]
        self.decoder = TransformerDecoder(
            self.video.embed_dim,
            self.video.patch_dim,
            dec,
            4,
            dec // 64,
            grid=self.video.default_grid,
        )

    def forward(self, batch: AVBatch) -> dict[str, torch.Tensor]:
        video = batch.video
        grid = self.video.grid_size(video.shape)
        # VideoMAE's count: 20 of 196 positions visible per slice (MAE's would keep 19)
        s_keep = videomae_keep(grid[1] * grid[2], 0.9)
        keep, mask, restore = tube_masking(video.shape[0], grid, 0.9, video.device, s_keep=s_keep)
        pred = self.decoder(self.video.forward_features(video, keep), restore, grid)
        return {"loss": masked_mse(pred, self.video.patchify(video), mask)}


class ObjectiveStep(nn.Module):
    """Wraps an objective so that ``forward(batch)`` is its ``compute_losses``."""

    def __init__(self, objective: nn.Module) -> None:
        super().__init__()
        self.objective = objective

    def forward(self, batch: AVBatch) -> dict[str, torch.Tensor]:
        return self.objective.compute_losses(batch)


def build(name: str, size: str, shape: Shape) -> nn.Module | str:
    """The step module of a configuration, or a string saying why it is skipped."""
    if name == "cavmae":
        return CavMaeStep(size, shape)
    if name == "videomae":
        return VideoMaeStep(size, shape)
    if name == "mavil":
        if importlib.util.find_spec("avssl.objectives.mavil") is None:
            return "avssl.objectives.mavil does not exist yet"
        try:
            from avssl.objectives.mavil import MAViL
        except ImportError as err:
            return f"cannot import avssl.objectives.mavil ({err})"
        obj = MAViL(
            size=size,
            audio_frames=shape.audio[0],
            num_mel_bins=shape.audio[1],
            num_frames=shape.frames,
            img_size=shape.img,
            gather_negatives=False,
        )
        return ObjectiveStep(obj)
    raise SystemExit(f"bench/step.py: unknown config {name!r} (cavmae, videomae, mavil)")


def random_batch(shape: Shape, batch: int, device: torch.device, without_audio: int = 0) -> AVBatch:
    """Random inputs; ``without_audio`` clips have no audio (zeros, ``audio_mask`` False, the
    collate's ``modalities_complete`` note False), as the loader gives them."""
    g = torch.Generator(device="cpu").manual_seed(0)
    audio = torch.randn(batch, 1, *shape.audio, generator=g)  # [B, 1, Ta, F]
    video = torch.randn(batch, 3, shape.frames, shape.img, shape.img, generator=g)
    out = AVBatch(video=video, audio=audio, key=[str(i) for i in range(batch)])
    n = min(without_audio, batch)
    if n:
        out.audio[:n] = 0
        out.audio_mask = torch.arange(batch) >= n  # the first n clips are silent
        out.video_mask = torch.ones(batch, dtype=torch.bool)
        out.extra[MODALITIES_COMPLETE] = False
    return out.to(device)


def count_flops(model: nn.Module, batch: AVBatch) -> float:
    """Model FLOPs per sample of forward + backward (naive attention so that every backend's
    attention matmuls are counted; fp32, no optimizer). Leaves the model on naive attention."""
    set_fused_attention(model, False)
    counter = FlopCounterMode(display=False)
    with counter:
        model(batch)["loss"].backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / len(batch)


def compile_stacks(model: nn.Module, **options) -> int:
    """Compiles whole encoders (``forward_features``), fusion layers and decoders: fewer, larger
    graphs than ``compile_blocks`` (inductor can fuse across block boundaries), while masking,
    targets and losses stay eager. Returns the number of modules compiled."""
    count = 0
    for m in model.modules():
        if isinstance(m, ViTEncoder):
            m.forward_features = torch.compile(m.forward_features, dynamic=False, **options)  # type: ignore[method-assign]
            count += 1
        elif isinstance(m, JointFusion):  # its blocks, which forward_single runs too
            m._run = torch.compile(m._run, dynamic=False, **options)  # type: ignore[method-assign]
            count += 1
        elif isinstance(m, (JointDecoder, TransformerDecoder)):
            m.compile(dynamic=False, **options)
            count += 1
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    return count
