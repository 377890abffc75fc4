"""The fbank computed after the transfer (``fbank_compute="device"``) equals the loader's:
batched fbank against the per-clip one, SpecAugment bands drawn in the loader, whole batches of
both modes from the same seed, missing audio, the Trainer path and the option's validation."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch

from avssl.data.batch import AVBatch
from avssl.data.datamodule import AVDataModule
from avssl.data.fbank import FbankConfig, compute_fbank, compute_fbank_batch, log_mel_batch
from avssl.data.sampling import features_on_device
from avssl.data.transforms import SpecAugment


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


def _batches(data, mode: str, small_args, **kw) -> tuple[list[AVBatch], list[AVBatch]]:
    dm = AVDataModule(str(data), **small_args(fbank_compute=mode, batches_per_epoch=3, **kw))
    train = [dm.on_after_batch_transfer(b, 0) for b in dm.train_dataloader()]
    val = [dm.on_after_batch_transfer(b, 0) for b in dm.val_dataloader()]
    return train, val


@pytest.mark.parametrize(
    "kw",
    [{}, {"clips_per_video": 2, "val_clips": 2}, {"audio_mode": "mismatched", "batch_size": 3}],
    ids=["one-clip", "two-clips", "mismatched"],
)
def test_device_batches_equal_loader_batches(synth, small_args, kw) -> None:
    # the "train" preset: gain and noise on the waveform, SpecAugment (24 bins, 96 frames)
    loader, device = (_batches(synth, m, small_args, **kw) for m in ("loader", "device"))
    for a, b in zip([*loader[0], *loader[1]], [*device[0], *device[1]], strict=True):
        assert a.key == b.key and torch.equal(a.video, b.video)
        assert torch.equal(a.audio_mask, b.audio_mask)
        assert b.audio.shape == a.audio.shape and b.audio_wave is None and b.audio_bands is None
        torch.testing.assert_close(b.audio, a.audio, rtol=0, atol=1e-4)
        assert torch.equal(a.audio == 0, b.audio == 0)  # the same SpecAugment bands
    masked = sum(int((a.audio == 0).all(dim=-1).sum()) for a in loader[0])  # zeroed frames
    assert masked > 0  # SpecAugment was on


def test_device_batch_carries_waveforms_until_the_transfer(synth, small_args) -> None:
    dm = AVDataModule(str(synth), **small_args(fbank_compute="device", batches_per_epoch=1))
    b = next(iter(dm.train_dataloader()))
    window = dm.fbank.samples_for_frames(dm.fbank.target_frames)
    assert b.audio.shape == (2, 1, 0, 128) and b.audio_wave.shape == (2, window)
    assert b.audio_bands.shape == (2, 2, 3) and b.audio_wave_len.dtype == torch.long
    b = features_on_device(b, dm.fbank)
    assert b.audio.shape == (2, 1, 128, 128) and b.audio_wave is None


def test_missing_audio_gives_zeros_in_device_mode(noaudio_data, small_args) -> None:
    train, val = _batches(noaudio_data, "device", small_args)
    for b in [*train, *val]:
        assert not b.audio_mask.any() and b.audio.shape[-2:] == (128, 128)
        assert torch.count_nonzero(b.audio) == 0


def test_fbank_compute_option(synth, small_args) -> None:
    with pytest.raises(ValueError, match="fbank_compute must be one of"):
        AVDataModule(str(synth), **small_args(fbank_compute="gpu"))
    dm = AVDataModule(str(synth), **small_args())
    assert dm.hp.fbank_compute == "auto" and not dm.fbank_on_device()  # no trainer: the loader
    for device, expected in (("cpu", False), ("cuda", True)):
        dm.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device(device)))
        assert dm.fbank_on_device() is expected


class _Probe(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(128, 1)
        self.seen: list[tuple] = []

    def training_step(self, batch: AVBatch, batch_idx: int):
        self.seen.append((tuple(batch.audio.shape), batch.audio_wave is None))
        return self.lin(batch.audio.mean(dim=(1, 2))).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_trainer_steps_see_the_fbank(synth, small_args) -> None:
    dm = AVDataModule(str(synth), **small_args(fbank_compute="device", batches_per_epoch=2))
    model = _Probe()
    pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    ).fit(model, datamodule=dm)
    assert model.seen == [((2, 1, 128, 128), True)] * 2


def test_features_on_device_in_chunks_with_a_clip_axis(monkeypatch) -> None:
    from avssl.data import sampling

    monkeypatch.setattr(sampling, "FBANK_CHUNK", 3)  # 8 rows: chunks of 3, 3, 2
    cfg = FbankConfig(target_frames=32)
    size = cfg.samples_for_frames(32)
    waves = torch.randn(4, 2, size, generator=torch.Generator().manual_seed(1))
    lens = torch.full((4, 2), size)
    lens[1, 0] = 1000
    batch = AVBatch(
        video=torch.zeros(4, 2, 3, 1, 8, 8),
        audio=torch.zeros(4, 2, 1, 0, 128),
        key=list("abcd"),
        audio_mask=torch.tensor([True, True, False, True]),
        audio_wave=waves,
        audio_wave_len=lens,
        audio_bands=torch.tensor([[0, 5, 4], [1, 100, 28]]).expand(4, 2, 2, 3),
    )
    out = features_on_device(batch, cfg).audio
    assert out.shape == (4, 2, 1, 32, 128)
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

    def batch(device: str) -> AVBatch:
        return AVBatch(
            video=torch.zeros(8, 1),
            audio=torch.zeros(8, 1, 0, 128),
            key=[str(i) for i in range(8)],
            audio_mask=torch.ones(8, dtype=torch.bool),
            audio_wave=waves,
            audio_wave_len=lens,
            audio_bands=bands,
        ).to(device)

    cpu = features_on_device(batch("cpu"), cfg).audio
    features_on_device(batch("cuda"), cfg)  # builds the tables on the GPU once
    gpu_batch = batch("cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any host-device sync raises
    try:
        gpu = features_on_device(gpu_batch, cfg).audio
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=2e-3)  # cuFFT vs pocketfft
