"""Bundles on a CUDA device: ``load_encoder(device="cuda")`` and ``embed`` match the CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

import avssl
from avssl import export
from tests.media import MEDIA

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory, fake_objectives) -> Path:
    from tests.export.export_fakes import fake_checkpoint, randomize

    tmp = tmp_path_factory.mktemp("gpu")
    obj = fake_objectives.TwoTower(depth=2)
    randomize(obj, 9)
    torch.save(fake_checkpoint(obj, "TwoTower"), tmp / "m.ckpt")
    export.export_checkpoint(tmp / "m.ckpt", tmp / "b")
    return tmp / "b"


def test_bundle_on_cuda_matches_cpu(bundle_dir):
    cpu = avssl.load_encoder(bundle_dir)
    gpu = avssl.load_encoder(bundle_dir, device="cuda")
    assert next(gpu.video.parameters()).device.type == "cuda"
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 3, 4, 32, 32, generator=gen)
    with torch.no_grad():
        ref, out = cpu.video(x), gpu.video(x.cuda()).cpu()
    # cuDNN may use TF32 for the tubelet convolution: close, not bit-identical
    assert float((out - ref).abs().max()) < 2e-2
    assert float(F.cosine_similarity(out, ref).min()) > 0.9999


@pytest.mark.skipif(not MEDIA.is_dir(), reason="shared/media not available")
def test_embed_on_cuda(bundle_dir):
    clip = MEDIA / "audioset_clip_h264_aac.mp4"
    ref = avssl.embed(avssl.load_encoder(bundle_dir), clip)
    out = avssl.embed(avssl.load_encoder(bundle_dir, device="cuda"), clip)
    for modality in ("audio", "video"):
        assert out[modality].device.type == "cpu" and out[modality].shape == (192,)
        cos = F.cosine_similarity(out[modality], ref[modality], dim=0)
        assert float(cos) > 0.9999
