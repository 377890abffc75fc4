"""Video and audio transforms and the named presets."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

from avssl.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    BackgroundNoise,
    MultiScaleCrop,
    Normalize,
    RandomGain,
    RandomHorizontalFlip,
    RandomResizedCrop,
    ResizeCenterCrop,
    SpecAugment,
    build_audio_transforms,
    build_video_transform,
    preset_options,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def ramp_clip(t: int = 3, h: int = 48, w: int = 64) -> torch.Tensor:
    """uint8 [T, H, W, 3]: red = column, green = row, blue = frame index."""
    x = torch.zeros(t, h, w, 3, dtype=torch.uint8)
    x[..., 0] = torch.arange(w, dtype=torch.uint8)[None, None, :]
    x[..., 1] = torch.arange(h, dtype=torch.uint8)[None, :, None]
    x[..., 2] = torch.arange(t, dtype=torch.uint8)[:, None, None] * 50
    return x


def test_random_resized_crop_box_and_output():
    rrc = RandomResizedCrop(32, scale=(0.25, 1.0))
    areas = []
    for seed in range(20):
        top, left, ch, cw = rrc.box(48, 64, gen(seed))
        assert 0 <= top and top + ch <= 48 and 0 <= left and left + cw <= 64
        areas.append(ch * cw / (48 * 64))
        assert 3 / 4 - 0.05 <= cw / ch <= 4 / 3 + 0.05 or (ch, cw) == (48, 48)
    assert min(areas) >= 0.2 and max(areas) <= 1.0 and max(areas) - min(areas) > 0.2
    out = rrc(ramp_clip(), gen(3))
    assert out.shape == (3, 32, 32, 3) and out.dtype == torch.uint8
    assert torch.equal(out[..., 2], ramp_clip()[:, :32, :32, 2])  # one box for the whole clip
    assert torch.equal(rrc(ramp_clip(), gen(3)), out)  # seeded -> reproducible


def test_random_resized_crop_falls_back_as_torchvision():
    """When no drawn box fits (area 1.0 of a frame whose aspect is not drawn exactly), the
    crop is torchvision's fallback: the centred box of the whole frame, its aspect clamped
    to the ratio range (the full 4:3 UCF frame; 16:9 -> full height, 4:3 wide), not a square
    of 75 % / 56 % of the frame."""
    rrc = RandomResizedCrop(32, scale=(1.0, 1.0), ratio=(3 / 4, 4 / 3))
    for seed in range(5):
        assert rrc.box(240, 320, gen(seed)) == (0, 0, 240, 320)
        assert rrc.box(256, 455, gen(seed)) == (0, (455 - 341) // 2, 256, 341)
        assert rrc.box(455, 256, gen(seed)) == ((455 - 341) // 2, 0, 341, 256)
    tall = RandomResizedCrop(32, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert tall.box(240, 320, gen()) == (0, 40, 240, 240)  # a square when only 1:1 is allowed


def test_resize_center_crop_keeps_the_centre():
    x = ramp_clip(2, 40, 80)
    out = ResizeCenterCrop(40)(x)
    assert out.shape == (2, 40, 40, 3)
    assert int(out[0, 0, 0, 0]) == 20 and int(out[0, 0, -1, 0]) == 59  # columns 20..59
    small = ResizeCenterCrop(20)(x)
    assert small.shape == (2, 20, 20, 3)
    assert abs(int(small[0, 10, 10, 0]) - 40) <= 2 and abs(int(small[0, 10, 10, 1]) - 20) <= 2


def test_flip_mirrors_every_frame():
    x = ramp_clip()
    assert torch.equal(RandomHorizontalFlip(1.0)(x, gen()), x.flip(2))
    assert torch.equal(RandomHorizontalFlip(0.0)(x, gen()), x)


def test_normalize_values_and_layout():
    x = torch.full((2, 4, 5, 3), 128, dtype=torch.uint8)
    x[..., 1] = 0
    y = Normalize()(x)
    assert y.shape == (3, 2, 4, 5) and y.dtype == torch.float32
    assert y[0, 0, 0, 0] == pytest.approx((128 / 255 - IMAGENET_MEAN[0]) / IMAGENET_STD[0])
    assert y[1, 1, 3, 4] == pytest.approx((0 - IMAGENET_MEAN[1]) / IMAGENET_STD[1])
    plain = Normalize(mean=(0, 0, 0), std=(1, 1, 1))
    assert torch.allclose(plain(ramp_clip())[0, 0, 0], torch.arange(64) / 255.0)


def test_colour_jitter_changes_colour_within_range():
    x = torch.randint(0, 256, (2, 8, 8, 3), dtype=torch.uint8, generator=gen())
    plain = Normalize(mean=(0, 0, 0), std=(1, 1, 1))
    jit = Normalize(mean=(0, 0, 0), std=(1, 1, 1), jitter=0.4, jitter_p=1.0)
    y = jit(x, gen(1))
    assert y.min() >= 0 and y.max() <= 1 and not torch.allclose(y, plain(x))
    grey = torch.full((1, 4, 4, 3), 100, dtype=torch.uint8)  # saturation/contrast keep grey flat
    g = jit(grey, gen(2))
    assert torch.allclose(g, g.flatten()[0].expand_as(g), atol=1e-5)


def test_spec_augment_masks_bands():
    spec = torch.ones(100, 64)
    out = SpecAugment(freq_mask=10, time_mask=20)(spec, gen(5))
    zero_cols = (out == 0).all(0).sum()
    zero_rows = (out == 0).all(1).sum()
    assert 0 <= zero_cols <= 10 and 0 <= zero_rows <= 20 and zero_cols + zero_rows > 0
    assert torch.equal(spec, torch.ones(100, 64))  # the input is not modified
    hits = [(SpecAugment(10, 20)(spec, gen(s)) == 0).sum() > 0 for s in range(10)]
    assert sum(hits) >= 8


def test_gain_and_noise():
    wave = torch.sin(torch.linspace(0, 200, 16000))
    gains_db = []
    for seed in range(20):
        out = RandomGain(6.0, p=1.0)(wave, gen(seed))
        ratio = (out / wave)[wave.abs() > 0.1]  # one scalar gain over the whole wave
        assert torch.allclose(ratio, ratio[:1].expand_as(ratio), rtol=1e-4)
        gains_db.append(20 * math.log10(float(out.abs().max() / wave.abs().max())))
    assert all(-6.0 - 1e-4 <= g <= 6.0 + 1e-4 for g in gains_db)
    assert min(gains_db) < -2 and max(gains_db) > 2  # spread over the range, both signs
    assert torch.equal(RandomGain(6.0, p=0.0)(wave, gen()), wave)
    noisy = BackgroundNoise((20.0, 20.0), p=1.0)(wave, gen())
    snr = 10 * math.log10(float(wave.pow(2).mean() / (noisy - wave).pow(2).mean()))
    assert snr == pytest.approx(20.0, abs=0.5)
    assert torch.equal(BackgroundNoise(p=0.0)(wave, gen()), wave)


def test_presets():
    train = build_video_transform("train", 32)
    x = ramp_clip(4, 48, 64)
    outs = [train(x, gen(s)) for s in range(4)]
    assert all(o.shape == (3, 4, 32, 32) for o in outs)
    assert not all(torch.equal(outs[0], o) for o in outs[1:])
    ev = build_video_transform("eval", 32)
    assert torch.equal(ev(x, gen(0)), ev(x, gen(1)))
    wave_tf, spec_tf = build_audio_transforms("eval")
    assert not wave_tf.transforms and not spec_tf.transforms
    wave_tf, spec_tf = build_audio_transforms("train", {"freq_mask": 0, "time_mask": 0})
    assert len(wave_tf.transforms) == 2 and not spec_tf.transforms
    assert preset_options("none", {"flip_p": 0.5})["flip_p"] == 0.5
    with pytest.raises(ValueError, match="preset"):
        build_video_transform("fancy", 32)
    with pytest.raises(ValueError, match="blur"):
        preset_options("train", {"blur": 1.0})


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("hue", "0.1", "hue must be a number, got '0.1' (str)"),
        ("hue", 0.7, "hue must be in [0, 0.5]"),
        ("flip_p", 1.5, "flip_p must be a probability in [0, 1], got 1.5"),
        ("jitter", True, "jitter must be a number, got True"),
        ("gain_db", -3, "gain_db must be >= 0, got -3"),
        ("crop_scale", [0.5, 0.2], "crop_scale must be a range low <= high within (0.0, 1.0]"),
        ("crop_scale", [0.0, 1.0], "crop_scale must be a range"),
        ("crop_ratio", 0.75, "crop_ratio must be a pair of numbers"),
        ("noise_snr_db", [10, "x"], "noise_snr_db must be a pair of numbers"),
        ("freq_mask", 2.5, "freq_mask must be a whole number"),
        ("crop", "middle", "crop must be one of 'random', 'multiscale', 'center', got 'middle'"),
        ("blur", 1.0, "unknown augmentation option 'blur'"),
    ],
)
def test_bad_augmentation_overrides_are_refused(key, value, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        preset_options("train", {key: value})


def test_augmentation_overrides_keep_their_values():
    o = preset_options("mae", {"hue": 0.1, "crop_scale": [0.3, 1], "noise_snr_db": [5, 5]})
    assert o["hue"] == 0.1 and o["crop_scale"] == (0.3, 1.0) and o["noise_snr_db"] == (5.0, 5.0)
    assert o["flip_p"] == 0.0 and o["crop"] == "random"  # the preset's own values stay
    assert preset_options("train", {"time_mask": 0, "gain_db": 0})["time_mask"] == 0


def test_mae_preset_crops_only():
    """The masked autoencoders' preset: a random crop and nothing else (no flip, no colour
    change, no audio change), so that what they reconstruct is the clip itself."""
    mae = build_video_transform("mae", 32)
    assert [type(t) for t in mae.transforms] == [RandomResizedCrop, Normalize]
    norm = mae.transforms[-1]
    assert norm.jitter == 0 and norm.grey_p == 0
    x = ramp_clip(4, 48, 64)
    assert not torch.equal(mae(x, gen(0)), mae(x, gen(1)))  # the crop is random
    flat = torch.full((2, 40, 40, 3), 90, dtype=torch.uint8)  # one colour: any crop is the same
    want = build_video_transform("eval", 32)(flat, gen(0))
    for s in range(5):  # no jitter or grey-scale drawn in any of them
        torch.testing.assert_close(mae(flat, gen(s)), want)
    wave_tf, spec_tf = build_audio_transforms("mae")
    assert not wave_tf.transforms and not spec_tf.transforms


def test_multiscale_crop_draws_videomae_boxes():
    """VideoMAE's crop on a 340x256 frame at 224 px: sides 256, 224, 192, 168 (1, .875, .75,
    .66 of the short side; 224 is 1*.875*256 exactly), height and width at most one step
    apart in that list, the corner at quarters of the free space."""
    crop = MultiScaleCrop(224)
    sides = [256, 224, 192, 168]
    pairs = {(sides[i], sides[j]) for i in range(4) for j in range(4) if abs(i - j) <= 1}
    assert len(pairs) == 10
    quarters = {(0, 0), (0, 4), (4, 0), (4, 4), (2, 2), (2, 0), (2, 4), (4, 2), (0, 2)}
    quarters |= {(1, 1), (1, 3), (3, 1), (3, 3)}
    seen_sizes, seen_points = set(), set()
    g = gen(0)
    for _ in range(3000):
        top, left, ch, cw = crop.box(256, 340, g)
        assert (ch, cw) in pairs
        assert 0 <= top <= 256 - ch and 0 <= left <= 340 - cw
        qh, qw = (256 - ch) // 4, (340 - cw) // 4  # qw > 0: every width is below 340
        assert left % qw == 0
        if qh == 0:  # a full-height box: every point's row is the top
            assert top == 0 and left // qw in {c for _, c in quarters}
        else:
            assert top % qh == 0 and (top // qh, left // qw) in quarters
            seen_points.add((top // qh, left // qw))
        seen_sizes.add((ch, cw))
    assert seen_sizes == pairs  # every allowed box size is drawn
    assert seen_points == quarters  # and every one of the 13 points


def test_multiscale_crop_snaps_sides_near_the_output_and_stays_in_the_frame():
    g = gen(1)
    # 48x64 at 32 px: int(48 * .66) = 31 is within 2 px of 32, so it is taken as 32
    got = {MultiScaleCrop(32).box(48, 64, g)[2:] for _ in range(500)}
    assert got == {(48, 48), (48, 42), (42, 48), (42, 42), (42, 36), (36, 42), (36, 36),
                   (36, 32), (32, 36), (32, 32)}  # fmt: skip
    # 30x40 at 32 px: the full short side 30 snaps to 32, more than the frame: cut to 30
    for _ in range(200):
        top, left, ch, cw = MultiScaleCrop(32).box(30, 40, g)
        assert ch <= 30 and cw <= 40 and top + ch <= 30 and left + cw <= 40


def test_multiscale_crop_resizes_its_box():
    x = ramp_clip(3, 48, 64)
    crop = MultiScaleCrop(32)
    top, left, ch, cw = crop.box(48, 64, gen(5))
    want = torch.nn.functional.interpolate(
        x[:, top : top + ch, left : left + cw].permute(0, 3, 1, 2).float(),
        size=(32, 32), mode="bilinear", antialias=True, align_corners=False,
    )  # fmt: skip
    got = crop(x, gen(5))
    assert got.shape == (3, 32, 32, 3) and got.dtype == torch.uint8
    assert (got.permute(0, 3, 1, 2).float() - want).abs().max() <= 1.0  # uint8 rounding
    if (ch, cw) == (48, 48) and left == 0:  # a box from the left edge keeps column 0's red
        assert int(got[0, 0, 0, 0]) == 0


def test_videomae_preset_is_mae_with_the_multiscale_crop():
    vm = build_video_transform("videomae", 32)
    assert [type(t) for t in vm.transforms] == [MultiScaleCrop, Normalize]
    assert vm.transforms[-1].jitter == 0 and vm.transforms[-1].grey_p == 0
    assert preset_options("videomae") == {**preset_options("mae"), "crop": "multiscale"}
    x = ramp_clip(4, 48, 64)
    assert not torch.equal(vm(x, gen(0)), vm(x, gen(3)))
    mae = build_video_transform("mae", 32, overrides={"crop": "multiscale"})
    torch.testing.assert_close(mae(x, gen(7)), vm(x, gen(7)))  # the same as an override


def test_mavil_recipes_use_the_mae_preset():
    import yaml

    recipes = Path(__file__).resolve().parents[2] / "recipes"
    for name in ("mavil", "mavil_stage2"):
        cfg = yaml.safe_load((recipes / f"{name}.yaml").read_text())
        assert cfg["data"]["init_args"]["train_preset"] == "mae", name


def _jitter_reference(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Brightness, contrast and saturation of jitter 0.4 step by step (torchvision's order and
    formulas, one clamp at the end left to the caller), drawing as ``Normalize`` does: the
    ``jitter_p`` draw, then the three factors; [0, 1] values, unclamped."""
    grey_w = torch.tensor([0.299, 0.587, 0.114])
    torch.rand((), generator=g)  # the jitter_p draw
    b, c, s = (0.6 + 0.8 * float(torch.rand((), generator=g)) for _ in range(3))
    y = x.float() / 255 * b  # brightness
    m = float((x[:, ::4, ::4].float() / 255 @ grey_w).mean()) * b
    y = c * y + (1 - c) * m  # contrast around the mean grey level
    return s * y + (1 - s) * (y @ grey_w)[..., None]  # saturation towards per-pixel grey


