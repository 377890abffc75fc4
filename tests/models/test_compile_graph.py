"""The masked training step traces into one torch.compile graph (no graph breaks)."""

from __future__ import annotations

import pytest
import torch

from avssl.losses.contrastive import info_nce
from avssl.losses.reconstruction import masked_mse
from avssl.models import AudioViT, VideoViT
from avssl.models.decoder import TransformerDecoder
from avssl.models.fusion import JointFusion
from avssl.models.layers import Block, compile_blocks
from avssl.models.masking import random_masking, time_freq_masking, tube_masking


def _build():
    audio = AudioViT("tiny", depth=1, input_size=(32, 32))
    video = VideoViT("tiny", depth=1, num_frames=2, img_size=32)
    fusion = JointFusion(192, depth=1, num_heads=3)
    dec_a = TransformerDecoder(192, audio.patch_dim, 64, 1, 4, grid=audio.default_grid)
    dec_v = TransformerDecoder(192, video.patch_dim, 64, 1, 4, grid=video.default_grid)
    return audio, video, fusion, dec_a, dec_v


def _encode_and_fuse(parts, audio, video, oks=(None, None)):
    """Masked encoders and the joint layers of the MAViL step: (fused audio, fused video,
    encoded audio, encoded video, the decoders' inputs and targets)."""
    audio_enc, video_enc, fusion, dec_a, dec_v = parts
    B = audio.shape[0]
    grid_a, grid_v = audio_enc.grid_size(audio.shape), video_enc.grid_size(video.shape)
    ka, ma, ra = random_masking(B, audio_enc.num_tokens(audio.shape), 0.75, audio.device)
    kv, mv, rv = tube_masking(B, grid_v, 0.5, video.device)
    za = audio_enc.forward_features(audio, ka)  # [B, Na_keep, D]
    zv = video_enc.forward_features(video, kv)  # [B, Nv_keep, D]
    fa, fv = fusion(za, zv, *oks)
    pred_a, pred_v = dec_a(fa, ra, grid_a), dec_v(fv, rv, grid_v)
    return za, zv, pred_a, pred_v, ma, mv, grid_a


def test_masked_step_has_no_graph_breaks() -> None:
    torch.manual_seed(0)
    parts = _build()
    audio_enc, video_enc, fusion = parts[:3]

    def step(audio: torch.Tensor, video: torch.Tensor) -> torch.Tensor:
        za, zv, pred_a, pred_v, ma, mv, grid_a = _encode_and_fuse(parts, audio, video)
        loss_a = masked_mse(pred_a, audio_enc.patchify(audio), ma)
        loss_v = masked_mse(pred_v, video_enc.patchify(video), mv)
        nce = info_nce(
            fusion.forward_single(za, "audio").mean(1), fusion.forward_single(zv, "video").mean(1)
        )
        _, m2, _ = time_freq_masking(audio.shape[0], grid_a, 0.5, 0.5, audio.device)
        return loss_a + loss_v + 0.01 * nce + 0.0 * m2.sum()

    # the default grid (cached buffers) and another input length (tables computed on the fly)
    for audio_shape in [(2, 1, 32, 32), (2, 1, 64, 32)]:
        torch._dynamo.reset()
        explanation = torch._dynamo.explain(step)(
            torch.randn(audio_shape), torch.randn(2, 3, 2, 32, 32)
        )
        assert explanation.graph_break_count == 0, explanation.break_reasons
        assert explanation.graph_count == 1
    torch._dynamo.reset()


def test_fusion_with_missing_modality_masks_has_no_graph_breaks() -> None:
    """The key mask of a batch with a missing modality is built from its flags with static
    shapes: still one graph, and the flags' values do not recompile it."""
    torch.manual_seed(0)
    parts = _build()
    audio_enc, video_enc = parts[:2]

    def step(audio, video, a_ok, v_ok):
        _, _, pred_a, pred_v, ma, mv, _ = _encode_and_fuse(parts, audio, video, (a_ok, v_ok))
        loss_a = masked_mse(pred_a, audio_enc.patchify(audio), ma * a_ok[:, None])
        return loss_a + masked_mse(pred_v, video_enc.patchify(video), mv)

    torch._dynamo.reset()
    args = (torch.randn(2, 1, 32, 32), torch.randn(2, 3, 2, 32, 32))
    explanation = torch._dynamo.explain(step)(*args, torch.tensor([1.0, 0.0]), torch.ones(2))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
    counts = torch._dynamo.utils.counters
    counts.clear()
    compiled = torch.compile(step, backend="eager", fullgraph=True)
    compiled(*args, torch.tensor([1.0, 0.0]), torch.ones(2))
    compiled(*args, torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.0]))
    assert counts["stats"]["unique_graphs"] == 1  # other flags, same graph
    torch._dynamo.reset()


def test_compile_blocks_compiles_each_block_in_place() -> None:
    torch.manual_seed(0)
    audio = AudioViT("tiny", depth=2, input_size=(32, 32))
    dec = TransformerDecoder(192, audio.patch_dim, 64, 1, 4, grid=audio.default_grid)
    model = torch.nn.ModuleDict({"audio": audio, "dec": dec})
    x = torch.randn(2, 1, 32, 32)
    keep, _, restore = random_masking(2, audio.num_tokens(x.shape), 0.5, x.device)
    grid = audio.grid_size(x.shape)
    expected = dec(audio.forward_features(x, keep), restore, grid)
    names = set(model.state_dict())
    with pytest.raises(ValueError, match="compile must be one of"):
        compile_blocks(model, "everything")
    assert compile_blocks(model, "none") == 0
    assert compile_blocks(model, "auto") == 0  # parameters on the CPU: nothing compiled
    torch._dynamo.reset()
    assert compile_blocks(model, "blocks", backend="eager") == 3  # 2 encoder + 1 decoder
    assert all(b._compiled_call_impl is not None for b in model.modules() if isinstance(b, Block))
    out = dec(audio.forward_features(x, keep), restore, grid)
    out.sum().backward()
    assert torch.allclose(out, expected, atol=1e-5)
    assert audio.blocks[0].attn.qkv.weight.grad is not None
    assert set(model.state_dict()) == names
    torch._dynamo.reset()
