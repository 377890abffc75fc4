"""Fixtures of the objective tests: random AVBatches and tiny MAViL models (no data needed)."""

from __future__ import annotations

import pytest
import torch

from avssl.data.batch import AVBatch

TINY = dict(size="tiny", depth=1, decoder_depth=1, fusion_depth=1, proj_dim=32)


def make_batch(
    B: int = 4, frames: int = 4, px: int = 32, audio_frames: int = 64, mel: int = 32, seed: int = 0
) -> AVBatch:
    """A random normalised batch: video ``[B, 3, T, H, W]``, audio ``[B, 1, Ta, F]``."""
    g = torch.Generator().manual_seed(seed)
    return AVBatch(
        video=torch.randn(B, 3, frames, px, px, generator=g),
        audio=torch.randn(B, 1, audio_frames, mel, generator=g),
        key=[f"fake/{i}" for i in range(B)],
        label=torch.arange(B) % 2,
        video_mask=torch.ones(B, dtype=torch.bool),
        audio_mask=torch.ones(B, dtype=torch.bool),
    )


@pytest.fixture
def batch() -> AVBatch:
    return make_batch()


@pytest.fixture
def tiny_mavil():
    """Factory of tiny MAViL objectives; masks of 0.75 keep tokens visible on 32-px inputs."""
    from avssl.objectives.mavil import MAViL

    def build(**overrides):
        torch.manual_seed(0)
        kw = dict(TINY, mask_ratio_audio=0.75, mask_ratio_video=0.75, **overrides)
        return MAViL(**kw)

    return build
