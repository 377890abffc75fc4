"""Per-sample clip and audio-window sampling: one shard sample -> processed clips and audio.

A shard sample's clip times are drawn at random (training) or uniformly spaced (evaluation);
each clip gets an fbank window according to the audio mode. Audio modes: ``aligned`` centres
the window on the video clip's centre (shifted to stay inside the recording, so a window at
least as long as the clip contains it), ``random`` draws it anywhere in the same recording
(asynchronous objectives such as CrissCross, https://arxiv.org/abs/2111.05329), ``mismatched``
gives a sample, with some probability, another sample's audio (audio-visual correspondence,
Arandjelovic & Zisserman, https://arxiv.org/abs/1705.08168; done at batching,
:func:`avssl.data.batching.mismatch`); ``AVBatch.audio_mismatched`` says which.

With ``on_device`` the processor stops before the last, per-pixel and per-frame steps: it
returns the zero-padded waveform windows after the waveform transforms and the SpecAugment
bands drawn for them instead of the fbank, and the uint8 clips after cropping and flipping
with their colour jitter + normalisation as one affine map instead of float clips (a quarter
of the bytes to move between processes); :func:`avssl.data.batching.features_on_device`
finishes them where the batch is. With a :class:`~avssl.data.local_view.LocalViewSpec` each
training clip also gets a local view from the same frames and audio
(:mod:`avssl.data.local_view`; ``local_*`` entries, ``AVBatch.local``). Batches and streams:
:mod:`avssl.data.batching`, :mod:`avssl.data.streams`.
"""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import torch

from avssl.data.audio_decode import FlacWindows, PcmWave, load_audio
from avssl.data.decode import (
    ClipSpec,
    MediaError,
    decode_clips_on_keyframes,
    decode_frames_at,
    decode_jpeg,
    open_media,
    probe_video,
)
from avssl.data.fbank import FbankConfig, compute_fbank
from avssl.data.local_view import LocalViews, LocalViewSpec
from avssl.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Compose,
    Normalize,
    build_audio_transforms,
    build_video_transform,
)

log = logging.getLogger(__name__)
AUDIO_MODES = ("aligned", "random", "mismatched")
MODALITIES = ("audio", "video")
JPEG_FIRST = "f000.jpg"  # a sample whose video is JPEG frames (data_prep --jpeg-fps)
AUDIO_MEMBERS = ("flac", "wav")  # a shard sample's audio: FLAC (data_prep's default) or WAV


def check_modalities(modalities, audio_mode: str = "aligned") -> tuple[str, ...]:
    """The loaded modalities as a tuple in ``MODALITIES`` order; ValueError for an empty or
    unknown list, or mismatched audio without audio."""
    given = [modalities] if isinstance(modalities, str) else list(modalities)
    unknown = [m for m in given if m not in MODALITIES]
    if unknown or not given:
        raise ValueError(
            f"modalities must be a non-empty subset of {list(MODALITIES)}, got {given}"
        )
    if audio_mode == "mismatched" and "audio" not in given:
        raise ValueError("audio_mode 'mismatched' needs 'audio' in modalities")
    return tuple(m for m in MODALITIES if m in given)


