"""Local views made by the loader (avssl.data.local_view): the spec's checks, the windows they
are cut from, their own colour jitter and volume, both placements of the last steps, repeated
sampling, and the batches that carry none."""

from __future__ import annotations

import math

import pytest
import torch

from avssl.data.batch import AVBatch
from avssl.data.datamodule import AVDataModule
from avssl.data.fbank import FbankConfig
from avssl.data.local_view import LocalViews, LocalViewSpec
from avssl.data.transforms import IMAGENET_MEAN, IMAGENET_STD

PLAIN = {"flip_p": 0.0, "jitter": 0.0, "grey_p": 0.0, "gain_p": 0.0}  # geometry only


def _spec(**augment) -> LocalViewSpec:
    return LocalViewSpec(frames=2, size=16, audio_frames=32, augment={**PLAIN, **augment})


def _views(spec: LocalViewSpec, on_device: bool = False, k: int = 1) -> LocalViews:
    return LocalViews(
        spec, FbankConfig(), IMAGENET_MEAN, IMAGENET_STD, k, ("audio", "video"), on_device
    )


@pytest.mark.parametrize(
    "spec, match",
    [
        (LocalViewSpec(0, 16, 32), "frames must be a whole number >= 1"),
        (LocalViewSpec(2, 16.5, 32), "size must be a whole number >= 1"),  # type: ignore[arg-type]
        (LocalViewSpec(5, 16, 32), "does not fit in clips of 4 frames"),
        (LocalViewSpec(2, 16, 129), "does not fit in clips of 4 frames and 128 fbank frames"),
        (LocalViewSpec(2, 16, 32, {"noise_p": 0.5}), "takes no noise or SpecAugment"),
        (LocalViewSpec(2, 16, 32, {"time_mask": 8}), "takes no noise or SpecAugment"),
        (LocalViewSpec(2, 16, 32, {"blur_p": 0.5}), "unknown augmentation option 'blur_p'"),
        (LocalViewSpec(2, 16, 32, {"grey_p": 2}), "grey_p must be a probability"),
    ],
)
def test_a_view_the_clips_cannot_give_is_refused_in_one_line(spec, match) -> None:
    with pytest.raises(ValueError, match=match) as err:
        spec.check(num_frames=4, audio_frames=128)
    assert "\n" not in str(err.value)


def test_request_refuses_bad_views_and_mismatched_audio(synth, small_args) -> None:
    dm = AVDataModule(str(synth), **small_args())
    with pytest.raises(ValueError, match="does not fit"):
        dm.request_local_view(LocalViewSpec(8, 16, 32))
    assert dm.local_view is None
    dm = AVDataModule(str(synth), **small_args(audio_mode="mismatched"))
    with pytest.raises(ValueError, match="do not go with audio_mode 'mismatched'"):
        dm.request_local_view(_spec())


def test_local_frames_are_a_window_of_the_clip_cropped_from_the_whole_frame() -> None:
    # frame i is filled with grey level 20 i + 10; the crop of any box keeps the level
    T, H, W = 6, 40, 60
    clip = (torch.arange(T) * 20 + 10).view(T, 1, 1, 1).expand(T, H, W, 3).to(torch.uint8)
    times = [[0.5 + 0.25 * i for i in range(T)]]
    views = _views(_spec(crop_scale=[0.08, 0.4]))
    seen = set()
    for seed in range(12):
        out, starts = views.video([clip], times, torch.Generator().manual_seed(seed))
        assert out.shape == (1, 3, 2, 16, 16)
        std, mean = torch.tensor(IMAGENET_STD)[0], torch.tensor(IMAGENET_MEAN)[0]
        levels = ((out[0, 0, :, 0, 0] * std + mean) * 255).round()  # red channel per frame
        first = int((levels[0] - 10) / 20)
        assert levels.tolist() == [20 * first + 10, 20 * (first + 1) + 10]  # contiguous frames
        assert starts == [times[0][first]]
        seen.add(first)
    assert seen == set(range(T - 1))  # every window start is drawn


def test_local_crop_is_small_and_of_the_frame() -> None:
    # a horizontal ramp 0..255 over the width: the crop's width shows as the range it spans
    W = 200
    ramp = torch.linspace(0, 255, W).round().to(torch.uint8)
    clip = ramp.view(1, 1, W, 1).expand(2, 100, W, 3).contiguous()
    views = _views(_spec(crop_scale=[0.08, 0.4]))
    spans = []
    for seed in range(20):
        out, _ = views.video([clip], [[0.0, 0.1]], torch.Generator().manual_seed(seed))
        row = out[0, 0, 0, 8] * IMAGENET_STD[0] + IMAGENET_MEAN[0]  # [16] in 0..1
        spans.append(float(row.max() - row.min()))
    # area 0.08-0.4 with aspect 3/4-4/3 of a 100 x 200 frame: width 0.2-0.73 of the frame
    assert 0.12 < min(spans) and max(spans) < 0.75


