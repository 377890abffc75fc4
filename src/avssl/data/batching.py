"""Batches of processed samples: audio mismatching, collation into an ``AVBatch``, and the
last steps of ``on_device`` batches on the training device.

With ``on_device`` (:mod:`avssl.data.sampling`) a batch carries the zero-padded waveform
windows after the waveform transforms (``AVBatch.audio_wave``, ``audio_wave_len``) and the
SpecAugment bands drawn for them (``audio_bands``) instead of the fbank, and the uint8 clips
after cropping and flipping (``video_u8``) with their colour jitter + normalisation as one
affine map (``video_affine``) instead of float clips. :func:`features_on_device` finishes the
batch where it is (the training step's GPU; ``AVDataModule`` calls it after the transfer): the
same values as the workers compute, to float rounding, with the same random draws.
"""

from __future__ import annotations

import torch

from avssl.data.batch import MODALITIES_COMPLETE, AVBatch
from avssl.data.fbank import FbankConfig, compute_fbank_batch
from avssl.data.local_view import LocalViews, local_items
from avssl.data.sampling import SampleProcessor
from avssl.data.transforms import apply_affine

CHUNK = 64  # clips per batched call on the device (~135 MB of spectra at 1024 frames)


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


def collate(
    items: list[dict], proc: SampleProcessor | LocalViews, num_classes: int, multilabel: bool
) -> AVBatch:
    """Stacks processed samples into an AVBatch (K axis dropped when ``num_clips == 1``);
    their local views, when ``proc`` makes them, into its ``local`` batch."""
    k = proc.k
    has_audio, has_video = "audio" in proc.modalities, "video" in proc.modalities
    waves = _stack_waves(items, proc) if proc.on_device and has_audio else None
    clips = _stack_clips(items, proc) if proc.on_device and has_video else None
    video, audio = _stack_features(items, proc, stack_video=has_video and not clips,
                                   stack_audio=has_audio and not waves)  # fmt: skip
    label = _labels(items, num_classes, multilabel)
    clip_start = torch.tensor([it["clip_start"] for it in items], dtype=torch.float)  # [B, K]
    audio_start = torch.tensor([it["audio_start"] for it in items], dtype=torch.float)
    squeeze = (lambda x: x[:, 0]) if k == 1 else (lambda x: x)
    local = (
        None
        if proc.local is None
        else collate(local_items(items), proc.local, num_classes, multilabel)
    )
    video_mask = torch.tensor([it["video"] is not None for it in items])
    audio_mask = torch.tensor([it["audio"] is not None for it in items])
    complete = bool(video_mask.all()) and bool(audio_mask.all())
    return AVBatch(
        video=squeeze(video),
        audio=squeeze(audio),
        key=[it["key"] for it in items],
        label=label,
        video_mask=video_mask,
        audio_mask=audio_mask,
        clip_start=squeeze(clip_start),
        audio_start=squeeze(audio_start),
        audio_wave=squeeze(waves[0]) if waves else None,
        audio_wave_len=squeeze(waves[1]) if waves else None,
        audio_bands=squeeze(waves[2]) if waves else None,
        video_u8=squeeze(clips[0]) if clips else None,
        video_affine=squeeze(clips[1]) if clips else None,
        local=local,
        extra={MODALITIES_COMPLETE: complete},
    )


def _stack_features(
    items: list[dict], proc, stack_video: bool, stack_audio: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Video ``[B, K, C, T, H, W]`` and fbank ``[B, K, 1, Ta, F]`` of the processed items (zeros
    for items without one). A modality not stacked here (not loaded, or computed after the
    transfer by features_on_device) is a placeholder with a 0-sized axis."""
    k, t, f = proc.k, proc.spec.num_frames, proc.fbank.num_mel_bins
    side = proc.crop_size if stack_video else 0
    video = torch.zeros(len(items), k, 3, t, side, side)  # [B, K, C, T, H, W]
    frames = proc.fbank.target_frames if stack_audio else 0
    audio = torch.zeros(len(items), k, 1, frames, f)  # [B, K, 1, Ta, F]
    for i, it in enumerate(items):
        if it["video"] is not None and stack_video:
            video[i] = it["video"]
        if it["audio"] is not None and stack_audio:
            audio[i] = it["audio"]
    return video, audio


def _labels(items: list[dict], num_classes: int, multilabel: bool) -> torch.Tensor:
    """``[B]`` class ids, or ``[B, C]`` multi-hot targets (negative ids: no label)."""
    if not multilabel:
        return torch.tensor([int(it["label"]) for it in items], dtype=torch.long)
    label = torch.zeros(len(items), num_classes)
    for i, it in enumerate(items):
        ids = it["label"] if isinstance(it["label"], list) else [it["label"]]
        label[i, [c for c in ids if c >= 0]] = 1.0
    return label


def _stack_clips(items: list[dict], proc) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 ``[B, K, T, H, W, 3]`` clips and ``[B, K, 3, 6]`` colour affine maps of items
    processed with ``on_device`` (zeros for items without video)."""
    n, k, t, s = len(items), proc.k, proc.spec.num_frames, proc.crop_size
    clips = torch.zeros(n, k, t, s, s, 3, dtype=torch.uint8)
    maps = torch.zeros(n, k, 3, 6)
    for i, it in enumerate(items):
        if it["video"] is not None:
            clips[i], maps[i] = it["video"]
    return clips, maps


def _stack_waves(items: list[dict], proc) -> tuple[torch.Tensor, ...]:
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
