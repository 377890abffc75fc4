"""Batches finished after the transfer (``features_on="device"``) equal the loader's: batched
fbank against the per-clip one, SpecAugment bands and colour affine maps drawn in the loader,
whole batches of both modes from the same seed, missing audio or video, the Trainer path and
the option's validation."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch

from avssl.data.batch import AVBatch
from avssl.data.batching import features_on_device
from avssl.data.datamodule import AVDataModule
from avssl.data.fbank import FbankConfig, compute_fbank, compute_fbank_batch, log_mel_batch
from avssl.data.transforms import Normalize, SpecAugment, apply_affine


def test_batched_fbank_equals_the_per_clip_fbank_for_any_length() -> None:
    cfg = FbankConfig(target_frames=64)
    size = cfg.samples_for_frames(64)  # 10,480 samples
    lengths = [size, size - 1234, 4000, 401, 400, 399, 1]  # full, shorter, < one frame, 1
    gen = torch.Generator().manual_seed(0)
    waves = torch.zeros(len(lengths), size)
    for i, n in enumerate(lengths):
        waves[i, :n] = 0.1 * torch.randn(n, generator=gen) + 0.05  # with a DC offset
    batch = compute_fbank_batch(waves, torch.tensor(lengths), cfg)
    assert batch.shape == (len(lengths), 64, cfg.num_mel_bins)
    for i, n in enumerate(lengths):
        torch.testing.assert_close(batch[i], compute_fbank(waves[i, :n], cfg), rtol=0, atol=1e-5)
    # a row of length 0 (no audio) gives raw frames of 0, as the loader's zero padding
    empty = log_mel_batch(torch.zeros(1, size), torch.tensor([0]), cfg)
    assert torch.count_nonzero(empty) == 0


def test_specaugment_draw_gives_the_bands_call_zeroes() -> None:
    aug = SpecAugment(freq_mask=24, time_mask=96, num_masks=2)
    for seed in range(5):
        spec = aug(torch.ones(300, 128), torch.Generator().manual_seed(seed))
        bands = aug.draw(300, 128, torch.Generator().manual_seed(seed))
        assert len(bands) == aug.num_bands() == 4
        expected = torch.ones(300, 128)
        for dim, start, width in bands:
            expected.narrow(dim, start, width).zero_()
        assert torch.equal(spec, expected)
    assert SpecAugment(freq_mask=0, time_mask=8).num_bands() == 1


@pytest.mark.parametrize("jitter, grey_p", [(0.0, 0.0), (0.4, 0.0), (0.0, 0.5), (0.4, 0.5)])
def test_normalize_affine_map_gives_what_normalize_gives(jitter: float, grey_p: float) -> None:
    x = torch.randint(0, 256, (4, 24, 24, 3), dtype=torch.uint8)
    norm = Normalize(jitter=jitter, jitter_p=0.5, grey_p=grey_p)
    for seed in range(6):
        ref = norm(x, torch.Generator().manual_seed(seed))
        maps = norm.affine(x, torch.Generator().manual_seed(seed))
        assert maps.shape == (3, 6)
        torch.testing.assert_close(apply_affine(x[None], maps[None])[0], ref, rtol=0, atol=1e-5)


def _batches(data, mode: str, small_args, **kw) -> tuple[list[AVBatch], list[AVBatch]]:
    dm = AVDataModule(str(data), **small_args(features_on=mode, batches_per_epoch=3, **kw))
    train = [dm.on_after_batch_transfer(b, 0) for b in dm.train_dataloader()]
    val = [dm.on_after_batch_transfer(b, 0) for b in dm.val_dataloader()]
    return train, val


@pytest.mark.parametrize(
    "kw",
    [{}, {"clips_per_video": 2, "val_clips": 2}, {"audio_mode": "mismatched", "batch_size": 3}],
    ids=["one-clip", "two-clips", "mismatched"],
)
def test_device_batches_equal_loader_batches(synth, small_args, kw) -> None:
    # the "train" preset: gain and noise on the waveform, SpecAugment (24 bins, 96 frames),
    # random resized crop, flip, colour jitter (p 0.8)
    loader, device = (_batches(synth, m, small_args, **kw) for m in ("loader", "device"))
    for a, b in zip([*loader[0], *loader[1]], [*device[0], *device[1]], strict=True):
        assert a.key == b.key and torch.equal(a.audio_mask, b.audio_mask)
        assert b.audio.shape == a.audio.shape and b.audio_wave is None and b.audio_bands is None
        torch.testing.assert_close(b.audio, a.audio, rtol=0, atol=1e-4)
        assert torch.equal(a.audio == 0, b.audio == 0)  # the same SpecAugment bands
        assert b.video.shape == a.video.shape and b.video_u8 is None and b.video_affine is None
        torch.testing.assert_close(b.video, a.video, rtol=0, atol=1e-5)
    masked = sum(int((a.audio == 0).all(dim=-1).sum()) for a in loader[0])  # zeroed frames
    assert masked > 0  # SpecAugment was on


def test_device_batch_carries_raw_fields_until_the_transfer(synth, small_args) -> None:
    dm = AVDataModule(str(synth), **small_args(features_on="device", batches_per_epoch=1))
    b = next(iter(dm.train_dataloader()))
    window = dm.fbank.samples_for_frames(dm.fbank.target_frames)
    assert b.audio.shape == (2, 1, 0, 128) and b.audio_wave.shape == (2, window)
    assert b.audio_bands.shape == (2, 2, 3) and b.audio_wave_len.dtype == torch.long
    assert b.video.shape == (2, 3, 4, 0, 0) and b.video_u8.shape == (2, 4, 32, 32, 3)
    assert b.video_u8.dtype == torch.uint8 and b.video_affine.shape == (2, 3, 6)
    b = features_on_device(b, dm.fbank)
    assert b.audio.shape == (2, 1, 128, 128) and b.audio_wave is None
    assert b.video.shape == (2, 3, 4, 32, 32) and b.video.dtype == torch.float32


def test_missing_audio_or_video_gives_zeros_in_device_mode(
    noaudio_data, audio_only_data, small_args
) -> None:
    train, val = _batches(noaudio_data, "device", small_args)
    for b in [*train, *val]:
        assert not b.audio_mask.any() and b.audio.shape[-2:] == (128, 128)
        assert torch.count_nonzero(b.audio) == 0 and b.video.abs().sum() > 0
    train, val = _batches(audio_only_data, "device", small_args)
    for b in [*train, *val]:
        assert not b.video_mask.any() and b.video.shape[-3:] == (4, 32, 32)
        assert torch.count_nonzero(b.video) == 0 and b.audio.abs().sum() > 0


def test_features_on_and_pin_memory_options(synth, small_args) -> None:
    with pytest.raises(ValueError, match="features_on must be one of"):
        AVDataModule(str(synth), **small_args(features_on="gpu"))
    dm = AVDataModule(str(synth), **small_args())
    assert dm.hp.features_on == "auto" and not dm.on_device()  # no trainer: the loader
    assert dm.train_dataloader().pin_memory is False
    for device, expected in (("cpu", False), ("cuda", True)):
        dm.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device(device)))
        assert dm.on_device() is expected
        assert dm.train_dataloader().pin_memory is expected  # pin_memory None: on a GPU
    dm = AVDataModule(str(synth), **small_args(pin_memory=False, features_on="loader"))
    dm.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cuda")))
    assert dm.train_dataloader().pin_memory is False and not dm.on_device()


class _Probe(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(128, 1)
        self.seen: list[tuple] = []

    def training_step(self, batch: AVBatch, batch_idx: int):
        raw = (batch.audio_wave, batch.video_u8)
        self.seen.append((tuple(batch.audio.shape), tuple(batch.video.shape), raw == (None, None)))
        return self.lin(batch.audio.mean(dim=(1, 2))).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_trainer_steps_see_finished_batches(synth, small_args) -> None:
    dm = AVDataModule(str(synth), **small_args(features_on="device", batches_per_epoch=2))
    model = _Probe()
    pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    ).fit(model, datamodule=dm)
    assert model.seen == [((2, 1, 128, 128), (2, 3, 4, 32, 32), True)] * 2


def test_features_on_device_in_chunks_with_a_clip_axis(monkeypatch) -> None:
    from avssl.data import batching

    monkeypatch.setattr(batching, "CHUNK", 3)  # 8 rows: chunks of 3, 3, 2
    cfg = FbankConfig(target_frames=32)
    size = cfg.samples_for_frames(32)
    waves = torch.randn(4, 2, size, generator=torch.Generator().manual_seed(1))
    lens = torch.full((4, 2), size)
    lens[1, 0] = 1000
    clips = torch.randint(0, 256, (4, 2, 2, 8, 8, 3), dtype=torch.uint8)  # [B, K, T, H, W, 3]
    norm = Normalize(jitter=0.4, jitter_p=0.5)
    maps = torch.stack([torch.stack([norm.affine(c, torch.Generator()) for c in b]) for b in clips])
    batch = AVBatch(
        video=torch.zeros(4, 2, 3, 2, 0, 0),
        audio=torch.zeros(4, 2, 1, 0, 128),
        key=list("abcd"),
        audio_mask=torch.tensor([True, True, False, True]),
        video_mask=torch.tensor([True, False, True, True]),
        audio_wave=waves,
        audio_wave_len=lens,
        audio_bands=torch.tensor([[0, 5, 4], [1, 100, 28]]).expand(4, 2, 2, 3),
        video_u8=clips,
        video_affine=maps,
    )
    done = features_on_device(batch, cfg)
    out = done.audio
    assert out.shape == (4, 2, 1, 32, 128) and done.video.shape == (4, 2, 3, 2, 8, 8)
    for i, k in [(0, 0), (2, 1), (3, 0), (3, 1)]:
        ref = apply_affine(clips[i, k][None], maps[i, k][None])[0]
        torch.testing.assert_close(done.video[i, k], ref, rtol=0, atol=1e-6)
    assert torch.count_nonzero(done.video[1]) == 0  # no video
    for i, k in [(0, 0), (1, 0), (1, 1), (3, 1)]:
        ref = compute_fbank(waves[i, k, : lens[i, k]], cfg)
        ref[5:9] = 0  # the time band
        ref[:, 100:] = 0  # the frequency band
        torch.testing.assert_close(out[i, k, 0], ref, rtol=0, atol=1e-5)
    assert torch.count_nonzero(out[2]) == 0  # no audio


@pytest.mark.gpu
def test_features_on_a_gpu_match_the_cpu_and_do_not_sync() -> None:
    cfg = FbankConfig(target_frames=1024)
    size = cfg.samples_for_frames(1024)
    waves = 0.1 * torch.randn(8, size, generator=torch.Generator().manual_seed(2))
    lens = torch.tensor([size, size, 5000, 400, 399, 1, size, size])
    bands = torch.tensor([[0, 10, 90], [1, 3, 20]]).expand(8, 2, 3)
    clips = torch.randint(0, 256, (8, 4, 32, 32, 3), dtype=torch.uint8)
    norm = Normalize(jitter=0.4, jitter_p=0.5)
    maps = torch.stack(
        [norm.affine(c, torch.Generator().manual_seed(i)) for i, c in enumerate(clips)]
    )

    def batch(device: str) -> AVBatch:
        return AVBatch(
            video=torch.zeros(8, 3, 4, 0, 0),
            audio=torch.zeros(8, 1, 0, 128),
            key=[str(i) for i in range(8)],
            audio_mask=torch.ones(8, dtype=torch.bool),
            video_mask=torch.ones(8, dtype=torch.bool),
            audio_wave=waves,
            audio_wave_len=lens,
            audio_bands=bands,
            video_u8=clips,
            video_affine=maps,
        ).to(device)

    cpu = features_on_device(batch("cpu"), cfg)
    features_on_device(batch("cuda"), cfg)  # builds the tables on the GPU once
    gpu_batch = batch("cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any host-device sync raises
    try:
        gpu = features_on_device(gpu_batch, cfg)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.testing.assert_close(gpu.audio.cpu(), cpu.audio, rtol=0, atol=2e-3)  # cuFFT, pocketfft
    torch.testing.assert_close(gpu.video.cpu(), cpu.video, rtol=0, atol=1e-5)