def test_local_colour_jitter_and_volume_are_drawn_per_view() -> None:
    clip = torch.full((4, 24, 24, 3), 128, dtype=torch.uint8)
    t = torch.arange(16000 * 2) / 16000
    wave = 0.3 * torch.sin(2 * math.pi * 440 * t)
    still, jittered = _views(_spec()), _views(_spec(jitter=0.4, jitter_p=1.0, gain_db=6.0,
                                                     gain_p=1.0))  # fmt: skip
    times = [[0.0, 0.1, 0.2, 0.3]]
    base, _ = still.video([clip], times, torch.Generator().manual_seed(0))
    base_a, _ = still.audio(wave, [0], 16000, torch.Generator().manual_seed(0))
    means, shifts = [], []
    for seed in range(8):
        x, _ = jittered.video([clip], times, torch.Generator().manual_seed(seed))
        a, _ = jittered.audio(wave, [0], 16000, torch.Generator().manual_seed(seed))
        means.append(float(x.mean() - base.mean()))
        peak = base_a[0, 0].mean(dim=0).argmax()  # the sine's mel bin
        shifts.append(float((a[0, 0, :, peak] - base_a[0, 0, :, peak]).mean()))
    assert max(means) - min(means) > 0.1  # brightness / contrast differ from view to view
    # a gain of g dB shifts the log-mel by g ln(10) / 10, the AudioMAE-normalised fbank by
    # that over 2 std: at most 6 dB -> 0.151 here
    bound = 6.0 * math.log(10) / 10 / (2 * FbankConfig().std)
    assert all(abs(s) <= bound * 1.01 for s in shifts) and max(shifts) - min(shifts) > 0.05


def test_local_audio_window_lies_in_the_clip_window_cut_to_the_recording() -> None:
    views = _views(_spec())
    local = views.window  # samples of 32 fbank frames
    wave = torch.randn(30000)
    for a, window in ((1000, 16000), (20000, 16000), (0, 40000)):
        lo, hi = a, max(a, min(a + window, len(wave)) - local)
        for seed in range(10):
            out, seconds = views.audio(wave, [a], window, torch.Generator().manual_seed(seed))
            assert out.shape == (1, 1, 32, 128)
            assert lo <= round(seconds[0] * 16000) <= hi


def _train_batches(data, small_args, mode: str, n: int = 2, **kw) -> list[AVBatch]:
    dm = AVDataModule(str(data), **small_args(features_on=mode, batches_per_epoch=n, **kw))
    dm.request_local_view(_spec(jitter=0.4, jitter_p=1.0, hue=0.2, grey_p=0.5, gain_db=3.0,
                                gain_p=1.0, flip_p=0.5))  # fmt: skip
    dm.setup("fit")
    return [dm.on_after_batch_transfer(b, 0) for b in dm.train_dataloader(0, 1)]


def test_training_batches_carry_local_views_in_both_placements(synth, small_args) -> None:
    loader, device = (_train_batches(synth, small_args, m) for m in ("loader", "device"))
    for a, b in zip(loader, device):
        for x in (a, b):
            assert x.local is not None and x.local.key == x.key
            assert x.local.video.shape == (2, 3, 2, 16, 16)
            assert x.local.audio.shape == (2, 1, 32, 128)
            assert torch.equal(x.local.video_mask, x.video_mask)
            assert torch.equal(x.local.audio_mask, x.audio_mask)
            assert x.local.video_u8 is None and x.local.audio_wave is None  # finished
            assert (x.local.clip_start >= x.clip_start).all()
        torch.testing.assert_close(a.local.video, b.local.video, rtol=0, atol=1e-4)
        torch.testing.assert_close(a.local.audio, b.local.audio, rtol=0, atol=1e-3)
        torch.testing.assert_close(a.video, b.video, rtol=0, atol=1e-4)


def test_local_views_follow_repeated_sampling_and_clip_axes(synth, small_args) -> None:
    batches = _train_batches(synth, small_args, "loader", n=1, repeated_sampling=2,
                             clips_per_video=2)  # fmt: skip
    (b,) = batches
    assert b.video.shape[:2] == (2, 2) and b.local.video.shape == (2, 2, 3, 2, 16, 16)
    assert b.local.audio.shape == (2, 2, 1, 32, 128) and b.local.key == b.key


def test_requested_views_come_with_training_and_validation_batches(synth, small_args) -> None:
    dm = AVDataModule(str(synth), **small_args(batches_per_epoch=1))
    dm.setup("fit")
    assert next(iter(dm.train_dataloader(0, 1))).local is None  # not asked for: none
    assert next(iter(dm.val_dataloader(0, 1))).local is None
    dm.request_local_view(_spec(jitter=0.4, jitter_p=1.0))
    assert next(iter(dm.train_dataloader(0, 1))).local is not None
    first, again = (next(iter(dm.val_dataloader(0, 1))) for _ in range(2))
    assert first.local is not None and first.local.video.shape == (2, 3, 2, 16, 16)
    assert torch.equal(first.local.video, again.local.video)  # validation draws are fixed
    assert dm.eval_loader("test1").dataset.proc.local is None  # evaluation: never


def test_batch_moves_and_pins_its_local_views() -> None:
    local = AVBatch(video=torch.zeros(1, 3, 2, 4, 4), audio=torch.zeros(1, 1, 8, 4), key=["a"])
    batch = AVBatch(video=torch.zeros(1, 3, 4, 8, 8), audio=torch.zeros(1, 1, 16, 4), key=["a"],
                    local=local)  # fmt: skip
    moved = batch.to("meta")
    assert moved.local is not None and moved.local.video.device.type == "meta"
    assert moved.video.device.type == "meta" and batch.local.video.device.type == "cpu"
