"""XKD's local views and attention pooling (avssl.objectives._xkd_views)."""

from __future__ import annotations

import pytest
import torch

from avssl.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from avssl.models.vit import AudioViT, VideoViT
from avssl.objectives._xkd_views import (
    AUDIO_CANVAS,
    attention_pool,
    audio_resize_boxes,
    audio_resize_crop,
    local_audio_view,
    local_video_view,
    tokens_and_attention,
    whole_units,
)


def test_whole_units_round_down_to_patches_and_tubelets():
    assert whole_units(32, 4, 4) == 8  # XKD: 32 frames -> 8, tubelets of 4
    assert whole_units(112, 1.16, 16) == 96  # XKD: 112 px -> 96
    assert whole_units(400, 4, 16) == 96  # 100 fbank frames -> 6 patches
    assert whole_units(8, 4, 4) == 4  # at least one tubelet
    assert whole_units(20, 1, 16) == 16  # never more than the whole patches of the input


def test_audio_window_is_a_contiguous_slice_of_each_sample():
    torch.manual_seed(0)
    audio = torch.arange(6 * 40, dtype=torch.float32).view(6, 1, 40, 1).expand(6, 1, 40, 3)
    out = local_audio_view(audio, 16)
    assert out.shape == (6, 1, 16, 3)
    starts = set()
    for b in range(6):
        start = int(out[b, 0, 0, 0] - audio[b, 0, 0, 0])
        assert torch.equal(out[b], audio[b, :, start : start + 16])
        starts.add(start)
    assert len(starts) > 1  # drawn per sample


def _byol_a_resize_crop(fbank: torch.Tensor, box: list[int]) -> torch.Tensor:
    """XKD's / BYOL-A's random resize crop step by step for one ``[T, F]`` fbank and a given
    box (time start, frequency start, frames, bins): the fbank in the centre of a zero canvas
    1.5x its frames, the box cut out, resized back (bicubic, corners aligned)."""
    T, Fb = fbank.shape
    canvas = torch.zeros(int(T * 1.5), Fb)
    t0 = (canvas.shape[0] - T) // 2
    canvas[t0 : t0 + T] = fbank
    j, i, w, h = box
    cut = canvas[j : j + w, i : i + h]
    return torch.nn.functional.interpolate(
        cut[None, None], size=(T, Fb), mode="bicubic", align_corners=True
    )[0, 0]


def test_audio_resize_crop_matches_xkds_steps():
    g = torch.Generator().manual_seed(2)
    fbank = torch.randn(3, 1, 40, 32, generator=g)
    torch.manual_seed(5)
    boxes = audio_resize_boxes(3, 40, 32, torch.device("cpu"))
    assert audio_resize_crop(fbank, boxes).shape == fbank.shape
    boxes[0] = torch.tensor([5.0, 3.0, 30.0, 25.0])  # a box over the fbank's top edge
    out = audio_resize_crop(fbank, boxes)
    for b in range(3):
        want = _byol_a_resize_crop(fbank[b, 0], [int(v) for v in boxes[b]])
        torch.testing.assert_close(out[b, 0], want, atol=1e-4, rtol=0)
    identity = torch.tensor([[10.0, 0.0, 40.0, 32.0]])  # the fbank's own place on the canvas
    torch.testing.assert_close(audio_resize_crop(fbank[:1], identity), fbank[:1], atol=1e-5,
                               rtol=0)  # fmt: skip
    off = torch.tensor([[0.0, 0.0, 10.0, 32.0]])  # a box left of the fbank: all canvas zeros
    assert float(audio_resize_crop(fbank[:1], off).abs().max()) < 1e-6


def test_audio_resize_boxes_follow_xkds_ranges():
    torch.manual_seed(0)
    boxes = audio_resize_boxes(4000, 100, 128, torch.device("cpu"))
    t, f, w, h = boxes.unbind(1)
    canvas_t = int(100 * AUDIO_CANVAS[0])
    assert int(w.min()) == 60 and int(w.max()) == 149  # int(U(0.6, 1.5) x 100 frames)
    assert int(h.min()) == int(0.6 * 128) and int(h.max()) == 128  # cut to the 128 bins
    assert bool((t >= 0).all() and (t + w <= canvas_t).all())
    assert bool((f >= 0).all() and (f + h <= 128).all())
    assert int(t.min()) == 0 and int((t + w).max()) == canvas_t  # both ends of the canvas
    assert int(f.min()) == 0 and int((f + h).max()) == 128
    assert bool((f[h == 128] == 0).all())  # a full-height box has one place
    assert torch.equal(boxes, boxes.round())  # whole frames and bins


