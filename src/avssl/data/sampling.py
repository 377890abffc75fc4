"""Per-sample clip and audio-window sampling, audio mismatching, collation, batch streams.

A shard sample's clip times are drawn at random (training) or uniformly spaced (evaluation);
each clip gets an fbank window according to the audio mode. Audio modes: ``aligned`` centres
the window on the video clip's centre (shifted to stay inside the recording, so a window at
least as long as the clip contains it), ``random`` draws it anywhere in the same recording
(asynchronous objectives such as CrissCross, https://arxiv.org/abs/2111.05329), ``mismatched``
gives a sample, with some probability, another sample's audio (audio-visual correspondence,
Arandjelovic & Zisserman, https://arxiv.org/abs/1705.08168); ``AVBatch.audio_mismatched``
says which.

The streams batch inside each DataLoader worker: ``TrainStream`` yields exactly
``batches_per_epoch`` batches per rank from resampled shards, ``EvalStream`` every sample of a
split once (see :mod:`avssl.data.shards` for the splitting). A sample that fails to decode is
skipped, logged, and counted in ``AVBatch.extra["skipped"]`` (with ``extra["skipped_keys"]``).
``TrainStream(repeats=R)`` is repeated sampling (MAE-ST, Feichtenhofer et al. 2022,
https://arxiv.org/abs/2205.09113): R batch entries from each decoded sample, each with its own
random clip times, audio windows and augmentation, so the mp4 is opened and the audio decoded
once for R entries; entries left over when a batch is full open the worker's next batch (at
the end of an epoch they are dropped: the keys are resampled anyway).

With ``on_device`` the workers stop before the last, per-pixel and per-frame steps: a batch
carries the zero-padded waveform windows after the waveform transforms (``AVBatch.audio_wave``,
``audio_wave_len``) and the SpecAugment bands drawn for them (``audio_bands``) instead of the
fbank, and the uint8 clips after cropping and flipping (``video_u8``) with their colour jitter +
normalisation as one affine map (``video_affine``) instead of float clips (a quarter of the
bytes to move between processes). :func:`features_on_device` finishes the batch where it is
(the training step's GPU; ``AVDataModule`` calls it after the transfer): the same values as
the workers compute, to float rounding, with the same random draws.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import warnings
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import IterableDataset

from avssl.data.audio_decode import FlacWindows, PcmWave, load_audio
from avssl.data.batch import AVBatch
from avssl.data.decode import (
    ClipSpec,
    MediaError,
    decode_clips_on_keyframes,
    decode_frames_at,
    decode_jpeg,
    open_media,
    probe_video,
)
from avssl.data.fbank import FbankConfig, compute_fbank, compute_fbank_batch
from avssl.data.shards import ResampledKeys, ShardReader, SplitTable, eval_assignment, worker_info
from avssl.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Compose,
    Normalize,
    apply_affine,
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


CHUNK = 64  # clips per batched call on the device (~135 MB of spectra at 1024 frames)


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
                out["video"], starts, centres = self._video(sample, meta, gen)
            else:
                out["video"], starts, centres = None, [0.0] * self.k, None
            out["clip_start"] = starts
            out["audio"], out["audio_start"] = self._audio(wave, centres, gen)
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
        if self.video_geometry is not None:  # on_device: uint8 clips + their colour affine
            crops, maps = [], []  # K x [T, H, W, 3], K x [3, 6]; draws in video_tf's order
            for c in clips:
                crops.append(self.video_geometry(c, gen))
                maps.append(self.video_tf.transforms[-1].affine(crops[-1], gen))
            return (_stack(crops), _stack(maps)), starts, centres
        return _stack([self.video_tf(c, gen) for c in clips]), starts, centres  # [K, C, T, H, W]

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
        zero-padded waveforms, ``[K]`` valid lengths, ``[K, M, 3]`` SpecAugment bands); and the
        window start times."""
        if wave is None:
            return None, [0.0] * self.k
        starts = self._window_starts(len(wave), centres, gen)
        seconds = [a / self.fbank.sample_rate for a in starts]
        if self.on_device:
            return self._waves(wave, starts, gen), seconds
        specs = []
        for a in starts:
            w = self.wave_tf(wave[int(a) : int(a) + self.window], gen)
            specs.append(self.spec_tf(compute_fbank(w, self.fbank), gen))  # [Ta, F]
        return torch.stack(specs).unsqueeze(1), seconds  # [K, 1, Ta, F]

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


