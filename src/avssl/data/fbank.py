"""Log-mel filterbank features in the AudioMAE / CAV-MAE convention (DESIGN section 3).

Features are ``torchaudio.compliance.kaldi.fbank(..., htk_compat=True, use_energy=False,
window_type="hanning", dither=0.0, frame_shift=10)``, padded or cropped to a fixed number of
frames, then normalised with dataset statistics. AudioMAE divides by ``2 * std``
(https://arxiv.org/abs/2207.06405); CAV-MAE divides by ``std`` (https://arxiv.org/abs/2210.07839).

:func:`log_mel` computes the values of that kaldi call (tested to 1e-3 in the log domain)
with the window and mel matrix built once per setting rather than on every call and without
the frame energies it would discard: 3.3 ms instead of 5.1 ms for a 10 s clip on one CPU
thread (a loader worker's). :func:`compute_fbank_batch` computes the same features for a batch
of zero-padded waveforms on any device (the training step's GPU, when the loader ships
waveforms: ``AVDataModule(features_on="device")``).
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

import torch
import torchaudio

NORM_MODES = ("audiomae", "cavmae", "none")
#: AudioSet fbank statistics (reference, mean, std) each normalisation's reference uses, what
#: the loader takes for data without ``stats.json`` (DESIGN section 3): AudioMAE divides by
#: 2 std, CAV-MAE by std ("none" uses no statistics).
REFERENCE_STATS = {
    "audiomae": ("AudioMAE", -4.2677, 4.5690),
    "cavmae": ("CAV-MAE", -5.081, 4.4849),
}
PREEMPHASIS = 0.97  # kaldi's default preemphasis_coefficient


@dataclass
class FbankConfig:
    """Settings of the audio front end; stored in exported bundles so features can be rebuilt.

    Attributes:
        sample_rate: waveform rate in Hz (shards store 16 kHz mono FLAC).
        num_mel_bins: F, mel bins per frame.
        frame_shift_ms: hop in milliseconds (10 ms -> 100 frames per second).
        frame_length_ms: window length in milliseconds.
        target_frames: Ta, frames after padding/cropping (1024 = 10.24 s at 10 ms hop).
        mean: dataset mean of the raw log-mel values (AudioSet: -4.2677).
        std: dataset std of the raw log-mel values (AudioSet: 4.5690).
        norm: "audiomae" -> (x - mean) / (2 std); "cavmae" -> (x - mean) / std; "none".
    """

    sample_rate: int = 16000
    num_mel_bins: int = 128
    frame_shift_ms: float = 10.0
    frame_length_ms: float = 25.0
    target_frames: int = 1024
    mean: float = REFERENCE_STATS["audiomae"][1]
    std: float = REFERENCE_STATS["audiomae"][2]
    norm: str = "audiomae"

    def __post_init__(self) -> None:
        if self.norm not in NORM_MODES:
            raise ValueError(f"fbank norm must be one of {NORM_MODES}, got {self.norm!r}")
        if self.std <= 0:
            raise ValueError(f"fbank std must be positive, got {self.std}")

    @property
    def frames_per_second(self) -> float:
        return 1000.0 / self.frame_shift_ms

    def window_samples(self) -> tuple[int, int]:
        """(window length, hop) in samples, truncated as kaldi truncates them (22,050 Hz x
        32 ms = 705.6 -> 705)."""
        length = int(self.sample_rate * self.frame_length_ms / 1000.0)
        return length, int(self.sample_rate * self.frame_shift_ms / 1000.0)

    def samples_for_frames(self, frames: int) -> int:
        """Waveform samples that yield exactly ``frames`` kaldi frames (snip_edges=True)."""
        length, shift = self.window_samples()
        return length + (frames - 1) * shift

    def to_dict(self) -> dict:
        return asdict(self)


def log_mel(wave: torch.Tensor, cfg: FbankConfig) -> torch.Tensor:
    """Raw (un-normalised) log-mel fbank of a mono waveform.

    Args:
        wave: float ``[S]`` or ``[1, S]`` waveform at ``cfg.sample_rate``.
        cfg: front-end settings.

    Returns:
        ``[T_frames, F]`` log-mel energies; at least one frame (short input is zero-padded).

    Raises:
        ValueError: ``wave`` has several channels (flattening would join them in time).
    """
    if wave.dim() > 2 or (wave.dim() == 2 and wave.shape[0] != 1):
        raise ValueError(
            f"fbank needs a mono waveform [S] or [1, S], got {list(wave.shape)}: downmix first"
        )
    wave = wave.reshape(1, -1).float()  # [1, S]
    min_len = cfg.samples_for_frames(1)
    if wave.shape[1] < min_len:
        wave = torch.nn.functional.pad(wave, (0, min_len - wave.shape[1]))
    return _frames_log_mel(wave[0] - wave.mean(), cfg)


def log_mel_batch(waves: torch.Tensor, lengths: torch.Tensor, cfg: FbankConfig) -> torch.Tensor:
    """:func:`log_mel` of a batch of zero-padded waveforms, on whatever device they are.

    Row ``i`` equals ``pad_or_crop(log_mel(waves[i, :lengths[i]]), T)`` where ``T`` is the
    number of frames ``waves`` holds: frames past a recording's end are 0, as ``pad_or_crop``
    pads. This lets the training step compute the features on the GPU from the waveform
    windows the loader ships (``AVDataModule(features_on="device")``).

    Args:
        waves: float ``[N, S]``, each recording from sample 0, zeros after its end.
        lengths: ``[N]`` valid samples per row (a row of length 0 gives frames of 0).
        cfg: front-end settings.

    Returns:
        ``[N, T, F]`` raw log-mel energies, ``T`` = kaldi frames in ``S`` samples (at least 1).
    """
    waves = waves.float()
    min_len = cfg.samples_for_frames(1)
    if waves.shape[1] < min_len:
        waves = torch.nn.functional.pad(waves, (0, min_len - waves.shape[1]))
    lengths = lengths.to(waves.device).long()
    # log_mel zero-pads a recording shorter than one frame before taking its mean
    span = lengths.clamp_min(min_len)
    inside = torch.arange(waves.shape[1], device=waves.device) < span[:, None]  # [N, S]
    mean = waves.sum(dim=1, keepdim=True) / span[:, None]
    mel = _frames_log_mel(torch.where(inside, waves - mean, 0.0), cfg)  # [N, T, F]
    shift = cfg.window_samples()[1]
    valid = torch.where(lengths > 0, 1 + (span - min_len) // shift, 0)  # frames per row
    keep = torch.arange(mel.shape[1], device=mel.device) < valid[:, None]  # [N, T]
    return torch.where(keep[..., None], mel, 0.0)


def _frames_log_mel(waves: torch.Tensor, cfg: FbankConfig) -> torch.Tensor:
    """Kaldi framing (snip_edges), per-frame DC removal, preemphasis, Hann window, power
    spectrum, mel projection and log of mean-removed waveforms ``[..., S]`` -> ``[..., T, F]``
    (one waveform ``[S]`` in a loader worker: 2-D intermediates are ~1.5x faster on a CPU)."""
    length, shift = cfg.window_samples()  # kaldi truncates
    window, banks, n_fft = _kaldi_tables(cfg.sample_rate, cfg.num_mel_bins, length, waves.device)
    frames = waves.unfold(-1, length, shift)  # [..., T, L], kaldi's snip_edges=True
    frames = frames - frames.mean(dim=-1, keepdim=True)  # remove_dc_offset
    previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)  # replicate-padded shift
    frames = (frames - PREEMPHASIS * previous) * window  # [..., T, L]
    spec = torch.fft.rfft(frames, n=n_fft)  # zero-padded to a power of 2
    power = spec.real.square() + spec.imag.square()  # [..., T, n_fft/2 + 1]
    mel = power @ banks.T  # [..., T, F]
    return mel.clamp_min(torch.finfo(torch.float32).eps).log()


@functools.lru_cache(maxsize=16)
def _kaldi_tables(sample_rate: int, num_mel_bins: int, length: int, device: torch.device):
    """Kaldi's symmetric Hann window ``[L]``, mel filterbank ``[F, n_fft/2 + 1]`` (low 20 Hz,
    high Nyquist, no VTLN, last column zero) and FFT size (``L`` up to a power of 2), kept on
    ``device`` (so that a GPU step does not copy them, and wait for the GPU, on every call)."""
    n_fft = 1 << (length - 1).bit_length()
    window = torch.hann_window(length, periodic=False)
    banks, _ = torchaudio.compliance.kaldi.get_mel_banks(
        num_mel_bins, n_fft, float(sample_rate), 20.0, 0.0, 100.0, -500.0, 1.0
    )  # [F, n_fft/2]
    banks = torch.nn.functional.pad(banks.float(), (0, 1))
    return window.to(device), banks.to(device), n_fft


def pad_or_crop(fbank: torch.Tensor, target_frames: int) -> torch.Tensor:
    """Zero-pads at the end or crops the end so that ``fbank`` has ``target_frames`` rows."""
    n = fbank.shape[0]
    if n < target_frames:
        return torch.nn.functional.pad(fbank, (0, 0, 0, target_frames - n))
    return fbank[:target_frames]


def normalize(fbank: torch.Tensor, cfg: FbankConfig) -> torch.Tensor:
    """Applies the configured dataset normalisation to raw log-mel values."""
    if cfg.norm == "audiomae":
        return (fbank - cfg.mean) / (2.0 * cfg.std)
    if cfg.norm == "cavmae":
        return (fbank - cfg.mean) / cfg.std
    return fbank


def compute_fbank(wave: torch.Tensor, cfg: FbankConfig) -> torch.Tensor:
    """Waveform -> normalised ``[Ta, F]`` fbank padded/cropped to ``cfg.target_frames``."""
    return normalize(pad_or_crop(log_mel(wave, cfg), cfg.target_frames), cfg)


def compute_fbank_batch(waves: torch.Tensor, lengths: torch.Tensor, cfg: FbankConfig):
    """Zero-padded waveforms ``[N, S]`` + valid lengths ``[N]`` -> normalised ``[N, Ta, F]``:
    row ``i`` equals ``compute_fbank(waves[i, :lengths[i]], cfg)`` (for ``lengths[i] >= 1``)."""
    mel = log_mel_batch(waves, lengths, cfg)
    t = cfg.target_frames
    if mel.shape[1] < t:
        mel = torch.nn.functional.pad(mel, (0, 0, 0, t - mel.shape[1]))
    return normalize(mel[:, :t], cfg)