def test_fused_jitter_matches_step_by_step_reference():
    x = torch.randint(0, 256, (2, 8, 12, 3), dtype=torch.uint8, generator=gen(7))
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    out = Normalize(mean, std, jitter=0.4, jitter_p=1.0)(x, gen(3))
    y = _jitter_reference(x, gen(3))
    y = (y.clamp(0, 1) - torch.tensor(mean)) / torch.tensor(std)
    assert torch.allclose(out, y.permute(3, 0, 1, 2), atol=1e-4)


def test_grey_scale_after_the_jitter_matches_a_step_by_step_reference():
    x = torch.randint(0, 256, (2, 8, 12, 3), dtype=torch.uint8, generator=gen(7))
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    grey_w = torch.tensor([0.299, 0.587, 0.114])
    for seed in range(8):
        out = Normalize(mean, std, jitter=0.4, jitter_p=1.0, grey_p=0.5)(x, gen(seed))
        g = gen(seed)
        y = _jitter_reference(x, g)
        if float(torch.rand((), generator=g)) < 0.5:  # the grey_p draw, after the jitter's
            y = (y @ grey_w)[..., None].expand_as(y)
        y = (y.clamp(0, 1) - torch.tensor(mean)) / torch.tensor(std)
        assert torch.allclose(out, y.permute(3, 0, 1, 2), atol=1e-4)