def mismatch(items: list[dict], prob: float, gen: torch.Generator, prev: dict | None) -> list:
    """Gives each item, with probability ``prob``, the audio of another item of the batch (or
    of ``prev``, an item of an earlier batch, when the batch has one item). Returns the flags."""
    flags = [False] * len(items)
    own = [(it["audio"], it["key"], it["audio_start"]) for it in items]
    for i, it in enumerate(items):
        if float(torch.rand((), generator=gen)) >= prob:
            continue
        if len(items) > 1:
            j = (i + 1 + int(torch.randint(0, len(items) - 1, (), generator=gen))) % len(items)
            audio, key, start = own[j]
        elif prev is not None:
            audio, key, start = prev["audio"], prev["key"], prev["audio_start"]
        else:
            continue
        if key != it["key"]:
            it["audio"], it["audio_start"], flags[i] = audio, start, True
    return flags


def collate(items: list[dict], proc: SampleProcessor, num_classes: int, multilabel: bool):
    """Stacks processed samples into an AVBatch (K axis dropped when ``num_clips == 1``)."""
    k, t, s, f = proc.k, proc.spec.num_frames, proc.crop_size, proc.fbank.num_mel_bins
    has_audio, has_video = "audio" in proc.modalities, "video" in proc.modalities
    waves = _stack_waves(items, proc) if proc.on_device and has_audio else None
    clips = _stack_clips(items, proc) if proc.on_device and has_video else None
    # 0: placeholders, filled after the transfer (features_on_device), or a modality not loaded
    side = 0 if clips or not has_video else s
    video = torch.zeros(len(items), k, 3, t, side, side)  # [B, K, C, T, H, W]
    frames = 0 if waves or not has_audio else proc.fbank.target_frames
    audio = torch.zeros(len(items), k, 1, frames, f)
    for i, it in enumerate(items):
        if it["video"] is not None and not clips:
            video[i] = it["video"]
        if it["audio"] is not None and not waves:
            audio[i] = it["audio"]  # [B, K, 1, Ta, F]
    if multilabel:
        label = torch.zeros(len(items), num_classes)
        for i, it in enumerate(items):
            ids = it["label"] if isinstance(it["label"], list) else [it["label"]]
            label[i, [c for c in ids if c >= 0]] = 1.0
    else:
        label = torch.tensor([int(it["label"]) for it in items], dtype=torch.long)
    clip_start = torch.tensor([it["clip_start"] for it in items], dtype=torch.float)  # [B, K]
    audio_start = torch.tensor([it["audio_start"] for it in items], dtype=torch.float)
    squeeze = (lambda x: x[:, 0]) if k == 1 else (lambda x: x)
    return AVBatch(
        video=squeeze(video),
        audio=squeeze(audio),
        key=[it["key"] for it in items],
        label=label,
        video_mask=torch.tensor([it["video"] is not None for it in items]),
        audio_mask=torch.tensor([it["audio"] is not None for it in items]),
        clip_start=squeeze(clip_start),
        audio_start=squeeze(audio_start),
        audio_wave=squeeze(waves[0]) if waves else None,
        audio_wave_len=squeeze(waves[1]) if waves else None,
        audio_bands=squeeze(waves[2]) if waves else None,
        video_u8=squeeze(clips[0]) if clips else None,
        video_affine=squeeze(clips[1]) if clips else None,
    )


def _stack_clips(items: list[dict], proc: SampleProcessor) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 ``[B, K, T, H, W, 3]`` clips and ``[B, K, 3, 6]`` colour affine maps of items
    processed with ``on_device`` (zeros for items without video)."""
    n, k, t, s = len(items), proc.k, proc.spec.num_frames, proc.crop_size
    clips = torch.zeros(n, k, t, s, s, 3, dtype=torch.uint8)
    maps = torch.zeros(n, k, 3, 6)
    for i, it in enumerate(items):
        if it["video"] is not None:
            clips[i], maps[i] = it["video"]
    return clips, maps


def _stack_waves(items: list[dict], proc: SampleProcessor) -> tuple[torch.Tensor, ...]:
    """``[B, K, S]`` waveform windows, ``[B, K]`` lengths and ``[B, K, M, 3]`` SpecAugment
    bands of items processed with ``on_device`` (zeros for items without audio)."""
    n, k = len(items), proc.k
    wave, lens = torch.zeros(n, k, proc.window), torch.zeros(n, k, dtype=torch.long)
    bands = torch.zeros(n, k, proc.num_bands, 3, dtype=torch.long)
    for i, it in enumerate(items):
        if it["audio"] is not None:
            wave[i], lens[i], bands[i] = it["audio"]
    return wave, lens, bands


def features_on_device(batch: AVBatch, cfg: FbankConfig) -> AVBatch:
    """Finishes a batch built with ``on_device`` where it is (a no-op for other batches): the
    fbank of ``audio_wave`` with the SpecAugment bands of ``audio_bands`` zeroed, and the float
    clips of ``video_u8`` through their ``video_affine`` maps; the values the workers would
    have computed, zeros where ``audio_mask`` / ``video_mask`` is False. Drops the raw fields."""
    wave, lens, bands = batch.audio_wave, batch.audio_wave_len, batch.audio_bands
    if wave is not None and lens is not None:
        lead = wave.shape[:-1]  # [B] or [B, K]
        rows = zip(wave.reshape(-1, wave.shape[-1]).split(CHUNK), lens.reshape(-1).split(CHUNK))
        spec = torch.cat([compute_fbank_batch(w, n, cfg) for w, n in rows])  # [B*K, Ta, F]
        if bands is not None and bands.shape[-2] > 0:
            spec = _zero_bands(spec, bands.reshape(-1, *bands.shape[-2:]))
        spec = spec.reshape(*lead, 1, *spec.shape[1:])  # [B, (K,) 1, Ta, F]
        batch.audio = _masked(spec, batch.audio_mask)
        batch.audio_wave = batch.audio_wave_len = batch.audio_bands = None
    clips, maps = batch.video_u8, batch.video_affine
    if clips is not None and maps is not None:
        lead = clips.shape[:-4]  # [B] or [B, K]
        rows = zip(
            clips.reshape(-1, *clips.shape[-4:]).split(CHUNK), maps.reshape(-1, 3, 6).split(CHUNK)
        )
        video = torch.cat([apply_affine(c, m) for c, m in rows])  # [B*K, C, T, H, W]
        batch.video = _masked(video.reshape(*lead, *video.shape[1:]), batch.video_mask)
        batch.video_u8 = batch.video_affine = None
    return batch


def _masked(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``x`` ``[B, ...]`` with the samples where ``mask`` ``[B]`` is False set to 0."""
    if mask is None:
        return x
    return torch.where(mask.to(x.device).reshape(-1, *[1] * (x.dim() - 1)), x, 0.0)