def test_identity_crop_returns_the_clip():
    """Full-area crop at the same size, aspect 1, no flip / grey / blur: the input frames."""
    torch.manual_seed(0)
    video = torch.randn(3, 3, 4, 16, 16)
    ok = 0
    for _ in range(20):  # aspect ratio is drawn; at area 1 it is clamped to the whole image
        out = local_video_view(video, 4, 16, (1.0, 1.0), flip_p=0, grey_p=0, blur_p=0)
        assert out.shape == video.shape
        ok += torch.allclose(out, video, atol=1e-5)
    assert ok == 20


def test_flip_mirrors_and_window_picks_frames():
    torch.manual_seed(1)
    video = torch.randn(2, 3, 8, 16, 16)
    out = local_video_view(video, 2, 16, (1.0, 1.0), flip_p=1, grey_p=0, blur_p=0)
    assert out.shape == (2, 3, 2, 16, 16)
    for b in range(2):
        flipped = video[b].flip(-1)
        matches = [
            torch.allclose(out[b], flipped[:, s : s + 2], atol=1e-5) for s in range(7)
        ]  # fmt: skip
        assert sum(matches) == 1


def test_local_crop_is_smaller_and_resized():
    torch.manual_seed(2)
    video = torch.linspace(-1, 1, 64).view(1, 1, 1, 1, 64).expand(4, 3, 8, 64, 64).contiguous()
    out = local_video_view(video, 2, 48, (0.08, 0.4), flip_p=0, grey_p=0, blur_p=0)
    assert out.shape == (4, 3, 2, 48, 48)
    span = out[..., -1] - out[..., 0]  # a horizontal ramp: the crop covers part of it
    assert (span > 0).all() and (span < 2 * 0.7).all()  # width <= sqrt(0.4 * 4/3) < 0.74


def test_grey_and_blur():
    torch.manual_seed(3)
    video = torch.randn(4, 3, 2, 20, 20)
    grey = local_video_view(video, 2, 20, (1.0, 1.0), flip_p=0, grey_p=1, blur_p=0)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1, 1)
    rgb = grey * std + mean
    assert torch.allclose(rgb[:, 0], rgb[:, 1], atol=1e-5)
    assert torch.allclose(rgb[:, 1], rgb[:, 2], atol=1e-5)
    blurred = local_video_view(video, 2, 20, (1.0, 1.0), flip_p=0, grey_p=0, blur_p=1)
    assert blurred.var() < 0.9 * video.var()  # a blur of white noise lowers its variance
    flat = torch.full((2, 3, 2, 20, 20), 0.3)
    assert torch.allclose(
        local_video_view(flat, 2, 20, (1.0, 1.0), flip_p=0, grey_p=0, blur_p=1), flat, atol=1e-5
    )  # a flat image stays flat


@pytest.mark.parametrize("enc", ["audio", "video"])
def test_tokens_and_attention_match_the_encoder_and_a_naive_attention(enc):
    torch.manual_seed(4)
    if enc == "audio":
        model = AudioViT("tiny", input_size=(32, 32), depth=2).eval()
        x = torch.randn(2, 1, 32, 32)
    else:
        model = VideoViT("tiny", depth=2, num_frames=4, img_size=32).eval()
        x = torch.randn(2, 3, 4, 32, 32)
    captured = {}
    last = model.blocks[-1]
    last.attn.register_forward_pre_hook(lambda m, a: captured.setdefault("x", a[0]))
    tokens, weights = tokens_and_attention(model, x)
    assert torch.allclose(tokens, model.forward_features(x), atol=1e-5)
    h = captured["x"]  # the normed input of the last attention
    B, N, D = h.shape
    qkv = last.attn.qkv(h).view(B, N, 3, last.attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    probs = torch.softmax(qkv[0] @ qkv[1].transpose(-1, -2) / qkv.shape[-1] ** 0.5, dim=-1)
    assert torch.allclose(weights, probs.mean(dim=(1, 2)), atol=1e-6)
    assert torch.allclose(weights.sum(dim=1), torch.ones(B), atol=1e-5)


def test_attention_pool_uniform_weights_and_energy():
    torch.manual_seed(5)
    tokens = torch.randn(3, 7, 8)
    uniform = torch.full((3, 7), 1 / 7)
    assert torch.allclose(attention_pool(tokens, uniform), tokens.mean(dim=1), atol=1e-6)
    weights = torch.softmax(torch.randn(3, 7) * 3, dim=1)
    pooled = attention_pool(tokens, weights)
    plain = tokens.mean(dim=1)
    assert torch.allclose(pooled.norm(dim=1), plain.norm(dim=1), atol=1e-5)
    direction = (tokens * weights[..., None]).sum(dim=1)
    assert torch.allclose(
        torch.nn.functional.cosine_similarity(pooled, direction, dim=1), torch.ones(3), atol=1e-5
    )
    assert not torch.allclose(pooled, plain, atol=1e-3)
