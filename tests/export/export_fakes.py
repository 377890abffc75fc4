"""Tiny objectives and Lightning-style checkpoints for the export tests (built at test time).

The fake objectives live in a module registered as ``avssl.objectives._export_fakes`` so that
``avssl export`` (which only builds classes under ``avssl.objectives``) accepts them. They cover
the shapes of ``export_encoders()`` the real objectives return: two towers with an EMA teacher
(exported), audio only, and one backbone shared by both modalities.
"""

from __future__ import annotations

import copy
import struct
import sys
import types
import zipfile
from pathlib import Path

import torch

from avssl.models.vit import AudioViT, VideoViT
from avssl.objectives.base import AVObjective

FAKE_MODULE = "avssl.objectives._export_fakes"
AUDIO_FRAMES, MEL_BINS, NUM_FRAMES, CROP = 64, 32, 4, 32

DATA = {
    "num_frames": NUM_FRAMES,
    "frame_stride": 2,
    "target_fps": None,
    "crop_size": CROP,
    "video_mean": [0.45, 0.45, 0.45],
    "video_std": [0.225, 0.225, 0.225],
    "fbank": {
        "sample_rate": 16000,
        "num_mel_bins": MEL_BINS,
        "frame_shift_ms": 10.0,
        "frame_length_ms": 25.0,
        "target_frames": AUDIO_FRAMES,
        "mean": -5.0,
        "std": 4.0,
        "norm": "audiomae",
    },
}


def tiny_audio(depth: int = 1) -> AudioViT:
    return AudioViT(size="tiny", depth=depth, input_size=(AUDIO_FRAMES, MEL_BINS))


def tiny_video(depth: int = 1) -> VideoViT:
    return VideoViT(size="tiny", depth=depth, num_frames=NUM_FRAMES, img_size=CROP)


class TwoTower(AVObjective):
    """Student encoders + EMA teacher copies; exports the teacher (as MAViL stage 2 would)."""

    def __init__(self, depth: int = 1, **kwargs) -> None:
        super().__init__(**kwargs)
        self.audio_encoder, self.video_encoder = tiny_audio(depth), tiny_video(depth)
        self.teacher_audio = copy.deepcopy(self.audio_encoder)
        self.teacher_video = copy.deepcopy(self.video_encoder)
        self.register_buffer("queue", torch.zeros(3, 4))  # objective state, not exported

    def export_encoders(self) -> dict:
        note = "EMA teacher, as the paper evaluates"
        return {"audio": self.teacher_audio, "video": self.teacher_video, "which": "teacher",
                "note": note}  # fmt: skip


class AudioOnly(AVObjective):
    """An audio-only objective: the bundle has no video encoder."""

    def __init__(self) -> None:
        super().__init__()
        self.audio_encoder = tiny_audio()

    def export_encoders(self) -> dict:
        return {"audio": self.audio_encoder, "video": None, "which": "student", "note": ""}


class Shared(AVObjective):
    """One backbone for both modalities (both inputs go through ``self.encoder``)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = tiny_video()

    def export_encoders(self) -> dict:
        return {"audio": self.encoder, "video": self.encoder, "which": "student", "note": "shared"}


class Sized(AVObjective):
    """An audio encoder and a projection whose width is a hyper-parameter: hyper-parameters
    that do not fit the weights build tensors of other shapes."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.audio_encoder = tiny_audio()
        self.proj = torch.nn.Linear(self.audio_encoder.embed_dim, width)

    def export_encoders(self) -> dict:
        return {"audio": self.audio_encoder, "video": None, "which": "student", "note": ""}


class NoExport(AVObjective):
    """An objective that does not implement ``export_encoders()`` (nothing to export)."""


def register() -> types.ModuleType:
    mod = sys.modules.get(FAKE_MODULE)
    if mod is None:
        mod = types.ModuleType(FAKE_MODULE)
        for cls in (TwoTower, AudioOnly, Shared, Sized, NoExport):
            cls.__module__ = FAKE_MODULE
            setattr(mod, cls.__name__, cls)
        sys.modules[FAKE_MODULE] = mod
    return mod


def randomize(module: torch.nn.Module, seed: int) -> None:
    """Replaces every weight with seeded noise so that student and teacher differ, and the
    running statistics of batch norms with seeded values (means noise, variances 0.5-1.5)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
        for m in module.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))


def fake_checkpoint(objective: AVObjective, name: str, data: dict | None = None) -> dict:
    """A checkpoint dict shaped like the ones Lightning + AVObjective write."""
    return {
        "epoch": 2,
        "global_step": 17,
        "pytorch-lightning_version": "2.6.6",
        "state_dict": objective.state_dict(),
        "hyper_parameters": {**dict(objective.hparams), "_instantiator": "cli.instantiate"},
        "avssl": {
            "objective": f"{FAKE_MODULE}.{name}",
            "recipe": "fake",
            "version": "0.1.0",
            "data": DATA if data is None else data,
        },  # fmt: skip
        "loops": {},
        "optimizer_states": [],
    }


def flip_member_bytes(path: Path, member: str | None = None, count: int = 16) -> str:
    """Inverts ``count`` bytes in the middle of one stored member of a ``torch.save`` archive
    (default: its largest tensor file), leaving the zip structure intact, as a disk fault or a
    bad copy would; returns the member's name."""
    with zipfile.ZipFile(path) as archive:
        infos = [i for i in archive.infolist() if "/data/" in i.filename]
        info = next(i for i in infos if i.filename == member) if member else None
        info = info or max(infos, key=lambda i: i.file_size)
    with open(path, "r+b") as f:
        f.seek(info.header_offset + 26)  # the local header's name and extra-field lengths
        name_len, extra_len = struct.unpack("<HH", f.read(4))
        start = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
        f.seek(start)
        flipped = bytes(b ^ 0xFF for b in f.read(count))
        f.seek(start)
        f.write(flipped)
    return info.filename