def _zero_bands(spec: torch.Tensor, bands: torch.Tensor) -> torch.Tensor:
    """Zeroes ``bands`` ``[N, M, 3]`` (dim 0 = time / 1 = frequency, start, width) of ``spec``
    ``[N, Ta, F]``, as :class:`~avssl.data.transforms.SpecAugment` does."""
    bands = bands.to(spec.device)
    dim, start, width = bands.unbind(-1)  # [N, M] each
    out = []
    for d, size in ((0, spec.shape[1]), (1, spec.shape[2])):
        pos = torch.arange(size, device=spec.device)[None, None]  # [1, 1, size]
        hit = (pos >= start[..., None]) & (pos < (start + width)[..., None])  # [N, M, size]
        out.append((hit & (dim == d)[..., None]).any(dim=1))  # [N, size]
    return torch.where(out[0][:, :, None] | out[1][:, None, :], 0.0, spec)


RESUMED = 0x5E5  # in a resumed epoch's seed, between the usual parts and the step


def seed_for(*parts: int) -> int:
    """A 63-bit seed mixing ``parts`` (seed, epoch, rank, worker, ...)."""
    return int(np.random.SeedSequence([abs(int(p)) for p in parts]).generate_state(1)[0])


class _Stream(IterableDataset):
    """Shared parts of the train and eval streams (per-worker batching, skip counting)."""

    def __init__(
        self,
        table: SplitTable,
        proc: SampleProcessor,
        batch_size: int,
        rank: int,
        world: int,
        num_classes: int,
        multilabel: bool,
        mismatch_prob: float,
        seed: int,
    ):
        self.table, self.proc, self.batch_size = table, proc, batch_size
        self.rank, self.world, self.seed, self.epoch = rank, world, seed, 0
        self.num_classes, self.multilabel, self.mismatch_prob = (
            num_classes,
            multilabel,
            mismatch_prob,
        )
        self._prev: dict | None = None
        self.resumed_at: int | None = None  # see TrainStream

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _process(self, reader, shard: str, key: str, gen, proc=None) -> dict | None:
        try:
            return (proc or self.proc)(reader.read(shard, key), gen)
        except Exception as err:  # noqa: BLE001 (any decoding failure = a corrupt sample)
            log.warning("skipping corrupt sample %s in %s: %s", key, shard, err)
            return None

    def _batch(self, items: list[dict], gen, skipped: list[str]) -> AVBatch:
        flags = None
        if self.proc.audio_mode == "mismatched" and items:
            flags = mismatch(items, self.mismatch_prob, gen, self._prev)
            self._prev = items[-1]
        batch = collate(items, self.proc, self.num_classes, self.multilabel)
        batch.audio_mismatched = torch.tensor(flags) if flags is not None else None
        batch.extra = {"skipped": len(skipped), "skipped_keys": skipped}
        return batch


def split_repeats(item: dict, repeats: int, k: int) -> list[dict]:
    """The ``repeats`` entries of an item processed with ``repeats * k`` clips: entry ``r``
    holds clips ``r k .. (r + 1) k - 1`` (with their audio); key and label are shared."""

    def part(x, r: int):
        if x is None:
            return None
        if isinstance(x, tuple):
            return tuple(part(v, r) for v in x)
        return x[r * k : (r + 1) * k]

    shared = ("key", "label")
    return [{n: v if n in shared else part(v, r) for n, v in item.items()} for r in range(repeats)]


