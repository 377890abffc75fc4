"""Encoder shapes, patchify, sin-cos positions, config round trip, input errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from avssl.models import SIZES, AudioViT, VideoViT, build_encoder
from avssl.models.layers import (
    PatchEmbed2d,
    PatchEmbed3d,
    set_flex_attention,
    set_fused_attention,
)
from avssl.models.masking import random_masking
from avssl.models.pos_embed import sincos_pos_embed


def _expected_params(D: int, L: int, patch_dim: int) -> int:
    block = 12 * D * D + 13 * D  # qkv, proj, fc1, fc2 (+ biases) and two LayerNorms
    return L * block + patch_dim * D + D + 2 * D  # + patch embed + final norm


@pytest.mark.parametrize("size", ["tiny", "small", "base", "large"])
def test_encoder_dims_every_size(size: str) -> None:
    D, L, H = SIZES[size]
    with torch.device("meta"):  # full depth, no memory or init cost
        encoders = (AudioViT(size), VideoViT(size))
    for enc in encoders:
        assert enc.embed_dim == D and enc.depth == L == len(enc.blocks)
        assert enc.blocks[0].attn.num_heads == H and enc.blocks[0].mlp.fc1.out_features == 4 * D
        assert sum(p.numel() for p in enc.parameters()) == _expected_params(D, L, enc.patch_dim)


@pytest.mark.parametrize("size", ["tiny", "small", "base", "large"])
def test_encoder_shapes_every_size(size: str) -> None:
    D = SIZES[size][0]
    audio = AudioViT(size, depth=1, input_size=(32, 32))
    video = VideoViT(size, depth=1, num_frames=4, img_size=32)
    a = torch.randn(2, 1, 32, 48)  # 2 x 3 patches
    v = torch.randn(2, 3, 4, 32, 48)  # 2 x 2 x 3 tubelets
    with torch.no_grad():
        assert audio.forward_features(a).shape == (2, 6, D)
        assert audio(a).shape == (2, D)
        assert video.forward_features(v).shape == (2, 12, D)
        assert video(v).shape == (2, D)
    assert torch.isfinite(audio(a)).all() and torch.isfinite(video(v)).all()


def test_sizes_table() -> None:
    assert SIZES == {
        "tiny": (192, 12, 3),
        "small": (384, 12, 6),
        "base": (768, 12, 12),
        "large": (1024, 24, 16),
    }


def test_keep_all_equals_no_keep_and_visible_shapes() -> None:
    torch.manual_seed(0)
    enc = AudioViT("tiny", depth=2, input_size=(64, 32)).eval()
    x = torch.randn(3, 1, 64, 32)
    N = enc.num_tokens(x.shape)
    full = enc.forward_features(x)
    all_keep = torch.arange(N).expand(3, N)
    torch.testing.assert_close(enc.forward_features(x, all_keep), full)
    keep, _, _ = random_masking(3, N, 0.75)
    vis = enc.forward_features(x, keep)
    assert vis.shape == (3, N // 4, 192)
    torch.testing.assert_close(enc(x, keep), vis.mean(1))
    # the visible-token run must not depend on the masked tokens' content
    x2 = x.clone()
    masked = torch.ones(3, N, dtype=torch.bool).scatter(1, keep, False)
    patches = enc.patchify(x2)
    patches[masked] = 100.0
    x2 = enc.unpatchify(patches, enc.grid_size(x.shape))
    torch.testing.assert_close(enc.forward_features(x2, keep), vis)


def test_fused_and_naive_attention_agree() -> None:
    torch.manual_seed(0)
    enc = VideoViT("tiny", depth=2, num_frames=4, img_size=32).eval()
    v = torch.randn(2, 3, 4, 32, 32)
    fused = enc.forward_features(v)
    assert set_fused_attention(enc, False) == 2
    torch.testing.assert_close(enc.forward_features(v), fused, atol=1e-5, rtol=1e-4)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_attention_agrees_with_sdpa() -> None:
    """FlexAttention (a benchmark option) computes the same attention as SDPA (forward only:
    PyTorch has no FlexAttention backward on CPU)."""
    torch.manual_seed(0)
    enc = VideoViT("tiny", depth=2, num_frames=4, img_size=32).eval()
    v = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        fused = enc.forward_features(v)
        assert set_flex_attention(enc, True) == 2
        flex = enc.forward_features(v)
    assert not torch.equal(flex, torch.zeros_like(flex))
    torch.testing.assert_close(flex, fused, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("cls", [AudioViT, VideoViT])
def test_patchify_matches_patch_embedding_and_inverts(cls) -> None:
    torch.manual_seed(0)
    if cls is AudioViT:
        enc, x = AudioViT("tiny", depth=1, input_size=(32, 32)), torch.randn(2, 1, 48, 32)
        w = enc.patch_embed.proj.weight.permute(0, 2, 3, 1)  # [D, p, p, C]
    else:
        enc, x = VideoViT("tiny", depth=1, num_frames=4, img_size=32), torch.randn(2, 3, 4, 32, 48)
        w = enc.patch_embed.proj.weight.permute(0, 2, 3, 4, 1)  # [D, t, p, p, C]
    patches = enc.patchify(x)
    assert patches.shape == (2, enc.num_tokens(x.shape), enc.patch_dim)
    # patch vector n is exactly what the conv embeds as token n
    tokens = patches @ w.reshape(192, -1).t() + enc.patch_embed.proj.bias
    torch.testing.assert_close(tokens, enc.patch_embed(x), atol=1e-5, rtol=1e-4)
    assert torch.equal(enc.unpatchify(patches, enc.grid_size(x.shape)), x)


def test_audio_patch_layout_by_hand() -> None:
    enc = AudioViT("tiny", depth=1, patch_size=2, input_size=(4, 4))
    x = torch.arange(16.0).reshape(1, 1, 4, 4)  # time x freq
    patches = enc.patchify(x)
    # token 1 = time rows 0-1, freq cols 2-3, vector ordered (p_t, p_f)
    assert patches[0, 1].tolist() == [2.0, 3.0, 6.0, 7.0]
    assert patches[0, 2].tolist() == [8.0, 9.0, 12.0, 13.0]


def _numpy_sincos_1d(pos: np.ndarray, dim: int) -> np.ndarray:
    omega = 1.0 / 10000 ** (np.arange(dim // 2) / (dim / 2))
    out = np.einsum("n,d->nd", pos.astype(np.float64), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def test_sincos_2d_matches_numpy_reference() -> None:
    gh, gw, D = 3, 5, 16
    table = sincos_pos_embed((gh, gw), D)[0].numpy()
    rows, cols = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
    ref = np.concatenate(
        [_numpy_sincos_1d(rows.reshape(-1), 8), _numpy_sincos_1d(cols.reshape(-1), 8)], axis=1
    )
    np.testing.assert_allclose(table, ref, atol=1e-6)
    # position (0, 0): sin 0 = 0 and cos 0 = 1 in each half
    assert table[0].tolist() == [0.0] * 4 + [1.0] * 4 + [0.0] * 4 + [1.0] * 4
    assert table.shape == (15, 16)


def test_sincos_3d_split_and_time_part() -> None:
    table = sincos_pos_embed((2, 3, 4), 1024)[0]
    assert table.shape == (24, 1024)
    # 1024 = 344 (time) + 340 + 340; the time part is constant within a time slice
    time_part = table[:, :344].reshape(2, 12, 344)
    assert torch.equal(time_part, time_part[:, :1].expand_as(time_part))
    assert not torch.equal(time_part[0, 0], time_part[1, 0])


def test_pos_embed_adapts_to_other_input_lengths() -> None:
    enc = AudioViT("tiny", depth=1, input_size=(64, 32))
    assert enc.pos_embed_for((4, 2)) is enc.pos_embed.table  # default grid: cached buffer
    short = enc.pos_embed_for((2, 2))
    # the row-major table of a shorter time axis is the prefix of the longer one
    torch.testing.assert_close(short, enc.pos_embed.table[:, :4])
    assert enc.forward_features(torch.randn(1, 1, 160, 32)).shape == (1, 20, 192)
    video = VideoViT("tiny", depth=1, num_frames=4, img_size=32)
    out = video.forward_features(torch.randn(1, 3, 8, 64, 32))
    assert out.shape == (1, 4 * 4 * 2, 192)
    assert "pos_embed.table" not in enc.state_dict()  # fixed, never saved


def _resize(table: torch.Tensor, base: tuple[int, ...], grid: tuple[int, ...], mode: str):
    """Reference: ``F.interpolate`` of a ``[1, N, D]`` table (XKD / DINO)."""
    D = table.shape[-1]
    x = table[0].double().T.reshape(1, D, *base)  # [1, D, *base]
    x = torch.nn.functional.interpolate(x, size=grid, mode=mode, align_corners=False)
    return x.reshape(D, -1).T[None].float()  # [1, N, D]


def test_interpolated_positions_for_a_smaller_grid() -> None:
    """XKD's local views (32 frames 112 px -> 8 frames 96 px; 4 s -> 1 s of audio): with
    ``pos_for_smaller_grid="interpolate"`` the global table resized to the local grid (XKD's
    trilinear video / bicubic audio); the global grid and larger grids are unchanged."""
    video = VideoViT("tiny", depth=1, tubelet_size=4, num_frames=32, img_size=112,
                     pos_for_smaller_grid="interpolate")  # fmt: skip
    prefix = VideoViT("tiny", depth=1, tubelet_size=4, num_frames=32, img_size=112)
    glob, local = (8, 7, 7), (2, 6, 6)
    assert video.pos_embed_for(glob) is video.pos_embed.table
    torch.testing.assert_close(video.pos_embed_for(glob), sincos_pos_embed(glob, 192))
    want = _resize(sincos_pos_embed(glob, 192), glob, local, "trilinear")
    torch.testing.assert_close(video.pos_embed_for(local), want, rtol=0, atol=1e-6)
    first = sincos_pos_embed(glob, 192)[0].view(*glob, -1)[:2, :6, :6].reshape(1, -1, 192)
    torch.testing.assert_close(prefix.pos_embed_for(local), first)  # default: unchanged
    assert not torch.allclose(video.pos_embed_for(local), first, atol=1e-3)
    # the local view's positions span the clip: its last frame pair sits near the clip's end
    t_part = video.pos_embed_for(local)[0].view(*local, -1)[:, 0, 0, :64]  # time channels
    near = sincos_pos_embed(glob, 192)[0].view(*glob, -1)[:, 0, 0, :64]
    assert int((near - t_part[-1]).norm(dim=-1).argmin()) >= 5
    bigger = (8, 8, 8)  # not smaller on every axis: its own table
    torch.testing.assert_close(video.pos_embed_for(bigger), sincos_pos_embed(bigger, 192))
    audio = AudioViT("tiny", depth=1, input_size=(400, 128), pos_for_smaller_grid="interpolate")
    want = _resize(sincos_pos_embed((25, 8), 192), (25, 8), (6, 8), "bicubic")
    torch.testing.assert_close(audio.pos_embed_for((6, 8)), want, rtol=0, atol=1e-6)
    x = torch.randn(1, 3, 8, 96, 96)
    prefix.load_state_dict(video.state_dict())
    assert not torch.allclose(video.forward_features(x), prefix.forward_features(x))
    assert build_encoder(video.config()).pos_for_smaller_grid == "interpolate"
    with pytest.raises(ValueError, match="pos_for_smaller_grid must be one of"):
        AudioViT("tiny", depth=1, pos_for_smaller_grid="nearest")


@pytest.mark.parametrize("cls", [AudioViT, VideoViT])
def test_config_round_trip(cls) -> None:
    torch.manual_seed(0)
    enc = cls("small", depth=1)
    cfg = json.loads(json.dumps(enc.config()))
    assert cfg["modality"] == ("audio" if cls is AudioViT else "video")
    rebuilt = build_encoder(cfg)
    assert type(rebuilt) is cls and rebuilt.config() == enc.config()
    rebuilt.load_state_dict(enc.state_dict())
    x = torch.randn(1, 1, 32, 32) if cls is AudioViT else torch.randn(1, 3, 2, 32, 32)
    torch.testing.assert_close(rebuilt(x), enc(x))


def test_bad_inputs_raise_clear_errors() -> None:
    enc = AudioViT("tiny", depth=1, input_size=(32, 32))
    with pytest.raises(ValueError, match="not divisible"):
        enc(torch.randn(1, 1, 30, 32))
    with pytest.raises(ValueError, match=r"expects \[B, 1, Ta, F\]"):
        enc(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="unknown encoder size"):
        AudioViT("huge")
    with pytest.raises(ValueError, match="unknown modality"):
        build_encoder({"modality": "text"})
    with pytest.raises(ValueError, match="encoder config for video"):
        build_encoder({"modality": "video", "size": "tiny", "bogus": 1})
    assert math.prod(enc.grid_size((1, 1, 32, 64))) == 8


@pytest.mark.parametrize(
    "embed, shape",
    [
        (PatchEmbed2d(16, 1, 24), (2, 1, 64, 48)),
        (PatchEmbed2d(4, 3, 8), (1, 3, 18, 10)),  # sides not divisible: the remainder is dropped
        (PatchEmbed3d(8, 2, 3, 16), (2, 3, 4, 16, 24)),
        (PatchEmbed3d(4, 2, 3, 8), (1, 3, 5, 10, 9)),
    ],
)
def test_patch_embedding_equals_the_strided_convolution(embed, shape) -> None:
    # the patch embeddings compute the convolution as a matrix product over the patches; the
    # parameters are the convolution's, so its output (tokens in flatten order) is the reference
    torch.manual_seed(0)
    x = torch.randn(*shape)
    ref = embed.proj(x).flatten(2).transpose(1, 2)  # [B, N, D]
    out = embed(x)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    # gradients reach the same parameters with the same values
    (g_out,) = torch.autograd.grad(out.square().sum(), embed.proj.weight)
    (g_ref,) = torch.autograd.grad(ref.square().sum(), embed.proj.weight)
    torch.testing.assert_close(g_out, g_ref, atol=1e-4, rtol=1e-4)
