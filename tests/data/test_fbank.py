"""log_mel equals torchaudio's kaldi.fbank with the AudioMAE / CAV-MAE settings; the loader's
default statistics per normalisation."""

from __future__ import annotations

import shutil
import warnings

import pytest
import torch
import torchaudio

from avssl.data.audio_decode import load_audio
from avssl.data.datamodule import AVDataModule
from avssl.data.fbank import (
    FbankConfig,
    compute_fbank,
    compute_fbank_batch,
    log_mel,
    normalize,
    pad_or_crop,
)
from tests.media import MEDIA


def _kaldi(wave: torch.Tensor, cfg: FbankConfig) -> torch.Tensor:
    wave = wave.reshape(1, -1).float()
    return torchaudio.compliance.kaldi.fbank(
        wave - wave.mean(),
        htk_compat=True,
        sample_frequency=cfg.sample_rate,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=cfg.num_mel_bins,
        dither=0.0,
        frame_shift=cfg.frame_shift_ms,
        frame_length=cfg.frame_length_ms,
    )


@pytest.mark.parametrize(
    "cfg",
    [
        FbankConfig(),
        FbankConfig(sample_rate=22050, num_mel_bins=64, frame_shift_ms=5.0),
        FbankConfig(sample_rate=16000, num_mel_bins=128, frame_length_ms=32.0),
    ],
    ids=["audiomae", "22k-64bins-5ms", "32ms-window"],
)
def test_log_mel_matches_kaldi_fbank(cfg: FbankConfig) -> None:
    g = torch.Generator().manual_seed(0)
    t = torch.arange(3 * cfg.sample_rate + 77) / cfg.sample_rate
    wave = 0.3 * torch.sin(2 * torch.pi * 440 * t) + 0.05 * torch.randn(t.shape, generator=g)
    wave[cfg.sample_rate : cfg.sample_rate + 4000] = 0.0  # a silent stretch hits the floor
    wave = wave + 0.2  # a DC offset both remove
    ours, ref = log_mel(wave, cfg), _kaldi(wave, cfg)
    assert ours.shape == ref.shape
    assert torch.allclose(ours, ref, atol=1e-3, rtol=0), (ours - ref).abs().max()


def test_log_mel_matches_kaldi_on_a_real_clip_and_short_input() -> None:
    cfg = FbankConfig()
    wave, has_audio = load_audio(MEDIA / "audioset_clip_h264_aac.mp4", cfg.sample_rate)
    assert has_audio and wave.numel() > cfg.sample_rate
    ours = log_mel(wave, cfg)
    assert torch.allclose(ours, _kaldi(wave, cfg), atol=1e-3, rtol=0)
    short = log_mel(wave[:100], cfg)  # shorter than one frame: zero-padded to one frame
    assert short.shape == (1, cfg.num_mel_bins) and torch.isfinite(short).all()


@pytest.mark.parametrize(
    "norm,name,mean,std,scale",
    [("audiomae", "AudioMAE", -4.2677, 4.5690, 2.0), ("cavmae", "CAV-MAE", -5.081, 4.4849, 1.0)],
)
def test_data_without_stats_takes_the_statistics_of_its_norms_reference(
    synth, tmp_path, norm, name, mean, std, scale
) -> None:
    """Shards without stats.json: each normalisation takes its reference's AudioSet statistics
    (DESIGN section 3; AudioMAE divides by 2 std, CAV-MAE by std), and the warning names them;
    given statistics are taken without a warning."""
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(next((synth / "shards").glob("*.tar")), bare / "shard-000000.tar")
    with pytest.warns(UserWarning, match="no stats.json") as caught:
        dm = AVDataModule(str(bare), fbank_norm=norm, train_split=None)
    (warning,) = [str(w.message) for w in caught if "stats.json" in str(w.message)]
    assert f"{name}'s AudioSet fbank stats (mean {mean}, std {std})" in warning
    assert (dm.fbank.mean, dm.fbank.std, dm.fbank.norm) == (mean, std, norm)
    raw = torch.tensor([[-3.0, 0.5]])
    torch.testing.assert_close(normalize(raw, dm.fbank), (raw - mean) / (scale * std))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        given = AVDataModule(str(bare), fbank_norm=norm, fbank_mean=-1.0, fbank_std=2.0)
    assert (given.fbank.mean, given.fbank.std) == (-1.0, 2.0)


@pytest.mark.parametrize(
    "cfg",
    [FbankConfig(sample_rate=22050, frame_length_ms=32.0), FbankConfig(sample_rate=11025)],
    ids=["22k-32ms", "11k-25ms"],
)
def test_window_sizes_truncate_as_kaldi_where_a_frame_is_not_whole_samples(cfg) -> None:
    """At rates where a frame is not a whole number of samples (22,050 Hz x 32 ms = 705.6),
    kaldi truncates: samples_for_frames gives the samples of exactly that many kaldi frames,
    and the batched (on-device) fbank equals the per-clip one at every length."""
    cfg.target_frames = 50
    length = int(cfg.sample_rate * cfg.frame_length_ms / 1000)  # kaldi's window size
    shift = int(cfg.sample_rate * cfg.frame_shift_ms / 1000)
    for frames in (2, 7, 50):  # exactly that many: one sample less gives one frame less
        size = cfg.samples_for_frames(frames)
        assert size == length + (frames - 1) * shift
        wave = torch.randn(size, generator=torch.Generator().manual_seed(frames))
        assert _kaldi(wave, cfg).shape[0] == frames == _kaldi(wave[:-1], cfg).shape[0] + 1
    size = cfg.samples_for_frames(cfg.target_frames)
    lengths = [length - 1, length, length + 1, length + 3 * shift, length + 3 * shift - 1, size]
    waves = torch.zeros(len(lengths), size)
    gen = torch.Generator().manual_seed(0)
    for i, n in enumerate(lengths):
        waves[i, :n] = 0.1 * torch.randn(n, generator=gen)
    batch = compute_fbank_batch(waves, torch.tensor(lengths), cfg)
    for i, n in enumerate(lengths):
        torch.testing.assert_close(batch[i], compute_fbank(waves[i, :n], cfg), rtol=0, atol=1e-5)
        frames = _kaldi(waves[i, :n], cfg) if n >= length else None
        if frames is not None:  # the frames kaldi gives, then zero padding
            want = normalize(pad_or_crop(frames, cfg.target_frames), cfg)
            torch.testing.assert_close(batch[i], want, rtol=0, atol=1e-3)


def test_multichannel_input_is_refused_not_concatenated() -> None:
    """A ``[C, S]`` waveform (torchaudio.load's layout) with C > 1 is refused with a clear
    error: flattening it would give the fbank of the channels one after the other."""
    cfg = FbankConfig(target_frames=64)
    stereo = torch.randn(2, cfg.samples_for_frames(64), generator=torch.Generator().manual_seed(0))
    for fn in (log_mel, compute_fbank):
        with pytest.raises(ValueError, match=r"mono waveform .*\[2, 10480\].*downmix"):
            fn(stereo, cfg)
    mono = stereo.mean(dim=0, keepdim=True)  # [1, S] and [S] are both mono
    torch.testing.assert_close(log_mel(mono, cfg), log_mel(mono[0], cfg), rtol=0, atol=0)