class TrainStream(_Stream):
    """Endless resampled shards cut to exactly ``batches_per_epoch`` batches per rank;
    ``repeats`` > 1: repeated sampling (module docstring). The draws are seeded by (seed,
    epoch, rank, worker), and by the global step too when ``resumed_at`` is set (the epoch
    a run resumed in; ``avssl.data.datamodule.TrainLoader``)."""

    def __init__(self, *args, batches_per_epoch: int, repeats: int = 1, **kwargs):
        super().__init__(*args, **kwargs)
        if repeats < 1:
            raise ValueError(f"repeated_sampling must be >= 1, got {repeats}")
        if repeats > 1 and self.proc.audio_mode == "mismatched":
            raise ValueError(
                "repeated_sampling > 1 does not go with audio_mode 'mismatched' (an entry could "
                "take the audio of its own video as the mismatched one)"
            )
        self.batches_per_epoch, self.repeats = batches_per_epoch, repeats
        self._repeated = copy.copy(self.proc)  # decodes all the clips of the R entries at once
        self._repeated.k = self.proc.k * repeats

    def _entries(self, reader, shard: str, key: str, gen) -> list[dict] | None:
        """The batch entries of one sample (None when it fails to decode)."""
        if self.repeats == 1:
            item = self._process(reader, shard, key, gen)
            return None if item is None else [item]
        item = self._process(reader, shard, key, gen, self._repeated)
        return None if item is None else split_repeats(item, self.repeats, self.proc.k)

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __iter__(self) -> Iterator[AVBatch]:
        worker, num_workers = worker_info()
        count = self.batches_per_epoch // num_workers + (
            worker < self.batches_per_epoch % num_workers
        )
        parts = [self.seed, self.epoch, self.rank, worker]
        if self.resumed_at is not None:  # a resumed epoch: not the interrupted one's draws again
            parts += [RESUMED, self.resumed_at]
        gen = torch.Generator().manual_seed(seed_for(*parts))
        slot, slots = self.rank * num_workers + worker, self.world * num_workers
        keys, reader = ResampledKeys(self.table, slot, slots, gen), ShardReader()
        pending: list[dict] = []  # entries of a repeated sample that did not fit the last batch
        for _ in range(count):
            items, pending = pending[: self.batch_size], pending[self.batch_size :]
            skipped: list[str] = []
            while len(items) < self.batch_size:
                shard, key = next(keys)
                entries = self._entries(reader, shard, key, gen)
                if entries is None:
                    skipped.append(key)
                    if len(skipped) > 10 * self.batch_size + 100:
                        raise RuntimeError(f"too many corrupt samples for one batch (last: {key})")
                else:
                    room = self.batch_size - len(items)
                    items += entries[:room]
                    pending += entries[room:]
            yield self._batch(items, gen, skipped)
        reader.close()


class EvalStream(_Stream):
    """Every sample of the split once across ranks and workers, in (shard, position) order."""

    def _blocks(self, num_workers: int, worker: int) -> list:
        return eval_assignment(
            self.table, self.rank, self.world, worker, num_workers, self.batch_size
        )

    def __len__(self) -> int:
        return len(self._blocks(1, 0))

    def __iter__(self) -> Iterator[AVBatch]:
        worker, num_workers = worker_info()
        reader, skipped = ShardReader(), []
        for j, plan in enumerate(self._blocks(num_workers, worker)):
            index = worker + j * num_workers  # the batch's place in this rank's order
            gen = torch.Generator().manual_seed(seed_for(self.seed, self.rank, index))
            items: list[dict] = []
            for shard, key in plan:
                item = self._process(reader, shard, key, gen)
                if item is None:
                    skipped.append(key)
                else:
                    items.append(item)
            if items:  # skipped keys of an all-corrupt batch ride with the next batch
                yield self._batch(items, gen, skipped)
                skipped = []
        if skipped:
            warnings.warn(
                f"corrupt samples skipped at the end of evaluation: {skipped}", stacklevel=2
            )
        reader.close()


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
) -> SampleProcessor:
    """A SampleProcessor from a preprocessing dict (see ``AVDataModule.preprocessing``)."""
    spec = ClipSpec(prep["num_frames"], prep.get("frame_stride"), prep.get("target_fps"))
    fbank = FbankConfig(**prep["fbank"])
    mean, std = prep.get("video_mean") or IMAGENET_MEAN, prep.get("video_std") or IMAGENET_STD
    video_tf = build_video_transform(preset, prep["crop_size"], mean, std, augment)
    wave_tf, spec_tf = build_audio_transforms(preset, augment)
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
    )
