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
from avssl.data.fbank import FbankConfig, log_mel, normalize
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