class SampleProcessor:
    """Turns one shard sample (``{"__key__", "mp4", "flac" or "wav", "json"}`` bytes) into
    tensors.

    Training draws ``num_clips`` random clip times (with ``keyframe_starts``, each moved back
    to the keyframe at or before it, see ``decode_clips_on_keyframes``); evaluation takes
    ``num_clips`` uniformly spaced ones. Raises on corrupt media (the streams count and skip
    those).
    """

    def __init__(
        self,
        spec: ClipSpec,
        fbank: FbankConfig,
        video_tf,
        wave_tf,
        spec_tf,
        crop_size: int,
        num_clips: int = 1,
        audio_mode: str = "aligned",
        train: bool = True,
        threads: int | None = None,
        on_device: bool = False,
        keyframe_starts: bool = False,
        modalities: tuple[str, ...] = MODALITIES,
        local: LocalViews | None = None,
    ):
        if audio_mode not in AUDIO_MODES:
            raise ValueError(f"audio_mode must be one of {AUDIO_MODES}, got {audio_mode!r}")
        if num_clips < 1:
            raise ValueError(f"clips_per_video must be >= 1, got {num_clips}")
        if on_device and not all(hasattr(t, "draw") for t in spec_tf.transforms):
            raise ValueError("features on the device support only SpecAugment on the fbank")
        if on_device and not isinstance(video_tf.transforms[-1], Normalize):
            raise ValueError("features on the device need Normalize as the last video transform")
        self.spec, self.fbank, self.crop_size = spec, fbank, crop_size
        self.video_tf, self.wave_tf, self.spec_tf = video_tf, wave_tf, spec_tf
        self.k, self.audio_mode, self.train, self.threads = num_clips, audio_mode, train, threads
        self.window = fbank.samples_for_frames(fbank.target_frames)
        self.on_device, self.keyframe_starts = on_device, keyframe_starts
        self.modalities = check_modalities(modalities, audio_mode)
        self.audio_windows = True  # shard FLAC decoded per window (bench/loader.py: False)
        self.num_bands = sum(t.num_bands() for t in spec_tf.transforms) if on_device else 0
        self.video_geometry = Compose(video_tf.transforms[:-1]) if on_device else None
        self.local = local  # a local view of each clip (None: none)

    def __call__(self, sample: dict, gen: torch.Generator) -> dict:
        meta = json.loads(sample["json"])
        out = {"key": meta.get("id", sample["__key__"]), "label": meta.get("label", -1)}
        wave: torch.Tensor | FlacWindows | PcmWave | None = None
        member = next((m for m in AUDIO_MEMBERS if m in sample), None)
        if member and meta.get("has_audio", True) and "audio" in self.modalities:
            wave = self._recording(sample[member], out["key"], member)
        try:
            frames = "mp4" in sample or JPEG_FIRST in sample
            if frames and meta.get("has_video", True) and "video" in self.modalities:
                out["video"], starts, centres, local_v = self._video(sample, meta, gen)
            else:
                out["video"], starts, centres, local_v = None, [0.0] * self.k, None, None
            out["clip_start"] = starts
            out["audio"], out["audio_start"], local_a = self._audio(wave, centres, gen)
            if self.local is not None:
                out["local_video"], out["local_clip_start"] = local_v or (None, starts)
                out["local_audio"], out["local_audio_start"] = local_a or (None, [0.0] * self.k)
        finally:
            if isinstance(wave, FlacWindows):
                wave.close()
        return out

    def _recording(self, data: bytes, key: str, member: str = "flac"):
        """The sample's audio: shard WAV read in place (``PcmWave``), shard FLAC read window by
        window when the windows cover less than the recording (``FlacWindows``), else decoded
        whole; None when it is empty."""
        try:
            pcm = PcmWave.open(data, self.fbank.sample_rate)
        except MediaError as err:
            raise MediaError(f"{key}: {err}") from None
        if pcm is not None:
            return pcm if len(pcm) else None
        if self.audio_windows:
            windows = FlacWindows.open(data, self.fbank.sample_rate)
            if windows is not None and self.k * self.window < len(windows):
                return windows
            if windows is not None:  # the windows cover it all: one read of the whole
                with windows:
                    whole = windows[0 : len(windows)]
                return whole if len(whole) else None
        wave, has_audio = load_audio(data, self.fbank.sample_rate)
        if not has_audio:
            raise MediaError(f"{key}: {member} member has no audio stream")
        return wave if len(wave) else None  # an empty recording counts as missing audio

    def _starts(self, duration: float, fps: float, gen: torch.Generator) -> list[float]:
        if self.train:
            return self.spec.random_starts(duration, fps, self.k, gen)
        return self.spec.uniform_starts(duration, fps, self.k)

    def _video(self, sample: dict, meta: dict, gen: torch.Generator):
        if "mp4" in sample:
            frames, starts, fps = self._mp4_frames(sample["mp4"], gen)
        else:
            frames, starts, fps = self._jpeg_frames(sample, meta, gen)
        t = self.spec.num_frames
        clips = [torch.from_numpy(np.stack(frames[i * t : (i + 1) * t])) for i in range(self.k)]
        centres = [s + self.spec.span_s(fps) / 2 for s in starts]
        video: torch.Tensor | tuple[torch.Tensor, torch.Tensor]
        if self.video_geometry is not None:  # on_device: uint8 clips + their colour affine
            crops, maps = [], []  # K x [T, H, W, 3], K x [3, 6]; draws in video_tf's order
            for c in clips:
                crops.append(self.video_geometry(c, gen))
                maps.append(self.video_tf.transforms[-1].affine(crops[-1], gen))
            video = (_stack(crops), _stack(maps))
        else:
            video = _stack([self.video_tf(c, gen) for c in clips])  # [K, C, T, H, W]
        local = None
        if self.local is not None:  # local views of the same decoded frames
            times = [self.spec.frame_times(s, fps) for s in starts]
            local = self.local.video(clips, times, gen)
        return video, starts, centres, local

    def _mp4_frames(self, data: bytes, gen: torch.Generator):
        with open_media(data) as container:
            info = probe_video(container)
            if info is None:
                raise MediaError("mp4 member has no video stream")
            starts = self._starts(info.num_frames / info.fps, info.fps, gen)
            if self.train and self.keyframe_starts:
                offsets = self.spec.frame_times(0.0, info.fps)
                frames, starts = decode_clips_on_keyframes(container, starts, offsets, self.threads)
            else:
                times = [t for s in starts for t in self.spec.frame_times(s, info.fps)]
                frames = decode_frames_at(container, times, self.threads)
        return frames, starts, info.fps

    def _jpeg_frames(self, sample: dict, meta: dict, gen: torch.Generator):
        """Frames of a sample stored as JPEG images at ``meta["fps"]`` (``f000.jpg``, ...):
        each requested time takes the image shown then (the nearest, as for mp4 frames),
        decoded once however many times it is used."""
        fps, n = float(meta.get("fps") or 0), int(meta.get("num_frames") or 0)
        if fps <= 0 or n <= 0:
            raise MediaError("JPEG frames without fps / num_frames in the json")
        starts = self._starts(float(meta.get("duration") or n / fps), fps, gen)
        times = [t for s in starts for t in self.spec.frame_times(s, fps)]
        index = [min(n - 1, max(0, math.ceil(t * fps - 0.5 - 1e-6))) for t in times]
        images = {}
        for i in dict.fromkeys(index):
            name = f"f{i:03d}.jpg"
            if name not in sample:
                raise MediaError(f"{name} missing ({n} JPEG frames in the json)")
            images[i] = decode_jpeg(sample[name])
        return [images[i] for i in index], starts, fps

    def _window_starts(self, num: int, centres, gen) -> list[int]:
        """Start sample of each audio window (see the module docstring for the modes)."""
        last = max(0, num - self.window)
        sr = self.fbank.sample_rate
        if centres is not None and self.audio_mode != "random":
            return [min(last, max(0, round(c * sr - self.window / 2))) for c in centres]
        if self.train:
            return torch.randint(0, last + 1, (self.k,), generator=gen).tolist()
        return [round(last / 2)] if self.k == 1 else np.linspace(0, last, self.k).round().tolist()

    def _audio(self, wave, centres, gen):
        """``[K, 1, Ta, F]`` fbank, or with ``on_device`` a triple (``[K, window]``
        zero-padded waveforms, ``[K]`` valid lengths, ``[K, M, 3]`` SpecAugment bands); the
        window start times; and the local views of the windows (None without ``local``)."""
        if wave is None:
            return None, [0.0] * self.k, None
        starts = self._window_starts(len(wave), centres, gen)
        seconds = [a / self.fbank.sample_rate for a in starts]
        if self.on_device:
            audio = self._waves(wave, starts, gen)
        else:
            specs = []
            for a in starts:
                w = self.wave_tf(wave[int(a) : int(a) + self.window], gen)
                specs.append(self.spec_tf(compute_fbank(w, self.fbank), gen))  # [Ta, F]
            audio = torch.stack(specs).unsqueeze(1)  # [K, 1, Ta, F]
        local = None if self.local is None else self.local.audio(wave, starts, self.window, gen)
        return audio, seconds, local

    def _waves(self, wave, starts, gen) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The windows after the waveform transforms, zero-padded, their lengths and the
        SpecAugment bands drawn for them (in the order the fbank path draws)."""
        waves, lens = torch.zeros(self.k, self.window), torch.zeros(self.k, dtype=torch.long)
        bands = torch.zeros(self.k, self.num_bands, 3, dtype=torch.long)
        shape = (self.fbank.target_frames, self.fbank.num_mel_bins)
        for i, a in enumerate(starts):
            w = self.wave_tf(wave[int(a) : int(a) + self.window], gen)
            waves[i, : len(w)], lens[i] = w, len(w)
            drawn = [b for t in self.spec_tf.transforms for b in t.draw(*shape, gen)]
            bands[i] = torch.tensor(drawn, dtype=torch.long).reshape(-1, 3)
        return waves, lens, bands


def _stack(xs: list[torch.Tensor]) -> torch.Tensor:
    """``torch.stack`` without the copy for a single tensor (K = 1, the usual case)."""
    return xs[0].unsqueeze(0) if len(xs) == 1 else torch.stack(xs)


def build_processor(
    prep: dict,
    preset: str,
    num_clips: int,
    audio_mode: str,
    train: bool,
    augment: dict | None = None,
    threads: int | None = None,
    on_device: bool = False,
    keyframe_starts: bool = False,
    modalities: tuple[str, ...] = MODALITIES,
    local: LocalViewSpec | None = None,
) -> SampleProcessor:
    """A SampleProcessor from a preprocessing dict (see ``AVDataModule.preprocessing``);
    ``local``: a local view of each clip (training)."""
    spec = ClipSpec(prep["num_frames"], prep.get("frame_stride"), prep.get("target_fps"))
    fbank = FbankConfig(**prep["fbank"])
    mean, std = prep.get("video_mean") or IMAGENET_MEAN, prep.get("video_std") or IMAGENET_STD
    video_tf = build_video_transform(preset, prep["crop_size"], mean, std, augment)
    wave_tf, spec_tf = build_audio_transforms(preset, augment)
    views = None
    if local is not None:
        views = LocalViews(local, fbank, mean, std, num_clips, modalities, on_device)
    return SampleProcessor(
        spec,
        fbank,
        video_tf,
        wave_tf,
        spec_tf,
        prep["crop_size"],
        num_clips,
        audio_mode,
        train,
        threads,
        on_device,
        keyframe_starts,
        modalities,
        views,
    )