def test_grey_scale_gives_equal_channels_and_off_draws_nothing():
    x = torch.randint(0, 256, (3, 16, 16, 3), dtype=torch.uint8, generator=gen(1))
    out = Normalize(mean=(0, 0, 0), std=(1, 1, 1), grey_p=1.0)(x, gen(0))
    assert torch.allclose(out[0], out[1]) and torch.allclose(out[1], out[2])
    expect = (x.float() / 255) @ torch.tensor([0.299, 0.587, 0.114])
    assert torch.allclose(out[0], expect, atol=1e-5)
    # grey_p 0 draws nothing: after the jitter's 4 draws (p + 3 factors) the stream is where
    # four plain draws leave it; grey_p > 0 draws once more
    for grey_p, draws in ((0.0, 4), (0.5, 5)):
        g, ref = gen(5), gen(5)
        Normalize(jitter=0.4, jitter_p=1.0, grey_p=grey_p)(x, g)
        torch.rand(draws, generator=ref)
        assert torch.equal(torch.rand(3, generator=g), torch.rand(3, generator=ref))
    train = build_video_transform("train", 16, overrides={"grey_p": 1.0})
    y = train(x, gen(2))
    assert torch.allclose(y[0] * 0.229 + 0.485, y[1] * 0.224 + 0.456, atol=1e-5)


