"""Fixtures of the objective tests: random AVBatches and tiny MAViL models (no data needed)."""

from __future__ import annotations

import pytest
import torch

from avssl.data.batch import AVBatch
from tests.objectives.batches import make_batch

TINY = dict(size="tiny", depth=1, decoder_depth=1, fusion_depth=1, proj_dim=32)


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