def test_hue_matrix_keeps_luma_and_grey_and_turns_like_hsv():
    import colorsys

    assert torch.allclose(Normalize.hue_matrix(0.0), torch.eye(3), atol=1e-6)
    assert torch.allclose(Normalize.hue_matrix(1.0), torch.eye(3), atol=1e-5)  # a full turn
    grey_w = torch.tensor([0.299, 0.587, 0.114])
    for h in (-0.3, 0.05, 0.2):
        mat = Normalize.hue_matrix(h)
        assert torch.allclose(grey_w @ mat, grey_w, atol=1e-5)  # luma unchanged
        assert torch.allclose(mat @ torch.full((3,), 0.5), torch.full((3,), 0.5), atol=1e-6)
    red = torch.tensor([0.8, 0.2, 0.2])
    for h in (0.05, -0.05):  # HSV hue of red moves by about h turns, in its direction
        turned = colorsys.rgb_to_hsv(*(Normalize.hue_matrix(h) @ red).clamp(0, 1).tolist())[0]
        assert abs((turned - h + 0.5) % 1 - 0.5) < 0.03, (h, turned)  # within ~11 degrees


def test_hue_jitter_matches_a_step_by_step_reference_and_off_draws_nothing():
    x = torch.randint(0, 256, (2, 8, 12, 3), dtype=torch.uint8, generator=gen(7))
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    for seed in range(4):
        out = Normalize(mean, std, jitter=0.4, jitter_p=1.0, hue=0.2)(x, gen(seed))
        g = gen(seed)
        y = _jitter_reference(x, g)
        h = -0.2 + 0.4 * float(torch.rand((), generator=g))  # the hue draw, last
        y = y @ Normalize.hue_matrix(h).T  # per pixel: hue rotation of the RGB vector
        y = (y.clamp(0, 1) - torch.tensor(mean)) / torch.tensor(std)
        assert torch.allclose(out, y.permute(3, 0, 1, 2), atol=1e-4)
    for hue, draws in ((0.0, 4), (0.1, 5)):  # hue 0 draws nothing
        g, ref = gen(5), gen(5)
        Normalize(jitter=0.4, jitter_p=1.0, hue=hue)(x, g)
        torch.rand(draws, generator=ref)
        assert torch.equal(torch.rand(3, generator=g), torch.rand(3, generator=ref))
    shifted = build_video_transform("train", 8, overrides={"hue": 0.5, "jitter": 0.0,
                                                           "jitter_p": 1.0, "crop": "center",
                                                           "flip_p": 0.0})  # fmt: skip
    plain = build_video_transform("eval", 8)
    assert not torch.allclose(shifted(x, gen(1)), plain(x, gen(1)), atol=1e-3)  # hue alone acts
    with pytest.raises(ValueError, match="hue"):
        build_video_transform("train", 8, overrides={"hue": 0.7})


def test_xkd_recipes_jitter_hue():
    import yaml

    recipes = Path(__file__).resolve().parents[2] / "recipes"
    for name in ("xkd", "xkd_shared"):
        augment = yaml.safe_load((recipes / f"{name}.yaml").read_text())["data"]["init_args"]
        assert augment["augment"]["hue"] == 0.2, name
